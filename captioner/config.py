"""Typed captioner settings: model, prompt, frames, generation, checks, server. The caption job
(`pipeline.caption.config`) loads them from `configs/captioner.yaml` with how the job runs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from trainer.typedconfig import ConfigError


@dataclass
class ModelConfig:
    backend: Literal["transformers", "openai", "signals"] = "transformers"
    id: str = ""                       # HF id or local folder (the served model name for openai)
    revision: str | None = None
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    dtype: str = "auto"                # auto | bfloat16 | float16 | float32
    attn_implementation: str = "auto"  # auto | sdpa | flash_attention_2 | eager
    batch_size: int = 8
    allow_download: bool = False       # fetch a hub model missing from the local cache (off: offline, as documented)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("model.batch_size must be >= 1")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"model.device: {self.device!r} is not auto, cpu, mps, cuda or cuda:N")
        if self.attn_implementation not in ("auto", "sdpa", "flash_attention_2", "eager"):
            raise ConfigError(f"model.attn_implementation: {self.attn_implementation!r} is not auto, sdpa, "
                              "flash_attention_2 or eager")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"model.dtype: {self.dtype!r} is not auto, bfloat16, float16 or float32")


@dataclass
class PromptConfig:
    id: str = "dense"                  # configs/prompts/<id>.txt or a path to a .txt file
    hints: bool = True


@dataclass
class FramesConfig:
    mode: Literal["auto", "video", "images"] = "auto"
    num_frames: int = 8
    fps: float = 0.0
    max_frames: int = 32
    max_pixels: int = 448 * 448

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.max_frames < 1 or self.fps < 0 or self.max_pixels < 28 * 28:
            raise ConfigError("frames: num_frames, max_frames >= 1, fps >= 0, max_pixels >= 784")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 320
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ConfigError("generation: max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1, "
                              "repetition_penalty > 0")


@dataclass
class ChecksConfig:
    min_words: int = 5
    max_retries: int = 1
    retry_temperature: float = 0.7
    retry_repetition_penalty: float = 1.2

    def __post_init__(self) -> None:
        if self.min_words < 0 or self.max_retries < 0 or self.retry_temperature < 0 or self.retry_repetition_penalty <= 0:
            raise ConfigError("checks: min_words >= 0, max_retries >= 0, retry_temperature >= 0, "
                              "retry_repetition_penalty > 0")


@dataclass
class OpenAIConfig:
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 300.0
    concurrency: int = 16
    jpeg_quality: int = 90
    max_retries: int = 3               # a request answered 429 / 5xx or cut off is sent again this many times
    retry_wait_s: float = 2.0          # first wait (doubling, jittered); a Retry-After header overrides it

    def __post_init__(self) -> None:
        if (self.timeout_s <= 0 or self.concurrency < 1 or not 1 <= self.jpeg_quality <= 100 or self.max_retries < 0
                or self.retry_wait_s < 0):
            raise ConfigError("openai: timeout_s > 0, concurrency >= 1, 1 <= jpeg_quality <= 100, max_retries >= 0, "
                              "retry_wait_s >= 0")


@dataclass
class CaptionConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)

    @property
    def batch_size(self) -> int:
        """Clips per backend call: the model batch in process, the requests in flight for a server."""
        return self.openai.concurrency if self.model.backend == "openai" else self.model.batch_size

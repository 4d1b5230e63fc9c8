"""In-process caption generation with transformers: any image-text-to-text model whose processor
has a chat template (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, SmolVLM2, ...), loaded by HF id or
local folder, in batches.

Frames go in as a video where the processor has a video processor (transformers needs torchvision
for those), else as an ordered list of images. bfloat16 with flash attention (when installed) or
SDPA on GPU; float32 on CPU. Batches are left-padded so every row's answer starts at the same
position.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from captioner.config import GenerationConfig, ModelConfig
from captioner.processors import load_processor


class MissingModelError(RuntimeError):
    """The model's weights are neither a local folder nor reachable on the hub (or its cache)."""


@dataclass
class ClipRequest:
    """What one caption needs: the clip's sampled frames (T, H, W, 3) uint8 RGB and the prompt."""
    clip_id: str
    frames: np.ndarray
    prompt: str
    fps: float = 1.0                              # rate of the sampled frames
    indices: list[int] = field(default_factory=list)
    clip_frames: int = 0                          # frames in the whole clip


@dataclass
class Generation:
    text: str
    n_input_tokens: int | None
    n_output_tokens: int | None
    hit_token_limit: bool
    latency_s: float


def is_local_path(model_id: str) -> bool:
    """A folder rather than a hub id (`org/name`)."""
    return model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or Path(model_id).expanduser().exists()


def fetch_hint(model_id: str) -> str:
    folder = "a folder with config.json, the processor files and *.safetensors"
    if is_local_path(model_id):
        return (f"check the path: a model folder is {folder} (make one where there is network with "
                f"`hf download ORG/NAME --local-dir FOLDER`)")
    home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (f"fetch it where there is network with `hf download {model_id}` (Hugging Face cache, HF_HOME={home}) "
            f"and copy the cache here, or pass a local copy: --model /path/to/folder ({folder})")


def resolve_model(model_id: str, revision: str | None = None, allow_download: bool = False) -> str:
    """A local folder or a hub id whose config is in the local Hugging Face cache (or, with
    `allow_download`, on the hub); MissingModelError otherwise."""
    if not model_id:
        raise MissingModelError("no model configured: pass --model HF_ID_OR_FOLDER "
                                "(or --backend signals for captions built from measured signals only)")
    path = Path(model_id).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MissingModelError(f"model folder {path} has no config.json; {fetch_hint(model_id)}")
        return str(path)
    if is_local_path(model_id):
        raise MissingModelError(f"model folder {model_id!r} does not exist; {fetch_hint(model_id)}")
    # lazy: transformers takes ~1 s to import; only this model path needs it
    from transformers.utils import cached_file

    try:
        cached_file(model_id, "config.json", revision=revision, local_files_only=not allow_download)
    except Exception as e:  # not cached, offline, unknown repo, gated, bad revision: all mean "not here"
        where = "on the hub" if allow_download else "in the local Hugging Face cache (recap downloads nothing " \
                "unless asked: --allow-download or model.allow_download=true)"
        raise MissingModelError(f"model {model_id!r} (revision {revision or 'default'}) was not found {where}: "
                                f"{type(e).__name__}: {str(e).splitlines()[0]}; {fetch_hint(model_id)}") from e
    return model_id


def pick_device(device: str) -> str:
    # lazy: torch takes ~1.5 s to import; only this model path needs it
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    # lazy: torch takes ~1.5 s to import; only this model path needs it
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def pick_attention(attn: str, device: str) -> str:
    if attn != "auto":
        return attn
    if device.startswith("cuda"):
        try:
            # lazy: optional, probed only on GPU
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def check_captioning_model(model_id: str, path: str, revision: str | None, offline: dict[str, bool]) -> None:
    """MissingModelError unless `path` holds a model transformers loads as image-text-to-text (a VLM):
    said from its config.json before the processor or any weights are loaded."""
    # lazy: transformers takes ~1 s to import; only this model path needs it
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as VLMS

    try:
        config = AutoConfig.from_pretrained(path, revision=revision, **offline)
    except (OSError, ValueError) as e:     # no or unknown `model_type`, unreadable config.json
        raise MissingModelError(f"model {model_id!r} has no config transformers can read: "
                                f"{str(e).splitlines()[0]}; {fetch_hint(model_id)}") from e
    if config.model_type not in VLMS:
        raise MissingModelError(f"model {model_id!r} is a {config.model_type!r} model ({type(config).__name__}), not a "
                                "vision-language model that captions (image-text-to-text, e.g. Qwen2.5-VL, Qwen3-VL, "
                                "LLaVA-OneVision); pass one with --model, or --backend openai for a served one")


class TransformersBackend:
    """A VLM loaded once; `generate` captions a batch of clips."""

    name = "transformers"

    def __init__(self, cfg: ModelConfig, frames_mode: str = "auto"):
        # lazy: transformers takes ~1 s to import; only this model path needs it
        from transformers import AutoModelForImageTextToText

        self.model_id = cfg.id
        path = resolve_model(cfg.id, cfg.revision, cfg.allow_download)
        self.device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, self.device)
        offline = {"local_files_only": not cfg.allow_download}
        check_captioning_model(cfg.id, path, cfg.revision, offline)
        try:
            self.processor = load_processor(path, revision=cfg.revision, **offline)
            self.model = AutoModelForImageTextToText.from_pretrained(
                path, revision=cfg.revision, dtype=dtype,
                attn_implementation=pick_attention(cfg.attn_implementation, self.device), **offline)
        except OSError as e:  # config found but weights or processor files missing
            raise MissingModelError(f"model {cfg.id!r} could not be loaded: {str(e).splitlines()[0]}; "
                                    f"{fetch_hint(cfg.id)}") from e
        self.model.to(self.device).eval()
        self.processor.tokenizer.padding_side = "left"
        has_video = getattr(self.processor, "video_processor", None) is not None
        if frames_mode == "video" and not has_video:
            raise ValueError(f"frames.mode=video but {cfg.id!r} has no video processor here "
                             "(transformers needs torchvision for video processors); use frames.mode=images")
        self.as_video = frames_mode == "video" or (frames_mode == "auto" and has_video)
        self.revision = getattr(self.model.config, "_commit_hash", None) or cfg.revision
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.processor.tokenizer.eos_token_id is not None:
            ids.add(self.processor.tokenizer.eos_token_id)
        return ids

    def messages(self, req: ClipRequest) -> list[dict[str, Any]]:
        visual = [{"type": "video"}] if self.as_video else [{"type": "image"}] * len(req.frames)
        return [{"role": "user", "content": [*visual, {"type": "text", "text": req.prompt}]}]

    def encode(self, requests: list[ClipRequest]):
        """Processor inputs for a batch (text with the chat template, frames, padding)."""
        texts = [self.processor.apply_chat_template(self.messages(r), add_generation_prompt=True, tokenize=False)
                 for r in requests]
        if self.as_video:
            metadata = [{"total_num_frames": r.clip_frames or len(r.frames), "fps": r.fps,
                         "frames_indices": r.indices or list(range(len(r.frames)))} for r in requests]
            return self.processor(text=texts, videos=[r.frames for r in requests], padding=True, return_tensors="pt",
                                  do_sample_frames=False, video_metadata=metadata)
        images = [[Image.fromarray(f) for f in r.frames] for r in requests]
        return self.processor(text=texts, images=images, padding=True, return_tensors="pt")

    def generate(self, requests: list[ClipRequest], gen: GenerationConfig) -> list[Generation]:
        # lazy: torch takes ~1.5 s to import; only this model path needs it
        import torch

        if not requests:
            return []
        t0 = time.perf_counter()
        inputs = self.encode(requests).to(self.device, dtype=self.model.dtype)
        kwargs: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens, "repetition_penalty": gen.repetition_penalty}
        if gen.temperature > 0:
            torch.manual_seed(gen.seed)
            kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**inputs, **kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        new = out[:, prompt_len:].tolist()
        n_in = inputs["attention_mask"].sum(dim=1).tolist()
        latency = (time.perf_counter() - t0) / len(requests)  # the batch's wall time, shared
        results = []
        for row, n_input in zip(new, n_in):
            stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            tokens = row[:stop] if stop is not None else row
            text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Generation(text, int(n_input), len(tokens),
                                      hit_token_limit=stop is None and len(row) >= gen.max_new_tokens,
                                      latency_s=latency))
        return results

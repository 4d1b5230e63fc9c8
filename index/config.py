"""Typed config of the index: embedders, caption source, Milvus, dedup. The index job
(`pipeline.embed.load_index_config`) loads it from `configs/index.yaml` with how the job runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.typedconfig import ConfigError

BUNDLED_MINILM = "bundled"


@dataclass
class EmbedderConfig:
    kind: Literal["text", "clip"]
    model: str
    enabled: bool = True
    frames: int = 4            # clip: frames sampled evenly inside each clip, mean-pooled
    batch_size: int = 32
    device: str = "auto"       # auto = cuda when available

    def __post_init__(self) -> None:
        if self.frames < 1 or self.batch_size < 1:
            raise ConfigError("embedders: frames and batch_size must be >= 1")


@dataclass
class CaptionSource:
    # caption version to embed (`recap caption` versions); "" = the library's default version,
    # or, when none is marked yet, each clip's most recent `ok` caption
    version: str = ""


@dataclass
class MilvusConfig:
    uri: str = ""
    token: str = ""
    collection: str = ""
    lite_index: str = "FLAT"
    server_index: str = "HNSW"
    index_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 10.0
    batch_rows: int = 2000


@dataclass
class SemanticDedupConfig:
    embedder: str = "visual"
    threshold: float = 0.95
    neighbours: int = 10

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0 or self.neighbours < 1:
            raise ConfigError("dedup: threshold in [-1, 1], neighbours >= 1")


@dataclass
class IndexConfig:
    embedders: dict[str, EmbedderConfig] = field(default_factory=dict)
    captions: CaptionSource = field(default_factory=CaptionSource)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    rrf_k: int = 60
    dedup: SemanticDedupConfig = field(default_factory=SemanticDedupConfig)

    def __post_init__(self) -> None:
        text = [n for n, e in self.embedders.items() if e.enabled and e.kind == "text"]
        clip = [n for n, e in self.embedders.items() if e.enabled and e.kind == "clip"]
        if len(text) > 1 or len(clip) > 1:
            raise ConfigError("embedders: at most one enabled `text` and one enabled `clip` embedder")

    def enabled(self) -> dict[str, EmbedderConfig]:
        return {n: e for n, e in self.embedders.items() if e.enabled}

    def embedder_of_kind(self, kind: str) -> str | None:
        return next((n for n, e in self.enabled().items() if e.kind == kind), None)

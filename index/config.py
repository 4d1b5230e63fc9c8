"""Typed config of the index: embedders, caption source, Milvus, dedup. The index job
(`pipeline.embed.load_index_config`) loads it from `configs/index.yaml` with how the job runs.

Every value is checked when the config is built (`IndexConfig.__post_init__`), and a bad one fails
naming its key (`milvus.batch_rows: must be an integer >= 1, got 0`), before anything runs."""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.typedconfig import ConfigError

BUNDLED_MINILM = "bundled"
# index type -> the index_params / search_params keys Milvus takes for it
INDEX_PARAM_KEYS = {"HNSW": ("M", "efConstruction"), "IVF_FLAT": ("nlist",), "IVF_SQ8": ("nlist",),
                    "IVF_PQ": ("nlist", "m", "nbits"), "FLAT": (), "AUTOINDEX": ()}
SEARCH_PARAM_KEYS = {"HNSW": ("ef",), "IVF_FLAT": ("nprobe",), "IVF_SQ8": ("nprobe",), "IVF_PQ": ("nprobe",)}
# what Milvus Lite builds (IVF_PQ is not implemented there); the faiss ones need faiss-cpu
LITE_INDEXES = ("FLAT", "AUTOINDEX", "IVF_FLAT", "IVF_SQ8", "HNSW")
NEEDS_FAISS = ("IVF_FLAT", "IVF_SQ8", "HNSW")
SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


@dataclass
class EmbedderConfig:
    kind: Literal["text", "clip"]
    model: str
    enabled: bool = True
    frames: int = 4            # clip: frames sampled evenly inside each clip, mean-pooled
    batch_size: int = 32
    device: str = "auto"       # auto = cuda when available


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
    index_params: dict[str, Any] = field(default_factory=lambda: {"M": 16, "efConstruction": 200, "nlist": 1024})
    search_params: dict[str, Any] = field(default_factory=lambda: {"ef": 128, "nprobe": 32})
    timeout_s: float = 10.0
    batch_rows: int = 2000
    lock_wait_s: float = 10.0          # Lite: how long to wait for another process holding the store
    exact_max_clips: int = 200_000     # Lite: search by an exact scan of the Parquet vectors up to this size

    def is_lite(self) -> bool:
        return not self.uri.startswith(SERVER_SCHEMES)


@dataclass
class SemanticDedupConfig:
    embedder: str = "visual"
    threshold: float = 0.95
    neighbours: int = 10


def default_embedders() -> dict[str, EmbedderConfig]:
    """The embedders of configs/index.yaml: captions with the bundled MiniLM; CLIP over frames,
    off until given weights (none ship offline)."""
    return {"caption": EmbedderConfig(kind="text", model="bundled", batch_size=64),
            "visual": EmbedderConfig(kind="clip", model="openai/clip-vit-base-patch32", enabled=False, frames=4,
                                     batch_size=16)}


@dataclass
class IndexConfig:
    embedders: dict[str, EmbedderConfig] = field(default_factory=default_embedders)
    captions: CaptionSource = field(default_factory=CaptionSource)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    rrf_k: int = 60
    dedup: SemanticDedupConfig = field(default_factory=SemanticDedupConfig)

    def __post_init__(self) -> None:
        for name, e in self.embedders.items():
            _check_embedder(f"embedders.{name}", e)
        check_milvus(self.milvus)
        _at_least("rrf_k", self.rrf_k, 1)
        _at_least("dedup.neighbours", self.dedup.neighbours, 1)
        if not -1.0 <= self.dedup.threshold <= 1.0:
            raise ConfigError(f"dedup.threshold: must be a cosine similarity in [-1, 1], got {self.dedup.threshold!r}")
        text = [n for n, e in self.embedders.items() if e.enabled and e.kind == "text"]
        clip = [n for n, e in self.embedders.items() if e.enabled and e.kind == "clip"]
        if len(text) > 1 or len(clip) > 1:
            raise ConfigError("embedders: at most one enabled `text` and one enabled `clip` embedder")

    def enabled(self) -> dict[str, EmbedderConfig]:
        return {n: e for n, e in self.embedders.items() if e.enabled}

    def embedder_of_kind(self, kind: str) -> str | None:
        return next((n for n, e in self.enabled().items() if e.kind == kind), None)


def _at_least(key: str, value: Any, low: float, integer: bool = True) -> None:
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value))
    if not ok or isinstance(value, bool) or value < low:
        what = "an integer" if integer else "a number"
        raise ConfigError(f"{key}: must be {what} >= {low:g}, got {value!r}")


def _check_embedder(key: str, e: EmbedderConfig) -> None:
    _at_least(f"{key}.frames", e.frames, 1)
    _at_least(f"{key}.batch_size", e.batch_size, 1)
    if not e.model.strip():
        raise ConfigError(f"{key}.model: empty (give `{BUNDLED_MINILM}`, an HF id or a local folder)")
    if not DEVICE.fullmatch(e.device):
        raise ConfigError(f"{key}.device: {e.device!r} is not one of auto, cpu, cuda, cuda:N, mps")


def check_milvus(m: MilvusConfig) -> None:
    """ConfigError naming the key when a Milvus setting is unusable (also for a `--milvus-uri` given
    after the config was built)."""
    if m.uri and not m.is_lite() and not re.fullmatch(r"[a-z]+://[^\s/]+.*|unix:.+", m.uri):
        raise ConfigError(f"milvus.uri: {m.uri!r} is not a server address (http://host:19530)")
    if m.uri and m.is_lite() and not m.uri.endswith(".db"):
        raise ConfigError(f"milvus.uri: {m.uri!r} is neither a server (http://host:19530) nor a Milvus Lite "
                          "path ending in .db")
    if m.collection and not COLLECTION.fullmatch(m.collection):
        raise ConfigError(f"milvus.collection: {m.collection!r} is not a collection name (letters, digits, _)")
    if m.lite_index not in LITE_INDEXES:
        raise ConfigError(f"milvus.lite_index: {m.lite_index!r} is not one Milvus Lite builds "
                          f"({', '.join(LITE_INDEXES)})")
    if m.is_lite() and m.lite_index in NEEDS_FAISS and importlib.util.find_spec("faiss") is None:
        raise ConfigError(f"milvus.lite_index: {m.lite_index} needs faiss-cpu (pip install faiss-cpu), or use FLAT")
    if m.server_index not in INDEX_PARAM_KEYS:
        raise ConfigError(f"milvus.server_index: {m.server_index!r} is not one of {', '.join(INDEX_PARAM_KEYS)}")
    for section, params, keys in (("index_params", m.index_params, INDEX_PARAM_KEYS),
                                  ("search_params", m.search_params, SEARCH_PARAM_KEYS)):
        known = sorted({k for ks in keys.values() for k in ks})
        for k, v in params.items():
            if k not in known:
                raise ConfigError(f"milvus.{section}.{k}: unknown (known: {', '.join(known)})")
            _at_least(f"milvus.{section}.{k}", v, 1)
    _at_least("milvus.timeout_s", m.timeout_s, 0.001, integer=False)
    _at_least("milvus.batch_rows", m.batch_rows, 1)
    _at_least("milvus.lock_wait_s", m.lock_wait_s, 0, integer=False)
    _at_least("milvus.exact_max_clips", m.exact_max_clips, 0)

"""Filters as views: `passed`, `reject_reasons` and `duplicate_of` per clip, computed from the
stored clip columns only (no decoding), written to `LIB/views/filters.parquet`.

Changing a threshold means re-running this (seconds for 100k clips), never re-ingesting. The view
is keyed by `clip_id`; join it to `LIB/clips/` to select a training set. Its Parquet metadata
holds the exact filter config that produced it (`recap.filters`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.typedconfig import ConfigError, from_dict, load_with_defaults, to_dict

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
VIEW_PATH = Path("views") / "filters.parquet"
DUPLICATE = "duplicate"

VIEW_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("passed", pa.bool_(), nullable=False),
    pa.field("reject_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("duplicate_of", pa.string()),
])


@dataclass
class FilterRule:
    column: str
    min: float | None = None
    max: float | None = None
    reject: list[str] = field(default_factory=list)   # categorical values that fail
    enabled: bool = True
    null: Literal["pass", "reject"] = "pass"          # what a missing measurement does


@dataclass
class DedupConfig:
    enabled: bool = True
    hamming: int = 6
    min_matching_frames: int = 2
    within_video: bool = True
    bands: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.hamming < 32 or self.min_matching_frames < 1 or not 1 <= self.bands <= 16:
            raise ConfigError("dedup: 0 <= hamming < 32, min_matching_frames >= 1, 1 <= bands <= 16")


@dataclass
class FilterConfig:
    filters: dict[str, FilterRule] = field(default_factory=dict)
    dedup: DedupConfig = field(default_factory=DedupConfig)


def load_filter_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FilterConfig:
    """Defaults from `configs/filters.yaml`, then the user's file, then `--set` overrides."""
    return load_with_defaults(FilterConfig, CONFIG_DIR / "filters.yaml", path, overrides)


# ---- reading the library ---------------------------------------------------------------------
def clip_parts(lib_root: str | Path) -> list[Path]:
    """Committed part files of `LIB/clips/` (a part without its commit marker is not data yet)."""
    from pipeline.library import Library

    return Library(lib_root).parts("clips")


def read_clips(lib_root: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The clips table (only `columns` that exist, when given), straight from Parquet."""
    parts = clip_parts(lib_root)
    if not parts:
        raise FileNotFoundError(f"{lib_root}: no committed clips (run `recap ingest` first)")
    tables = []
    for p in parts:
        names = pq.read_schema(p).names
        tables.append(pq.read_table(p, columns=[c for c in columns if c in names] if columns else None))
    return pa.concat_tables(tables, promote_options="permissive")


# ---- evaluating ------------------------------------------------------------------------------
def rule_failures(clips: pa.Table, name: str, rule: FilterRule) -> dict[str, np.ndarray]:
    """reason -> boolean mask of the clips that fail this rule for that reason."""
    if not rule.enabled or rule.column not in clips.column_names:
        return {}
    col = clips.column(rule.column)
    is_null = col.is_null().to_numpy(zero_copy_only=False)
    out: dict[str, np.ndarray] = {}
    if rule.min is not None or rule.max is not None:
        values = pc.fill_null(pc.cast(col, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            if rule.min is not None:
                out[f"{name}.min"] = values < rule.min
            if rule.max is not None:
                out[f"{name}.max"] = values > rule.max
    if rule.reject:
        out[f"{name}.reject"] = pc.fill_null(pc.is_in(col, pa.array(rule.reject)), False).to_numpy(zero_copy_only=False)
    if rule.null == "reject":
        out[f"{name}.null"] = is_null
    return out


def reasons_column(masks: dict[str, np.ndarray], n: int) -> pa.ListArray:
    """Per-row list of the reasons whose mask is set, built without a Python loop over rows."""
    if not masks:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    names = np.array(list(masks), dtype=object)
    stacked = np.stack([masks[k] for k in masks], axis=1)  # (n, n_reasons)
    rows, which = np.nonzero(stacked)                       # row-major: grouped by row, in rule order
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(names[which].tolist(), pa.string()))


def keep_best_rank(clips: pa.Table, passed: np.ndarray) -> np.ndarray:
    """Rank of each clip for dedup's keep-best rule (0 = best). The order, first key first:
    passes the threshold filters; higher aesthetic score (unmeasured last); more picture pixels
    (bar crop if known, else frame size); higher sharpness; longer; then clip_id for determinism.
    """
    n = clips.num_rows

    def num(name: str, default: float = np.nan) -> np.ndarray:
        if name not in clips.column_names:
            return np.full(n, default)
        return pc.fill_null(pc.cast(clips.column(name), pa.float64()), np.nan).to_numpy(zero_copy_only=False)

    area = num("crop_w") * num("crop_h")
    area = np.where(np.isnan(area), num("width") * num("height"), area)
    keys_best_first = [~passed, -num("aesthetic_score"), -area, -num("sharpness"), -num("duration_s")]
    keys = [np.nan_to_num(k, nan=np.inf) for k in keys_best_first]
    ids = np.asarray(clips.column("clip_id").to_pylist(), dtype=object)
    order = np.lexsort([np.argsort(np.argsort(ids, kind="stable"))] + keys[::-1])  # last key sorts first
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


def evaluate(clips: pa.Table, cfg: FilterConfig) -> pa.Table:
    """The filter view for `clips` (needs clip_id and whatever columns the rules and dedup read)."""
    from pipeline.dedup import near_duplicates

    n = clips.num_rows
    masks: dict[str, np.ndarray] = {}
    for name, rule in cfg.filters.items():
        masks.update(rule_failures(clips, name, rule))
    failed = np.zeros(n, bool)
    for m in masks.values():
        failed |= m
    duplicate_of = pa.nulls(n, pa.string())
    if cfg.dedup.enabled and "phash" in clips.column_names:
        rank = keep_best_rank(clips, ~failed)
        dup_index = near_duplicates(clips.column("phash"), clips.column("video_id"), rank, cfg.dedup)
        is_dup = dup_index >= 0
        ids = clips.column("clip_id")
        duplicate_of = pc.if_else(pa.array(is_dup), pc.take(ids, pa.array(np.where(is_dup, dup_index, 0))),
                                  pa.scalar(None, pa.string()))
        masks[DUPLICATE] = is_dup
        failed |= is_dup
    return pa.Table.from_arrays(
        [clips.column("clip_id").combine_chunks(), pa.array(~failed), reasons_column(masks, n), duplicate_of],
        schema=VIEW_SCHEMA)


def needed_columns(cfg: FilterConfig) -> list[str]:
    cols = ["clip_id", "video_id"] + [r.column for r in cfg.filters.values() if r.enabled]
    if cfg.dedup.enabled:
        cols += ["phash", "aesthetic_score", "crop_w", "crop_h", "width", "height", "sharpness", "duration_s"]
    return list(dict.fromkeys(cols))


def write_view(lib_root: str | Path, view: pa.Table, cfg: FilterConfig) -> Path:
    """Atomically replace `LIB/views/filters.parquet` (a reader sees the old or the new view)."""
    from pipeline.library import atomic_write_table

    path = Path(lib_root) / VIEW_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {b"recap.filters": json.dumps(to_dict(cfg)).encode(),
            b"recap.created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()}
    atomic_write_table(path, view.replace_schema_metadata(meta))
    return path


def from_saved_config(saved: dict[str, Any]) -> FilterConfig:
    """The FilterConfig stored in a view's metadata."""
    return from_dict(FilterConfig, saved)


def read_view(lib_root: str | Path) -> tuple[pa.Table, dict[str, Any]] | None:
    """The current filter view and the config that made it, or None when there is none yet."""
    path = Path(lib_root) / VIEW_PATH
    if not path.exists():
        return None
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    return table, json.loads(meta.get(b"recap.filters", b"{}"))


def run_filters(lib_root: str | Path, cfg: FilterConfig) -> tuple[pa.Table, list[str]]:
    """Evaluate and write the view; returns it and the rules skipped for lack of a column."""
    clips = read_clips(lib_root, needed_columns(cfg))
    missing = [f"{name} ({rule.column})" for name, rule in cfg.filters.items()
               if rule.enabled and rule.column not in clips.column_names]
    view = evaluate(clips, cfg)
    write_view(lib_root, view, cfg)
    return view, missing


def reason_counts(view: pa.Table) -> dict[str, int]:
    flat = pc.list_flatten(view.column("reject_reasons"))
    counts = pc.value_counts(flat).to_pylist()
    return dict(sorted(((c["values"], c["counts"]) for c in counts), key=lambda kv: -kv[1]))

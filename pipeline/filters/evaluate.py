"""Filters as views: `passed`, `reject_reasons` and `duplicate_of` per clip, computed from the
stored clip columns only (no decoding), written to `LIB/views/filters.parquet` (see
`pipeline.library.views`).

Changing a threshold means re-running this (seconds for 100k clips), never re-ingesting. The view
is keyed by `clip_id`; join it to `LIB/clips/` to select a training set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.config import FilterConfig, FilterRule
from pipeline.filters.near_duplicates import near_duplicates
from pipeline.library import Library
from pipeline.library.schema import VIEW_SCHEMA, table_schema
from pipeline.library.views import keep_best_rank, write_view
from trainer.typedconfig import to_dict

DUPLICATE = "duplicate"


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


def evaluate(clips: pa.Table, cfg: FilterConfig) -> pa.Table:
    """The filter view for `clips` (needs clip_id and whatever columns the rules and dedup read)."""
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


def run_filters(lib_root: str | Path, cfg: FilterConfig) -> tuple[pa.Table, list[str]]:
    """Evaluate and write the view; returns it and the rules skipped for lack of a column."""
    declared = set(table_schema("clips").names)
    lib = Library(lib_root)
    # `recap remove` holds this lock: a view judged from the clips before a removal and written
    # after it would name removed clips (and its source batch would not show it stale). Filter
    # runs may overlap (shared): each writes the whole view.
    with lib.lock("filter", shared=True):
        newest = lib.newest_batch()        # before reading: a batch committed meanwhile leaves the view stale
        clips = lib.clips([c for c in needed_columns(cfg) if c in declared])
        missing = [f"{name} ({rule.column})" for name, rule in cfg.filters.items()
                   if rule.enabled and rule.column not in declared]
        view = evaluate(clips, cfg)
        write_view(lib_root, view, to_dict(cfg), newest)
    return view, missing


def reason_counts(view: pa.Table) -> dict[str, int]:
    flat = pc.list_flatten(view.column("reject_reasons"))
    counts = pc.value_counts(flat).to_pylist()
    return dict(sorted(((c["values"], c["counts"]) for c in counts), key=lambda kv: -kv[1]))

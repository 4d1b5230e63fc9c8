"""The filter view: `LIB/views/filters.parquet`, one row per clip with `passed`, `reject_reasons`
and `duplicate_of` (VIEW_COLUMNS). A view, not a delete: nothing in `clips/` changes, and the file
is replaced whole (a reader sees the old view or the new one). Its Parquet metadata holds the
exact filter config that produced it (`recap.filters`).

`keep_best_rank` is the rule that says which member of a group of near-duplicates the view keeps
(and every other member's `duplicate_of` names): the filters' pHash groups and the index's
semantic groups both follow it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.library.files import atomic_write_table, reading, remove_stale_temp_files, writable_folder
from pipeline.library.schema import VIEW_SCHEMA

VIEW_PATH = Path("views") / "filters.parquet"


def write_view(lib_root: str | Path, view: pa.Table, config: dict[str, Any], source_batch: str | None = None) -> Path:
    """Atomically replace the view; `config` is the filter config that made it (as a dict) and
    `source_batch` the newest committed batch of clips it judged (what says when it is stale)."""
    path = Path(lib_root) / VIEW_PATH
    writable_folder(path.parent, check=False)
    remove_stale_temp_files(path.parent)
    meta = {b"recap.filters": json.dumps(config).encode(),
            b"recap.created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode(),
            b"recap.source_batch": (source_batch or "").encode()}
    atomic_write_table(path, view.cast(VIEW_SCHEMA).replace_schema_metadata(meta))
    return path


def view_source_batch(lib_root: str | Path) -> str | None:
    """The newest committed batch the current view judged ('' for a view older than that record,
    None when there is no view)."""
    path = Path(lib_root) / VIEW_PATH
    if not path.exists():
        return None
    with reading(path):
        return (pq.read_schema(path).metadata or {}).get(b"recap.source_batch", b"").decode()


def read_view(lib_root: str | Path) -> tuple[pa.Table, dict[str, Any]] | None:
    """The current filter view and the config (a dict) that made it, or None when there is none yet."""
    path = Path(lib_root) / VIEW_PATH
    if not path.exists():
        return None
    with reading(path):
        table = pq.read_table(path)
    meta = table.schema.metadata or {}
    return table, json.loads(meta.get(b"recap.filters", b"{}"))


def keep_best_rank(clips: pa.Table, passed: np.ndarray) -> np.ndarray:
    """Rank of each clip for the keep-best rule (0 = best). The order, first key first: passes the
    threshold filters; higher aesthetic score (unmeasured last); more picture pixels (bar crop if
    known, else frame size); higher sharpness; longer; then clip_id for determinism."""
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

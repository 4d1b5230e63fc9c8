"""How every library file is written: whole or not at all (temporary name, fsync, rename), named by
time-sortable batch ids so that parts list in write order."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TMP_SUFFIX = ".tmp"
STALE_TMP_S = 600     # far longer than writing one file takes: an older temp file is a crash's leftover

_last_batch_us = 0


def new_batch_id() -> str:
    """Time-sortable id (microseconds, strictly increasing within a process), so part files list
    in write order: readers that let later parts override earlier ones depend on it."""
    global _last_batch_us
    us = max(time.time_ns() // 1000, _last_batch_us + 1)
    _last_batch_us = us
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(us // 1_000_000))
    return f"{stamp}.{us % 1_000_000:06d}-{uuid.uuid4().hex[:8]}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path` to write before renaming into place (recovery removes leftovers)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}{TMP_SUFFIX}")


def remove_stale_temp_files(folder: Path) -> int:
    """Remove what a crash mid-write left in `folder` (temp files older than STALE_TMP_S; a young
    one may be another process's write in progress); returns how many."""
    removed = 0
    for stray in folder.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - stray.stat().st_mtime > STALE_TMP_S:
                stray.unlink()
                removed += 1
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = temp_path(path)
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_parts(paths: list[Path], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Parts of one table as one Arrow table with `schema` (a column an older part lacks is null);
    an empty table with the schema when there are no parts."""
    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    have = {p: set(pq.read_schema(p).names) for p in paths}
    lacking = {f.name for f in wanted if any(f.name not in names for names in have.values())}
    out = pa.schema([f.with_nullable(True) if f.name in lacking else f for f in wanted])
    tables = []
    for p in paths:
        t = pq.read_table(p, columns=[c for c in out.names if c in have[p]])
        for field in out:
            if field.name not in have[p]:
                t = t.append_column(field.name, pa.nulls(t.num_rows, field.type))
        tables.append(t.select(out.names).cast(out))
    return pa.concat_tables(tables) if tables else out.empty_table()

"""The clip library on disk: Parquet tables written in atomic, committed batches.

Writes and resume:
- Every table is a folder of `part-<batch_id>.parquet` files. A batch (a few videos' rows) is
  written table by table, each file under a temporary name and renamed into place, so a reader
  never sees a half-written file.
- The batch becomes real when its commit marker `_commits/<batch_id>.json` is renamed into place,
  after all its parts. On opening, parts whose batch has no marker (a crash between the two) and
  stray temporary files are removed, so a rerun never duplicates rows.
- The `sources/` table records every source uri handled (ingested, duplicate or failed), which is
  what a rerun skips.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import SCHEMA_VERSION, TABLES, table_schema

COMMITS = "_commits"
TMP_SUFFIX = ".tmp"


class LibraryError(RuntimeError):
    """The folder is not a recap library, or was written by an incompatible version."""


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}{TMP_SUFFIX}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rows_to_table(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts) to an Arrow table with the declared schema; missing nullable columns are null."""
    schema = table_schema(table)
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _take_writer_lock(root: Path) -> int:
    """An exclusive flock on LIB/.writer.lock: one writing process per library at a time. The
    kernel drops it when the process dies, so a kill -9 never leaves a stale lock."""
    import fcntl

    fd = os.open(root / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise LibraryError(f"another recap process (pid {holder}) is writing to {root}; "
                           "wait for it to finish, or stop it and rerun") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class Library:
    """A clip library folder. Opened to read by default (many readers, never changes anything);
    `write=True` creates it if needed, takes the single-writer lock and removes what a crashed
    writer left behind."""

    def __init__(self, root: str | Path, write: bool = False):
        self.root = Path(root)
        meta_path = self.root / "library.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("schema_version") != SCHEMA_VERSION:
                raise LibraryError(f"{self.root}: schema version {meta.get('schema_version')}, "
                                   f"this recap reads version {SCHEMA_VERSION}")
        elif write:
            if self.root.exists() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
                raise LibraryError(f"{self.root} exists, is not empty and is not a recap library")
            self.root.mkdir(parents=True, exist_ok=True)
            meta = {"schema_version": SCHEMA_VERSION, "created_at": utcnow().isoformat(), "runs": []}
            atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
        else:
            raise LibraryError(f"{self.root} is not a recap library (no library.json); run `recap ingest` first")
        self.meta = meta
        self._lock_fd: int | None = None
        if write:
            self._lock_fd = _take_writer_lock(self.root)
            for name in [*TABLES, COMMITS, "media"]:
                (self.root / name).mkdir(exist_ok=True)
            self.recover()

    def close(self) -> None:
        """Release the writer lock (also released when the process ends, however it ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- crash recovery -------------------------------------------------------------------
    def committed_batches(self) -> set[str]:
        return {p.stem for p in (self.root / COMMITS).glob("*.json")}

    def recover(self) -> int:
        """Remove uncommitted parts and temporary files left by a crash; return how many."""
        committed = self.committed_batches()
        removed = 0
        for folder in [*TABLES, COMMITS, "media"]:
            base = self.root / folder
            tmp_files = base.rglob(f"*{TMP_SUFFIX}") if folder == "media" else base.glob(f"*{TMP_SUFFIX}")
            for p in tmp_files:
                p.unlink(missing_ok=True)
                removed += 1
            if folder in (COMMITS, "media"):
                continue
            for p in base.glob("part-*.parquet"):
                if p.stem.removeprefix("part-") not in committed:
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed

    # ---- writing --------------------------------------------------------------------------
    def commit(self, rows: dict[str, list[dict[str, Any]]]) -> str | None:
        """Write one batch of rows (table name -> rows) atomically; return its batch id."""
        if self._lock_fd is None:
            raise LibraryError(f"{self.root} was opened read-only")
        if not any(rows.values()):
            return None
        batch_id = new_batch_id()
        for table, table_rows in rows.items():
            if not table_rows:
                continue
            for row in table_rows:
                row["batch_id"] = batch_id
            arrow = rows_to_table(table, table_rows)
            atomic_write_table(self.root / table / f"part-{batch_id}.parquet", arrow)
        counts = {t: len(r) for t, r in rows.items()}
        atomic_write_bytes(self.root / COMMITS / f"{batch_id}.json", json.dumps(counts).encode())
        return batch_id

    def record_run(self, run: dict[str, Any]) -> None:
        """Append a run record (command, config, counts) to library.json."""
        self.meta.setdefault("runs", []).append(run)
        atomic_write_bytes(self.root / "library.json", json.dumps(self.meta, indent=2, default=str).encode())

    # ---- reading --------------------------------------------------------------------------
    def parts(self, table: str) -> list[Path]:
        """Committed part files of a table: parts of a batch still being written are not there yet."""
        committed = self.committed_batches()
        return sorted(p for p in (self.root / table).glob("part-*.parquet") if p.stem.removeprefix("part-") in committed)

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """All committed rows of a table (empty table with the schema when there are none)."""
        schema = table_schema(table)
        paths = self.parts(table)
        if not paths:
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        tables = [pq.read_table(p, columns=columns, schema=schema) for p in paths]
        return pa.concat_tables(tables, promote_options="permissive")

    def handled_sources(self) -> dict[str, str]:
        """uri -> latest outcome for every source an earlier run handled. `failed` (an unexpected
        failure, not a bad input) is retried by the next run, so a source can have several rows."""
        t = self.read("sources", ["uri", "outcome", "at"]).sort_by("at")
        return dict(zip(t.column("uri").to_pylist(), t.column("outcome").to_pylist()))

    def video_ids(self) -> set[str]:
        t = self.read("videos", ["video_id"])
        return set(t.column("video_id").to_pylist())

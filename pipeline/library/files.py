"""How every library file is written: whole or not at all (temporary name, fsync, rename), named by
time-sortable batch ids so that parts list in write order; and read: every reader of a library file
goes through `reading`, so a truncated or overwritten Parquet file is named, with what remakes it,
instead of Arrow's error (which names no file) or a traceback."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.library.layout import RECORD, TMP_SUFFIX, storable

STALE_TMP_S = 600     # far longer than writing one file takes: an older temp file is a crash's leftover

_last_batch_us = 0

# what remakes a file of each folder once the damaged one is moved aside; ingest's own tables
# (videos, shots, clips, errors, sources) can only be restored, or their sources ingested again
REMAKE = {"embeddings": "`recap index` re-embeds its clips", "captions": "`recap caption` captions its clips again",
          "views": "`recap filter` writes the filter view again", "index": "`recap index` syncs again",
          "selections": "save the selection again"}
INGESTED = ("videos", "shots", "clips", "errors", "sources")


class LibraryError(RuntimeError):
    """The folder is not a recap library, was written by an incompatible version, or one of its
    files is damaged."""


class DamagedFile(LibraryError):
    """A library file that cannot be read (cut off, overwritten): which one, and what to do."""

    def __init__(self, path: Path, error: Exception):
        self.path = path
        first = (str(error).splitlines() or [type(error).__name__])[0]
        folder = _library_folder(path)
        what = (f"move it out of the library, then {REMAKE[folder]}" if folder in REMAKE else
                "restore it from a backup (ingest's rows cannot be remade without ingesting those sources again)")
        super().__init__(f"damaged Parquet file: {path} ({first}); {what}")


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Reads of the library file `path` inside raise DamagedFile when Arrow cannot read it."""
    try:
        yield
    except pa.ArrowException as e:   # ArrowInvalid (no footer, bad magic), ArrowIOError, ...
        raise DamagedFile(Path(path), e) from None


def _library_folder(path: Path) -> str | None:
    """The library folder (clips, captions, ...) `path` lies in: the nearest ancestor with one of
    those names whose parent holds a library record."""
    for folder in path.parents:
        if (folder.name in REMAKE or folder.name in INGESTED) and (folder.parent / RECORD).is_file():
            return folder.name
    return None


def new_batch_id() -> str:
    """Time-sortable id (microseconds, strictly increasing within a process), so part files list
    in write order: readers that let later parts override earlier ones depend on it."""
    global _last_batch_us
    us = max(time.time_ns() // 1000, _last_batch_us + 1)
    _last_batch_us = us
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(us // 1_000_000))
    return f"{stamp}.{us % 1_000_000:06d}-{uuid.uuid4().hex[:8]}"


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


class CannotWrite(LibraryError):
    """A file could not be written (no space, a read-only mount, no permission): which, and why.
    Nothing is left half-written: the file is whole under its name or not there."""

    def __init__(self, path: Path, error: OSError):
        self.path = path
        # Arrow's own errors say "Failed to open local file '...'. Detail: [errno 28] No space left on device"
        why = str(error.strerror or error).split("Detail: ")[-1]
        why = why.split("] ", 1)[1] if why.startswith("[errno") and "] " in why else why
        super().__init__(f"cannot write {path}: {why}")


@contextlib.contextmanager
def _writing(path: Path, tmp: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CannotWrite(path, e) from None


T = TypeVar("T")

# A table (or store) with more parts than this is compacted: each reader opens every part, and
# a job commits every few videos or a few hundred clips (2,000 parts: ~4 s to read the clips).
COMPACT_PARTS = 64
COMPACT_LEVELS = 16      # merged parts that pile up before everything is merged into one (tiers)
COMPACT_ROWS = 65536     # rows per row group of a compacted part


def require_utf8_path(folder: Path, what: str) -> None:
    """LibraryError unless `folder`'s absolute path is valid UTF-8: Arrow's file systems open
    Parquet files by UTF-8 path, so a folder named in another encoding would fail at the first
    table written into it, after the work."""
    where = str(folder.absolute())
    if storable(where) != where:
        raise LibraryError(f"{storable(where)}: {what} must be valid UTF-8 (Parquet files are opened by "
                           "UTF-8 path): rename or move the folder")


def writable_folder(folder: Path, check: bool = True) -> Path:
    """`folder`, made if needed; with `check`, a file is written into it and removed, so a folder
    that cannot hold one (read-only mount, another user's, immutable) is refused (CannotWrite)
    before the work whose result would have gone there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if check:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-", suffix=TMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise CannotWrite(folder, e) from None
    return folder


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temp_path(path)
    with _writing(path, tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = temp_path(path)
    with _writing(path, tmp):
        pq.write_table(table, tmp, compression="zstd")
        _sync_into_place(tmp, path)


def _sync_into_place(tmp: Path, path: Path) -> None:
    """A written temp file made durable, then renamed to its name (readers see it whole or not)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_parts(paths: list[Path], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Parts of one table as one Arrow table with `schema` (a column an older part lacks is null);
    an empty table with the schema when there are no parts."""
    out, tables = _part_tables(paths, schema, columns)
    tables = list(tables)
    return pa.concat_tables(tables) if tables else out.empty_table()


def write_parts_as_one(paths: list[Path], schema: pa.Schema, path: Path,
                       metadata: dict[bytes, bytes] | None = None,
                       keep: Callable[[pa.Table], pa.Array] | None = None, extra: pa.Table | None = None) -> None:
    """The rows of `paths` (read as `read_parts` reads them, in order), only those where `keep`
    (a part's table -> boolean mask) is true, then the rows of `extra`, written to `path`
    atomically, `COMPACT_ROWS` rows per row group: memory holds one group, not the table."""
    out, tables = _part_tables(paths, schema)
    out = out.with_metadata(metadata) if metadata else out
    if keep is not None:
        tables = (t.filter(keep(t)) for t in tables)
    if extra is not None:
        tables = itertools.chain(tables, [extra.select(out.names).cast(out)])
    tmp = temp_path(path)
    with _writing(path, tmp):
        with pq.ParquetWriter(tmp, out, compression="zstd") as writer:
            pending: list[pa.Table] = []
            rows = 0
            for t in tables:
                pending.append(t)
                rows += t.num_rows
                if rows >= COMPACT_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=rows)
                    pending, rows = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=max(rows, 1))
        _sync_into_place(tmp, path)


def drop_rows_outside(parts: list[Path], column: str, allowed: pa.Array) -> int:
    """Rewrite each of `parts` without its rows whose `column` is not in `allowed` (in place and
    atomically, with its own schema and metadata; a reader sees the old part or the new one);
    parts holding no such row are not touched. Returns the number of rows dropped."""
    dropped = 0
    for path in parts:
        with reading(path):
            values = pq.read_table(path, columns=[column]).column(column)
            schema = pq.read_schema(path)
        outside = len(values) - int(pc.sum(pc.is_in(values, value_set=allowed).cast(pa.int64())).as_py() or 0)
        if outside:
            write_parts_as_one([path], schema, path, schema.metadata,
                               keep=lambda t: pc.is_in(t.column(column), value_set=allowed))
            dropped += outside
    return dropped


def read_again_if_merged(read: Callable[[], T]) -> T:
    """`read()` (which lists a store's parts, then reads them), done again when a part it listed
    was removed meanwhile by a compaction in another process: the new listing has its rows."""
    for attempt in range(3):
        try:
            return read()
        except (FileNotFoundError, DamagedFile) as e:
            gone = isinstance(e, FileNotFoundError) or not e.path.exists()
            if attempt == 2 or not gone:
                raise
    raise AssertionError("unreachable")


MERGED_KEY = b"recap.merged"    # schema metadata of a part that merge_parts wrote


def merge_parts(folder: Path, parts: list[Path], schema: pa.Schema,
                metadata: dict[bytes, bytes] | None = None) -> Path | None:
    """For a store without commit markers whose readers let a later row win (captions,
    embeddings), in tiers like the clip tables' compaction: when more than `COMPACT_PARTS` of
    `parts` (its parts, oldest first, nothing written meanwhile) came after the newest part a
    merge wrote, their rows go into one new part, which lists after them and before anything
    written later, and then they are removed; once `COMPACT_LEVELS` merged parts have piled up,
    all parts are merged into one. So a store that grows by small parts rewrites each row a few
    times, not at every merge. A crash between writing and removing leaves rows twice, which
    reads the same. Returns the new part, or None when there were too few to merge."""
    if len(parts) <= COMPACT_PARTS:
        return None
    merged = [i for i, p in enumerate(parts) if _was_merged(p)]
    since = parts[merged[-1] + 1:] if merged else parts
    if len(merged) >= COMPACT_LEVELS:
        since = parts
    elif len(since) <= COMPACT_PARTS:
        return None
    path = folder / f"part-{new_batch_id()}.parquet"
    write_parts_as_one(since, schema, path, {**(metadata or {}), MERGED_KEY: b"1"})
    for p in since:
        p.unlink(missing_ok=True)
    return path


def _was_merged(path: Path) -> bool:
    with reading(path):
        return MERGED_KEY in (pq.read_schema(path).metadata or {})


def _part_tables(paths: list[Path], schema: pa.Schema, columns: list[str] | None = None
                 ) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """The schema every part is read as (`schema`'s `columns`, nullable where some part lacks the
    column) and the parts' tables in that schema, read one at a time."""
    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    have = {}
    for p in paths:
        with reading(p):
            have[p] = set(pq.read_schema(p).names)
    lacking = {f.name for f in wanted if any(f.name not in names for names in have.values())}
    out = pa.schema([f.with_nullable(True) if f.name in lacking else f for f in wanted])

    def tables() -> Iterator[pa.Table]:
        for p in paths:
            with reading(p):
                t = pq.read_table(p, columns=[c for c in out.names if c in have[p]])
            for field in out:
                if field.name not in have[p]:
                    t = t.append_column(field.name, pa.nulls(t.num_rows, field.type))
            yield t.select(out.names).cast(out)
    return out, tables()

"""Named clip selections: `LIB/selections/<name>.parquet` (SELECTION_COLUMNS), saved by the web UI
or by hand and exported with `recap export LIB --selection NAME`. A selection file is replaced
whole, atomically; a save reads and writes under a lock, so two saves at once (the server answers
requests in a thread pool) never lose each other's clips."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.library.files import (
    CannotWrite,
    atomic_write_table,
    drop_rows_outside,
    reading,
    remove_stale_temp_files,
    writable_folder,
)
from pipeline.library.layout import utcnow
from pipeline.library.schema import SELECTION_SCHEMA

SELECTIONS = "selections"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def selection_path(lib_root: str | Path, name: str) -> Path:
    """The file of selection `name`; a name is letters, digits, `_`, `-` and `.` (no paths)."""
    if not NAME.fullmatch(name) or name.endswith(".parquet"):
        raise ValueError(f"selection name {name!r}: use letters, digits, '_', '-' and '.' (at most 100)")
    return Path(lib_root) / SELECTIONS / f"{name}.parquet"


@contextlib.contextmanager
def _saving(folder: Path) -> Iterator[None]:
    """One save at a time in `folder` (a blocking flock on `.lock`, also between threads: each
    save opens its own descriptor): an append reads the selection and writes it back, and a save
    in between would be lost."""
    writable_folder(folder, check=False)
    try:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CannotWrite(folder / ".lock", e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_selection(lib_root: str | Path, name: str, clip_ids: list[str], append: bool = False) -> tuple[int, int]:
    """Save `clip_ids` (duplicates dropped, order kept) as selection `name`, replacing it, or with
    `append` added after the clips it already holds. Returns (clips before, clips after)."""
    path = selection_path(lib_root, name)
    with _saving(path.parent):
        remove_stale_temp_files(path.parent)
        before = read_selection(lib_root, name) if append and path.exists() else []
        ids = list(dict.fromkeys(before + clip_ids))
        now = utcnow()
        atomic_write_table(path, pa.table({"clip_id": ids, "added_at": [now] * len(ids)}, schema=SELECTION_SCHEMA))
    return len(dict.fromkeys(before)), len(ids)


def drop_clips_outside(lib_root: str | Path, clip_ids: pa.Array) -> int:
    """Take every clip not in `clip_ids` out of every selection (a `recap remove`), under the
    same lock as a save, so a save at the same time is neither lost nor undone. Returns how many."""
    folder = Path(lib_root) / SELECTIONS
    if not folder.is_dir():
        return 0
    with _saving(folder):
        return drop_rows_outside(sorted(folder.glob("*.parquet")), "clip_id", clip_ids)


def read_selection(lib_root: str | Path, name: str) -> list[str]:
    """Clip ids of selection `name` (FileNotFoundError when there is none)."""
    path = selection_path(lib_root, name)
    if not path.exists():
        known = ", ".join(list_selections(lib_root)) or "none"
        raise FileNotFoundError(f"no selection {name!r} in {lib_root} (known: {known})")
    with reading(path):
        return pq.read_table(path, columns=["clip_id"]).column("clip_id").to_pylist()


def list_selections(lib_root: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(lib_root) / SELECTIONS).glob("*.parquet"))

"""The names a library gives things on disk, and its timestamps: what a process that writes clip
files but no tables (the ingest child, `pipeline/ingest/sandbox.py`) needs, without the table code
(Parquet, pyarrow's compute functions, pandas: ~0.07 s, ~0.1 CPU-s and ~18 MB per process)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

RECORD = "library.json"          # a library's record: schema version, runs
COMMITS = "_commits"
MEDIA = "media"
TMP_SUFFIX = ".tmp"              # a file being written; recovery removes what a crash left
MILVUS_LITE = "milvus.db"        # the Milvus Lite store of a library that names no server
UI_DIR = ".ui"                   # what `recap serve` makes and keeps (thumbnails/<clip_id>.jpg, the report)
REPORT_DIR = "report"            # `recap report`'s default folder (index.html, thumbs/<clip_id>.jpg)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def storable(text: str) -> str:
    """`text` as the library's tables store it (UTF-8). A file name that is not valid UTF-8 comes
    from the OS with its stray bytes as lone surrogates (Python's `surrogateescape`), which no
    UTF-8 writer takes: those bytes are kept as `\\xNN` escapes, so `bad\\xffname.mp4` is what the
    tables show for that file, the same on every run."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def is_library(folder: str | Path) -> bool:
    """Whether `folder` is a recap library (its record and its commits; a folder that merely holds
    a library.json is not one). False, not an error, where the folder cannot be read."""
    return os.path.isfile(os.path.join(folder, RECORD)) and os.path.isdir(os.path.join(folder, COMMITS))


def media_dir(root: str | Path, video_id: str) -> Path:
    """Where the clip files of one video go."""
    return Path(root) / MEDIA / video_id[:2] / video_id

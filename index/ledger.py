"""What the last `recap index` left in the store, kept beside the library, so that the next one
need not read the whole collection back to find what changed (at 100k clips that read is ~15 s,
most of a no-op run; pymilvus turns every row into a Python dict).

`LIB/index/synced-<collection>.parquet` holds the clip_id and row_hash of every row the store held
when a sync finished, and that sync's token in its metadata. The collection holds the same token as
a property (`recap.sync_token`), set once the sync's rows are flushed; before the next sync changes
anything the file is removed and the token replaced by "writing". So the file is believed only while
the store still holds what that sync left: a sync cut off midway leaves no file, and a store rebuilt,
replaced or restored, or another library's sync into the same collection, changes the token (as a
row count that differs does); the rows are then read back from the store. A server that cannot hold
collection properties never has a matching token: its rows are always read back. `recap index --check` and `--repair` always read them back, and a
check that finds the store other than the record says discards the record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.library.files import atomic_write_table, writable_folder

TOKEN_PROPERTY = "recap.sync_token"
WRITING = "writing"          # the token while a sync is changing the collection
_TOKEN_KEY = b"recap.sync_token"


def ledger_path(lib_root: str | Path, collection: str) -> Path:
    return Path(lib_root) / "index" / f"synced-{collection}.parquet"


def read_ledger(path: Path, token: str | None) -> tuple[pa.ChunkedArray, pa.ChunkedArray] | None:
    """(clip ids, row hashes) the file holds when it was written by the sync whose `token` the
    store carries now; None when there is no such file."""
    if not token or token == WRITING or not path.is_file():
        return None
    try:
        if (pq.read_schema(path).metadata or {}).get(_TOKEN_KEY) != token.encode():
            return None
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None                           # unreadable: the store is read back instead
    return table.column("clip_id"), table.column("row_hash")


def write_ledger(path: Path, ids: pa.Array | pa.ChunkedArray, hashes: np.ndarray, token: str) -> None:
    """Record the rows a finished sync left in the store (hashes: the S24 row hashes)."""
    writable_folder(path.parent, check=False)
    table = pa.table({"clip_id": ids, "row_hash": pa.array(hashes.astype(str), pa.string())})
    atomic_write_table(path, table.replace_schema_metadata({_TOKEN_KEY: token.encode()}))


def same_rows(a: tuple[pa.ChunkedArray, pa.ChunkedArray], b: tuple[pa.ChunkedArray, pa.ChunkedArray]) -> bool:
    """Whether two (clip ids, row hashes) name the same rows with the same hashes, in any order."""
    return dict(zip(a[0].to_pylist(), a[1].to_pylist())) == dict(zip(b[0].to_pylist(), b[1].to_pylist()))

"""Clip embeddings in the library: `LIB/embeddings/<embedder>/part-<batch>.parquet`, one folder per
embedder, written beside `clips/` (never by rewriting the ingest's committed parts).

A part holds clip_id, vector and input_hash (EMBEDDING_COLUMNS) and names its model in its Parquet
metadata (`recap.embedder`). A later part overrides an earlier one for the same clip; `input_hash`
says when a vector is stale (the index decides what it hashes). The Milvus collection is rebuilt
from these tables alone, without loading any model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.library import files
from pipeline.library.files import (
    atomic_write_table,
    merge_parts,
    new_batch_id,
    read_again_if_merged,
    read_parts,
    reading,
    remove_stale_temp_files,
    writable_folder,
)
from pipeline.library.schema import embedding_schema

EMBEDDINGS = "embeddings"


def embeddings_dir(root: str | Path, name: str) -> Path:
    return Path(root) / EMBEDDINGS / name


def _part_meta(path: Path) -> dict:
    with reading(path):
        meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"recap.embedder", b"{}"))


def read_embeddings(root: str | Path, name: str, model_id: str | None = None) -> pa.Table | None:
    """clip_id, vector, input_hash of embedder `name` (latest per clip); parts made by another
    model than `model_id` are ignored (they are superseded when that model re-embeds). None when
    there are none."""
    return read_again_if_merged(lambda: _read_embeddings(root, name, model_id))


def _read_embeddings(root: str | Path, name: str, model_id: str | None) -> pa.Table | None:
    folder = embeddings_dir(root, name)
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    metas = {p: _part_meta(p) for p in parts}
    if model_id is not None:
        parts = [p for p in parts if metas[p].get("model") == model_id]
    if not parts:
        return None
    t = read_parts(parts, embedding_schema(int(metas[parts[-1]]["dim"])))
    ids = t.column("clip_id").to_pylist()
    last = {c: i for i, c in enumerate(ids)}       # later parts override earlier ones
    return t.take(pa.array(sorted(last.values()), pa.int64())) if t.num_rows else None


def iter_embeddings(root: str | Path, name: str, model_id: str, batch_rows: int = 4096,
                    columns: tuple[str, ...] = ("clip_id", "vector", "input_hash"),
                    ) -> tuple[int, Iterator[pa.RecordBatch]] | None:
    """The vector dim, and batches of `columns` (clip_id, vector, input_hash) of embedder `name`'s
    parts made by `model_id`, oldest part first (a later row overrides an earlier one for the same
    clip), read `batch_rows` at a time whatever a part's size (for memory bounded by a batch). None
    when there are none."""
    folder = embeddings_dir(root, name)
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    parts = [(p, m) for p in parts if (m := _part_meta(p)).get("model") == model_id]
    if not parts:
        return None
    dim = int(parts[-1][1]["dim"])
    schema = embedding_schema(dim)
    schema = pa.schema([schema.field(c) for c in columns])

    def batches() -> Iterator[pa.RecordBatch]:
        for path, _ in parts:
            # without pre-buffering, a part is decoded a page at a time, not a whole row group at once
            with reading(path):
                reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
                for b in reader.iter_batches(batch_size=batch_rows, columns=schema.names):
                    yield b.cast(schema)
    return dim, batches()


def write_embeddings(root: str | Path, name: str, model_id: str, clip_ids: list[str], vectors: np.ndarray,
                     hashes: list[str]) -> Path:
    """Write one part atomically (temp name, rename)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    dim = vectors.shape[1]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    meta = _embedder_meta(name, model_id, dim)
    table = pa.table({"clip_id": pa.array(clip_ids, pa.string()), "vector": vec,
                      "input_hash": pa.array(hashes, pa.string())}, schema=embedding_schema(dim))
    folder = writable_folder(embeddings_dir(root, name), check=False)
    remove_stale_temp_files(folder)
    path = folder / f"part-{new_batch_id()}.parquet"
    atomic_write_table(path, table.replace_schema_metadata(meta))
    return path


def _embedder_meta(name: str, model_id: str, dim: int) -> dict[bytes, bytes]:
    """The schema metadata every part of an embedder carries (what `_part_meta` reads back)."""
    return {b"recap.embedder": json.dumps({"name": name, "model": model_id, "dim": dim}).encode()}


def compact_embeddings(root: str | Path, name: str, model_id: str) -> Path | None:
    """Past `COMPACT_PARTS` parts of `model_id`, one part with all their rows (see `merge_parts`)."""
    folder = embeddings_dir(root, name)
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if len(parts) <= files.COMPACT_PARTS:     # too few whatever their models: no part is opened
        return None
    parts = [p for p in parts if _part_meta(p).get("model") == model_id]
    if not parts:
        return None
    dim = int(_part_meta(parts[-1])["dim"])
    return merge_parts(folder, parts, embedding_schema(dim), _embedder_meta(name, model_id, dim))


def drop_other_models(root: str | Path, name: str, model_id: str) -> int:
    """Remove parts written by a previous model once the current one covers the clips."""
    stale = [p for p in embeddings_dir(root, name).glob("part-*.parquet") if _part_meta(p).get("model") != model_id]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def vectors_of(t: pa.Table) -> np.ndarray:
    """The vector column as an (n, dim) float32 array."""
    col = t.column("vector").combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(np.float32)

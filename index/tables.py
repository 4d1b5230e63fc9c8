"""What the index reads from and adds to the library's Parquet.

Read: `clip_table` joins, per clip, the clip columns (signals included), the source uri, the
filter view (`passed`, `duplicate_of`) and the chosen caption version: one flat table of scalars
that the filter language and the Milvus collection both see.

Added: embeddings live in a side table per embedder, `LIB/embeddings/<name>/part-<id>.parquet`
(clip_id, vector, input_hash), written with the library's temp-file + rename, never by rewriting
`clips/` parts (those are the ingest's committed batches). A later part overrides an earlier one
for the same clip; `input_hash` (model id + what was embedded) says when a vector is stale. The
Milvus collection is rebuilt from these tables alone, without loading any model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index.config import CaptionSource

EMBEDDINGS = "embeddings"
# columns of the clip table that are never filters (bookkeeping, free text)
NOT_FILTERS = {"batch_id", "caption", "ocr_text", "file_bytes", "file_start_frame", "file_n_frames"}


def _committed_parts(folder: Path, root: Path) -> list[Path]:
    """Parquet parts of a library table; when the table is written by `Library.commit`, only the
    parts whose batch has a commit marker."""
    parts = sorted(folder.glob("part-*.parquet"))
    commits = root / "_commits"
    committed = {p.stem for p in commits.glob("*.json")} if commits.is_dir() else set()
    if any(p.stem.removeprefix("part-") in committed for p in parts):
        parts = [p for p in parts if p.stem.removeprefix("part-") in committed]
    return parts


def _read_parts(parts: list[Path], columns: list[str] | None = None) -> pa.Table | None:
    tables = []
    for p in parts:
        names = pq.read_schema(p).names
        cols = [c for c in columns if c in names] if columns else None
        tables.append(pq.read_table(p, columns=cols))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def _scalar_columns(t: pa.Table) -> pa.Table:
    keep = [f.name for f in t.schema if not (pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                                            or pa.types.is_fixed_size_list(f.type) or pa.types.is_struct(f.type))]
    return t.select(keep)


def _last_per_clip(t: pa.Table) -> pa.Table:
    """Keep the last row of each clip_id (later parts override earlier ones)."""
    ids = t.column("clip_id").to_numpy(zero_copy_only=False)
    rev = ids[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    keep = np.sort(len(ids) - 1 - first_in_rev)
    return t.take(pa.array(keep))


def read_captions(root: Path, src: CaptionSource) -> pa.Table | None:
    """clip_id, caption, caption_version of the chosen caption version (`ok` captions only), or
    None when the library has no captions."""
    if not (root / "captions").is_dir():
        return None
    from captioner.versions import CaptionStore

    store = CaptionStore(root)
    version = src.version or store.default()
    t = store.read(version or None, ["clip_id", "version", "text", "status", "created_at"])
    t = t.filter(pc.equal(t.column("status"), "ok"))
    if t.num_rows == 0:
        return None
    t = _last_per_clip(t.sort_by([("created_at", "ascending")]))   # one version per clip
    return pa.table({"clip_id": t.column("clip_id"), "caption": t.column("text"),
                     "caption_version": t.column("version")})


def clip_table(root: str | Path, captions: CaptionSource) -> pa.Table:
    """One row per clip: scalar clip columns + source + passed/duplicate_of + caption."""
    root = Path(root)
    clips = _read_parts(_committed_parts(root / "clips", root))
    if clips is None or clips.num_rows == 0:
        raise FileNotFoundError(f"{root}: no committed clips (run `recap ingest` first)")
    clips = _scalar_columns(clips)
    videos = _read_parts(_committed_parts(root / "videos", root), ["video_id", "uri"])
    if videos is not None and "source" not in clips.column_names:
        uri_of = dict(zip(videos.column("video_id").to_pylist(), videos.column("uri").to_pylist()))
        clips = clips.append_column("source", pa.array([uri_of.get(v) for v in clips.column("video_id").to_pylist()],
                                                       pa.string()))
    view = root / "views" / "filters.parquet"
    if view.exists():
        v = pq.read_table(view, columns=["clip_id", "passed", "duplicate_of"])
        clips = clips.drop_columns([c for c in ("passed", "duplicate_of") if c in clips.column_names])
        clips = clips.join(v, "clip_id", join_type="left outer")
    if "caption" not in clips.column_names:
        caps = read_captions(root, captions)
        if caps is not None:
            clips = clips.join(caps, "clip_id", join_type="left outer")
    return clips.sort_by("clip_id")


# ---- embeddings side tables ---------------------------------------------------------------------
def input_hash(model_id: str, payload: str) -> str:
    return hashlib.blake2b(f"{model_id}\n{payload}".encode(), digest_size=12).hexdigest()


def embeddings_dir(root: str | Path, name: str) -> Path:
    return Path(root) / EMBEDDINGS / name


def read_embeddings(root: str | Path, name: str, model_id: str | None = None) -> pa.Table | None:
    """clip_id, vector, input_hash of embedder `name` (latest per clip); parts made by another
    model than `model_id` are ignored (they are superseded when that model re-embeds)."""
    folder = embeddings_dir(root, name)
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if model_id is not None:
        parts = [p for p in parts if _part_model(p) == model_id]
    t = _read_parts(parts)
    return _last_per_clip(t) if t is not None and t.num_rows else None


def _part_model(path: Path) -> str | None:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"recap.embedder", b"{}")).get("model")


def write_embeddings(root: str | Path, name: str, model_id: str, clip_ids: list[str], vectors: np.ndarray,
                     hashes: list[str]) -> Path:
    """Write one part atomically (temp name, rename)."""
    from pipeline.library import atomic_write_table, new_batch_id

    vectors = np.ascontiguousarray(vectors, np.float32)
    dim = vectors.shape[1]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    meta = {b"recap.embedder": json.dumps({"name": name, "model": model_id, "dim": dim}).encode()}
    table = pa.table({"clip_id": pa.array(clip_ids, pa.string()), "vector": vec,
                      "input_hash": pa.array(hashes, pa.string())}).replace_schema_metadata(meta)
    folder = embeddings_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{new_batch_id()}.parquet"
    atomic_write_table(path, table)
    return path


def drop_other_models(root: str | Path, name: str, model_id: str) -> int:
    """Remove parts written by a previous model once the current one covers the clips."""
    folder = embeddings_dir(root, name)
    stale = [p for p in folder.glob("part-*.parquet") if _part_model(p) != model_id]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def vectors_of(t: pa.Table) -> np.ndarray:
    col = t.column("vector").combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(np.float32)

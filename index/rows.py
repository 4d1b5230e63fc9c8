"""The collection's rows, built from the library's Parquet a batch at a time.

    clip table (Arrow) ──────────────────────────────┐
    LIB/embeddings/<name>/ ──► scratch file, in clip ├─► RowBatch (columns: ids, scalars, vectors, row_hash)
       (streamed, latest current vector per clip)    ┘       ──► MilvusStore.write (one request per batch)

Everything stays columnar: Arrow arrays for the scalars, NumPy blocks for the vectors; no row is a
Python dict and no vector a list of floats. Vectors are put in clip order in an unnamed scratch
file (a part may hold any clips in any order), so memory holds one batch of them, plus the clip
table and under a hundred bytes per clip, whatever the library's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.store import PK, VARCHAR_MAX, RowBatch, ScalarSpec
from pipeline.library.embeddings import iter_embeddings
from pipeline.library.files import CannotWrite

READ_ROWS = 4096      # embedding rows decoded at a time while the scratch file is filled


class ClipPositions:
    """clip_id -> row of the clip table, for whole arrays of ids at once (a sorted byte array and
    binary search: 16-ish bytes per clip, no Python object per clip)."""

    def __init__(self, ids: pa.ChunkedArray | pa.Array):
        self.ids = _bytes(ids)
        self.order = np.argsort(self.ids, kind="stable")

    def find(self, ids: pa.Array) -> np.ndarray:
        """Row of each id in the clip table, -1 for ids it does not hold."""
        q = _bytes(ids)
        if not len(self.ids):
            return np.full(len(q), -1, np.int64)
        at = np.searchsorted(self.ids, q, sorter=self.order)
        pos = self.order[np.minimum(at, len(self.ids) - 1)]
        return np.where(self.ids[pos] == q, pos, -1)


def _bytes(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    # fixed-width bytes compare as the strings do (UTF-8 order; ids hold no NUL)
    arr = pc.fill_null(pc.cast(ids, pa.binary()), b"").to_numpy(zero_copy_only=False)
    return np.array(arr, dtype=bytes) if len(arr) else np.zeros(0, "S1")


class ScratchVectors:
    """One embedder's current vectors, row i for clip i of the clip table, in an unnamed temporary
    file (gone when closed, or when the process dies); `present[i]` says whether clip i has one."""

    def __init__(self, n: int, dim: int, folder: Path | None):
        self.n, self.dim = n, dim
        self.row_bytes = dim * 4
        self.present = np.zeros(n, bool)
        try:
            self.file = tempfile.TemporaryFile(dir=folder)
            self.folder = Path(folder or tempfile.gettempdir())
        except OSError:               # a read-only library (`--check` of a mounted one): the system's
            self.file = tempfile.TemporaryFile()
            self.folder = Path(tempfile.gettempdir())
        self.fd = self.file.fileno()

    def put(self, rows: np.ndarray, vectors: np.ndarray, current: np.ndarray) -> None:
        """Rows `rows` get `vectors` where `current`; a row not current loses the vector it had
        (the latest vector of a clip counts, as in `read_embeddings`)."""
        self.present[rows] = current
        rows, vectors = rows[current], np.ascontiguousarray(vectors[current], np.float32)
        if not len(rows):
            return
        # runs of consecutive rows are one write each (a part written in clip order is one run)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        try:
            for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
                data, at = memoryview(vectors[lo:hi].tobytes()), int(rows[lo]) * self.row_bytes
                while data:     # a write the disk only had room for part of is short: the rest raises
                    n = os.pwrite(self.fd, data, at)
                    data, at = data[n:], at + n
        except OSError as e:      # a full disk: the scratch file has no name, so its folder is said
            raise CannotWrite(self.folder, e) from None

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of `rows` (ascending) as a (len(rows), dim) array (zeros where absent)."""
        out = np.zeros((len(rows), self.dim), np.float32)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            raw = os.pread(self.fd, int(hi - lo) * self.row_bytes, int(rows[lo]) * self.row_bytes)
            # rows past the file's last write read short: they stay zeros (and not present)
            out.reshape(-1)[lo * self.dim:lo * self.dim + len(raw) // 4] = np.frombuffer(raw, np.float32)
        return out

    def close(self) -> None:
        self.file.close()


def load_vectors(root: Path, name: str, model_id: str, positions: ClipPositions,
                 want: np.ndarray) -> ScratchVectors | None:
    """Embedder `name`'s vectors (model `model_id`) made from what each clip is now (`want[i]`,
    the input hash clip i's vector must have; b"-" when the clip has nothing to embed), streamed
    from Parquet into a scratch file; None when the embedder has no vectors at all."""
    found = iter_embeddings(root, name, model_id, READ_ROWS)
    if found is None:
        return None
    dim, batches = found
    out = ScratchVectors(len(want), dim, root)
    try:
        for rows, current, b in _matching(batches, positions, want):
            vec = b.column("vector")
            flat = vec.values.to_numpy(zero_copy_only=False) if len(vec) else np.zeros(0, np.float32)
            out.put(rows, flat.reshape(len(vec), dim), current)
    except BaseException:
        out.close()
        raise
    return out


def current_mask(root: Path, name: str, model_id: str, positions: ClipPositions, want: np.ndarray) -> np.ndarray:
    """Whether each clip's latest vector of embedder `name` was made from `want[i]` (see
    `load_vectors`), from the input hashes alone (the vectors are not read)."""
    current = np.zeros(len(want), bool)
    found = iter_embeddings(root, name, model_id, READ_ROWS, columns=("clip_id", "input_hash"))
    for rows, ok, _ in _matching(found[1] if found else iter(()), positions, want):
        current[rows] = ok
    return current


def _matching(batches: Iterator[pa.RecordBatch], positions: ClipPositions,
              want: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, pa.RecordBatch]]:
    """For each batch of embedding rows (clip_id, input_hash, ...): the clip-table rows of the
    clips it holds, whether each vector is current, and the batch less the clips the table lacks."""
    for b in batches:
        rows = positions.find(b.column("clip_id"))
        known = rows >= 0
        if not known.all():
            b = b.filter(pa.array(known))
            rows = rows[known]
        yield rows, _bytes(b.column("input_hash")) == want[rows], b


class RowSource:
    """The rows the collection should hold, from the clip table and each embedder's scratch vectors."""

    def __init__(self, clips: pa.Table, scalars: list[ScalarSpec], vectors: dict[str, ScratchVectors]):
        self.clips = clips
        self.scalars = scalars
        self.vectors = vectors
        names = [PK, *(s.name for s in scalars), *vectors]
        # the row hash covers the field names too: the same values under other fields are another row
        self._seed = hashlib.blake2b(json.dumps(names).encode(), digest_size=12)

    def __len__(self) -> int:
        return self.clips.num_rows

    def batches(self, batch_rows: int, keep: np.ndarray | None = None,
                hashes_only: bool = False) -> Iterator[RowBatch]:
        """Batches of up to `batch_rows` rows, in clip order; with `keep` (a bool per clip) only those
        rows. `hashes_only` leaves out what only writing needs (the row hashes are all there)."""
        if keep is None:
            n = len(self)
            for lo in range(0, n, batch_rows):
                yield self._batch(np.arange(lo, min(n, lo + batch_rows)), hashes_only)
            return
        rows = np.flatnonzero(keep)
        for lo in range(0, len(rows), batch_rows):
            yield self._batch(rows[lo:lo + batch_rows], hashes_only)

    def _batch(self, rows: np.ndarray, hashes_only: bool) -> RowBatch:
        lo, span = int(rows[0]), int(rows[-1] - rows[0]) + 1
        part = self.clips.slice(lo, span) if span == len(rows) else self.clips.take(pa.array(rows))
        ids = part.column(PK).combine_chunks()
        scalars = {s.name: _fit(s, part.column(s.name).combine_chunks()) for s in self.scalars}
        vectors = {name: (v.take(rows), v.present[rows]) for name, v in self.vectors.items()}
        hashes = self._hashes(ids, scalars, vectors)
        return RowBatch(ids, {} if hashes_only else scalars, {} if hashes_only else vectors, hashes)

    def _hashes(self, ids: pa.Array, scalars: dict[str, pa.Array],
                vectors: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
        """row_hash of each row: a digest of its scalars (one JSON array per row, C-encoded) and
        vector bytes, which is how `check` finds rows Milvus holds differently from Parquet."""
        cols = [ids.to_pylist(), *(a.to_pylist() for a in scalars.values())]
        blocks = [(v, p) for v, p in vectors.values()]
        out = []
        dumps, seed = json.JSONEncoder(default=str).encode, self._seed
        for i, values in enumerate(zip(*cols)):
            h = seed.copy()
            h.update(dumps(values).encode())
            for v, p in blocks:
                h.update(v[i].tobytes() if p[i] else b"-")
            out.append(h.hexdigest())
        return out


def _fit(spec: ScalarSpec, values: pa.Array) -> pa.Array:
    """String values cut to the bytes their Milvus field holds (at a character boundary)."""
    if spec.kind != "string":
        return values
    limit = VARCHAR_MAX.get(spec.name, 1024)
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    too_long = pc.fill_null(pc.greater(pc.binary_length(values), limit), False)
    if not pc.any(too_long).as_py():
        return values
    cut = [v.encode()[:limit].decode(errors="ignore") if v is not None and len(v.encode()) > limit else v
           for v in values.to_pylist()]
    return pa.array(cut, pa.string())

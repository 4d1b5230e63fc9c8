"""Exact search over a library's Parquet vectors in this process: Milvus Lite's fast path.

Milvus Lite runs in the searching process and scans every vector anyway (FLAT), after opening its
own copy of them; for a library that fits in memory one matrix product over `LIB/embeddings/` is
the same search without the copy: the same scores (COSINE of unit vectors is their dot product),
the same `--where` (rendered for Arrow instead of Milvus; a test checks both select the same
clips), and hybrid fusion by Milvus' reciprocal-rank formula. The store is never opened, so a
search neither waits for a running `recap index` nor trusts a damaged store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

ROW = "_row"    # the clip table's row number, carried through Arrow filters (never a `--where` field)


@dataclass
class Vectors:
    """One embedder's current vectors: `rows[i]` is the clip-table row of `matrix[i]` (unit rows)."""
    rows: np.ndarray
    matrix: np.ndarray
    slot: dict[int, int] = field(default_factory=dict)     # clip-table row -> index into matrix

    def __post_init__(self) -> None:
        self.slot = {int(r): i for i, r in enumerate(self.rows)}


@dataclass
class Snapshot:
    """What an exact search reads: the clip table (with `_row`) and each embedder's vectors."""
    clips: pa.Table
    ids: list[str]
    vectors: dict[str, Vectors]
    signature: tuple = ()
    masks: dict[str, np.ndarray] = field(default_factory=dict)    # `--where` text -> rows it keeps

    def mask(self, where) -> np.ndarray:
        """Rows of the clip table a compiled `--where` keeps (only the columns it reads are filtered)."""
        if where.text not in self.masks:
            kept = self.clips.select([*sorted(where.columns()), ROW]).filter(where.arrow()).column(ROW)
            out = np.zeros(len(self.ids), bool)
            out[kept.to_numpy()] = True
            if len(self.masks) > 64:
                self.masks.clear()
            self.masks[where.text] = out
        return self.masks[where.text]


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties: lower index first)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    cand = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return cand[np.lexsort((cand, -scores[cand]))]


SCORES_PER_BLOCK = 1 << 24     # query x vector scores held at once (64 MB): many queries go in blocks


def ranked(vec: Vectors, queries: np.ndarray, allowed: np.ndarray | None, k: int) -> list[list[tuple[int, float]]]:
    """For each query (a row of `queries`, (Q, D)): (clip-table row, cosine) of the k nearest vectors
    among the `allowed` rows (a bool mask over the clip table; None = all). Every vector is scored
    (one matrix product for all the queries) and the disallowed ones dropped after: cheaper than
    copying the allowed rows out first."""
    q = np.stack([r / max(float(np.linalg.norm(r)), 1e-12) for r in np.atleast_2d(np.asarray(queries, np.float32))])
    drop = None
    if allowed is not None:
        keep = allowed[vec.rows]
        k = min(k, int(keep.sum()))
        drop = ~keep
    out = []
    step = max(1, SCORES_PER_BLOCK // max(1, len(vec.rows)))
    for lo in range(0, len(q), step):
        scores = vec.matrix @ q[lo:lo + step].T         # (vectors, queries); for one query the same as matrix @ q
        if drop is not None:
            scores[drop] = -np.inf
        for col in scores.T:
            best = top(col, k)
            out.append([(int(vec.rows[i]), float(min(col[i], 1.0))) for i in best])
    return out


def rrf(lists: list[list[tuple[int, float]]], k: int, limit: int) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion as Milvus computes it: score = sum of 1 / (k + rank), rank from 1;
    ties keep first-seen order."""
    score: dict[int, float] = {}
    for hits in lists:
        for rank, (row, _) in enumerate(hits):
            score[row] = score.get(row, 0.0) + 1.0 / (k + rank + 1)
    return sorted(score.items(), key=lambda kv: kv[1], reverse=True)[:limit]

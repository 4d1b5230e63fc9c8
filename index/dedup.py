"""Semantic near-duplicates: clips whose embeddings are closer than a cosine threshold.

Each clip's vector (from the Parquet side table) queries the Milvus collection for its k nearest
neighbours, in batches of queries, so the work grows as n * k rather than n^2. Pairs at or above
the threshold are joined into groups (union-find); each group keeps its best member by the
filters' keep-best rule (`pipeline.library.views.keep_best_rank`: passes the filters, aesthetic score,
picture area, sharpness, duration, clip_id) and the others get `duplicate_of` = that member.
Writing `duplicate_of` into the filter view is the filter stage's job; this returns the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.api import ClipIndex, model_id_of
from index.store import vector_field
from pipeline.library.embeddings import read_embeddings, vectors_of
from pipeline.library.views import keep_best_rank

QUERY_BATCH = 256


@dataclass
class DuplicateGroup:
    keep: str
    duplicates: list[str]
    min_similarity: float      # the weakest link that joined the group


def _find(parent: dict[str, str], x: str) -> str:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def semantic_duplicates(lib: ClipIndex, embedder: str | None = None, threshold: float | None = None,
                        neighbours: int | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate clips of an indexed library, best member first."""
    cfg = lib.cfg.dedup
    threshold = cfg.threshold if threshold is None else threshold
    k = (cfg.neighbours if neighbours is None else neighbours) + 1     # the clip itself comes back too
    names = [n for n in (embedder or cfg.embedder, lib.cfg.embedder_of_kind("text")) if n]
    indexed = lib.vector_fields() if lib.store.exists() else []
    name = next((n for n in names if vector_field(n) in indexed), None)
    if name is None:
        raise ValueError("no embeddings to compare: run `recap index LIB` first")
    emb = read_embeddings(lib.root, name, model_id_of(lib.cfg.embedders[name]))
    ids = emb.column("clip_id").to_pylist()
    vecs = vectors_of(emb)
    parent = {c: c for c in ids}
    weakest: dict[tuple[str, str], float] = {}
    for i in range(0, len(ids), QUERY_BATCH):
        results = lib.store.search(name, vecs[i:i + QUERY_BATCH].tolist(), k, "", [])
        for cid, hits in zip(ids[i:i + QUERY_BATCH], results):
            for h in hits:
                other = h["clip_id"]
                if other != cid and other in parent and h["distance"] >= threshold:
                    a, b = _find(parent, cid), _find(parent, other)
                    if a != b:
                        parent[a] = b
                    weakest[(cid, other)] = float(h["distance"])
    members: dict[str, list[str]] = {}
    for c in ids:
        members.setdefault(_find(parent, c), []).append(c)
    groups = [m for m in members.values() if len(m) > 1]
    if not groups:
        return []
    clips = lib.clip_table()
    passed = (pc.fill_null(clips.column("passed"), True).to_numpy(zero_copy_only=False)
              if "passed" in clips.column_names else np.ones(clips.num_rows, bool))
    rank = dict(zip(clips.column("clip_id").to_pylist(), keep_best_rank(clips, passed.astype(bool)).tolist()))
    # the weakest link of each group, in one pass over the links (both ends of one are in its group)
    group_of = {c: g for g, m in enumerate(groups) for c in m}
    low: dict[int, float] = {}
    for (a, _), sim in weakest.items():
        g = group_of[a]
        low[g] = min(low.get(g, sim), sim)
    out = []
    for g, m in enumerate(groups):
        m.sort(key=lambda c: rank.get(c, len(rank)))
        out.append(DuplicateGroup(keep=m[0], duplicates=m[1:], min_similarity=low[g]))
    return sorted(out, key=lambda g: g.keep)


def duplicate_of(groups: list[DuplicateGroup]) -> dict[str, str]:
    """clip_id -> the clip it duplicates (the kept member of its group)."""
    return {d: g.keep for g in groups for d in g.duplicates}


def as_table(groups: list[DuplicateGroup]) -> pa.Table:
    """clip_id, duplicate_of for every duplicate: ready to merge into the filter view."""
    pairs = duplicate_of(groups)
    return pa.table({"clip_id": pa.array(list(pairs), pa.string()), "duplicate_of": pa.array(list(pairs.values()), pa.string())})

"""Search benchmark: Milvus (Lite by default) against exact numpy brute force, same machine, same run.

For each collection size: synthetic clustered 384-d unit vectors with two scalar fields, inserted
through the index's own store (insert throughput), then single-query latency (p50/p99), batched
per-query cost, and recall@10 against brute force, with and without a filter.

  python bench/search.py                                   # 10k and 100k, FLAT and IVF_FLAT on Lite
  python bench/search.py --sizes 10000 --index FLAT --queries 50
  python bench/search.py --uri http://milvus:19530 --index HNSW
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.config import MilvusConfig  # noqa: E402
from index.store import MilvusStore, ScalarSpec  # noqa: E402
from index.where import compile_where, fields_of  # noqa: E402

CLASSES = ["static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shaky"]
FILTER = 'duration_s > 4 and camera_motion in ["pan_left", "pan_right", "static"]'


def make_data(n: int, dim: int, rng: np.random.Generator):
    centres = rng.normal(size=(max(8, n // 100), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    duration = rng.uniform(0.5, 20.0, n)
    motion = rng.choice(CLASSES, n)
    return x, duration, motion


def brute_force(x: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None) -> np.ndarray:
    scores = x @ q.T                                   # (N, Q)
    if mask is not None:
        scores[~mask] = -np.inf
    top = np.argpartition(-scores, k, axis=0)[:k]      # (k, Q) unordered
    order = np.argsort(-np.take_along_axis(scores, top, 0), axis=0)
    return np.take_along_axis(top, order, 0).T         # (Q, k)


def pct(ms: list[float], p: float) -> float:
    return float(np.percentile(ms, p))


def bench(n: int, index: str, args, rng) -> list[dict]:
    x, duration, motion = make_data(n, args.dim, rng)
    queries = x[rng.integers(0, n, args.queries)] + 0.3 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    mask = (duration > 4) & np.isin(motion, ["pan_left", "pan_right", "static"])
    import pyarrow as pa
    fields = fields_of(pa.schema([("duration_s", pa.float64()), ("camera_motion", pa.string())]),
                       {"camera_motion": tuple(CLASSES)})
    expr = compile_where(FILTER, fields).milvus()

    tmp = tempfile.mkdtemp(prefix="recap-bench-")
    cfg = MilvusConfig(uri=args.uri, collection=f"bench_{n}_{index.lower()}", lite_index=index, server_index=index,
                       index_params={"nlist": args.nlist, "M": 16, "efConstruction": 200},
                       search_params={"nprobe": args.nprobe, "ef": 128})
    store = MilvusStore(tmp, cfg)
    store.drop()
    store.create([ScalarSpec("duration_s", "float"), ScalarSpec("camera_motion", "string")], {"v": args.dim})
    t0 = time.perf_counter()
    rows = [{"clip_id": f"c{i:07d}", "row_hash": "", "duration_s": float(duration[i]), "camera_motion": str(motion[i]),
             "has_v": True, "v_vec": x[i].tolist()} for i in range(n)]
    store.insert(rows)
    store.flush()
    insert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.upsert(rows[: n // 10])                              # idempotent re-write of 10% of the rows
    store.flush()
    upsert_s = time.perf_counter() - t0
    store.search("v", [queries[0].tolist()], 10, "", [])      # load / warm up
    out = []
    for label, flt, m in (("none", "", None), ("filter", expr, mask)):
        truth = brute_force(x, queries, 10, m)
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            res = store.search("v", [q.tolist()], 10, flt, [])[0]
            lat.append(1000 * (time.perf_counter() - t))
            found.append([int(h["clip_id"][1:]) for h in res])
        recall = float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))
        t = time.perf_counter()
        for i in range(0, len(queries), args.batch):
            store.search("v", queries[i:i + args.batch].tolist(), 10, flt, [])
        batched = 1000 * (time.perf_counter() - t) / len(queries)
        np_lat = []
        for q in queries[:50]:
            t = time.perf_counter()
            brute_force(x, q[None], 10, m)
            np_lat.append(1000 * (time.perf_counter() - t))
        out.append(dict(n=n, index=index, filter=label, selectivity=float(m.mean()) if m is not None else 1.0,
                        p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), batched_ms_per_query=batched,
                        numpy_p50_ms=pct(np_lat, 50), recall_at_10=recall, insert_rows_per_s=n / insert_s,
                        upsert_rows_per_s=(n // 10) / upsert_s))
        print(out[-1], flush=True)
    store.drop()
    store.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--index", default="FLAT,IVF_FLAT", help="comma-separated index types")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--batch", type=int, default=50, help="queries per request in the batched measurement")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, default=64)
    p.add_argument("--uri", default="", help="Milvus server; default a Milvus Lite file in a temp folder")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    results = [r for n in args.sizes for index in args.index.split(",") for r in bench(n, index, args, rng)]
    print("\n| clips | index | filter (kept) | p50 ms | p99 ms | batched ms/query | numpy p50 ms | recall@10 | insert rows/s | upsert rows/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['index']} | {r['filter']} ({r['selectivity']:.0%}) | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['batched_ms_per_query']:.2f} | {r['numpy_p50_ms']:.2f} | "
              f"{r['recall_at_10']:.4f} | {r['insert_rows_per_s']:,.0f} | {r['upsert_rows_per_s']:,.0f} |")


if __name__ == "__main__":
    main()

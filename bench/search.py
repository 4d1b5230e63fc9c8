"""Search benchmark: Milvus (Lite by default) against exact numpy brute force, and recap's own
search path beside both, same machine, same run.

For each collection size: a library folder with synthetic clustered 384-d unit vectors as its
caption embeddings (captions, clips with two filterable columns), the collection inserted through
the index's own store (insert throughput), then single-query latency (p50/p99), batched per-query
cost and recall@10 against brute force, with and without a filter. With FLAT, recap's paths too:

- `raw pymilvus`: the `MilvusClient.search` call `ClipIndex.search` makes, query vector given;
- `recap milvus`: `ClipIndex.search(text)` on the same collection (`milvus.exact_max_clips=0`):
  query embedding (the bundled MiniLM) + that call + building the hits;
- `recap exact`: `ClipIndex.search(text)` on Lite's fast path (exact scan of the Parquet vectors,
  read once per process; the first call, which reads them, is reported apart), same top-10 as FLAT;
- `numpy`: the scan alone, on an array already in memory;
- `cold CLI`: one `recap search LIB TEXT --where ...` process, start to exit;
- `search_many`: `--many-queries` texts (16) searched together (`ClipIndex.search_many`: one model
  forward, one matrix product or one Milvus call) against one `ClipIndex.search` per text, on both
  paths and for the query encoding alone; interleaved, medians of wall and of CPU time (this process
  and its children: Milvus Lite's server included).

With `--build`, the collection build instead: `recap index LIB --repair` (`run_index`: nothing to
embed, the Lite store removed and built again from the library's Parquet) against raw pymilvus
`MilvusClient.insert` of the same rows (row dicts made from the same Parquet, `milvus.batch_rows` a
call, their making not timed) into a collection of the same schema; each in its own process (so
peak RSS is its own), interleaved, `--reps` times; rows/s by wall clock and per CPU-second
(user+sys of the process, Lite's in-process server included).

  python bench/search.py                                   # 10k and 100k, FLAT and IVF_FLAT on Lite
  python bench/search.py --sizes 100000 --index FLAT --queries 50
  python bench/search.py --uri http://milvus:19530 --index HNSW
  python bench/search.py --build --reps 3                  # build: recap vs raw insert, 10k and 100k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.api import ClipIndex, input_hash, model_id_of  # noqa: E402
from index.embedders import embed_queries, embed_query, query_encoder  # noqa: E402
from index.store import MilvusStore, ScalarSpec, has_field, rows_of, vector_field  # noqa: E402
from index.where import compile_where, fields_of  # noqa: E402
from pipeline.embed import load_index_config, run_index  # noqa: E402
from pipeline.library import Library  # noqa: E402
from pipeline.library.embeddings import write_embeddings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shaky"]
FILTER = 'duration_s > 4 and camera_motion in ["pan_left", "pan_right", "static"]'
EMBEDDER = "caption"
CHUNK = 5000


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


def clip_ids(n: int) -> list[str]:
    return [f"c{i:07d}" for i in range(n)]


def make_library(root: Path, x: np.ndarray, duration: np.ndarray, motion: np.ndarray, cfg) -> None:
    """A library whose clips carry the two filter columns and whose caption vectors are `x`."""
    n = len(x)
    ids = clip_ids(n)
    lib = Library(root, write=True)
    now = datetime.now(timezone.utc)
    vid = "b" * 32
    clips = [{"clip_id": ids[i], "video_id": vid, "shot_index": i, "clip_index": i, "start_frame": 0,
              "end_frame": 25, "n_frames": 25, "start_s": 0.0, "end_s": float(duration[i]),
              "duration_s": float(duration[i]), "fps": 25.0, "width": 640, "height": 360, "clip_mode": "reference",
              "path": None, "camera_motion": str(motion[i])} for i in range(n)]
    lib.commit({"videos": [{"video_id": vid, "uri": "/data/bench.mp4", "ingested_at": now}], "clips": clips})
    lib.close()
    captions = [f"synthetic clip {i}" for i in range(n)]
    version = hashlib.blake2b(b"bench", digest_size=6).hexdigest()
    spec = {"backend": "import", "model_id": "bench", "revision": None, "prompt_id": "bench", "prompt_sha": "0",
            "params": "{}"}
    store = Library(root).captions
    store.append([{**spec, "clip_id": c, "version": version, "text": t, "status": "ok", "attempts": 1}
                  for c, t in zip(ids, captions)])
    store.set_default(version)
    mid = model_id_of(cfg.embedders[EMBEDDER])
    write_embeddings(root, EMBEDDER, mid, ids, x, [input_hash(mid, t) for t in captions])


def timed(fn, reps: int) -> tuple[list[float], object]:
    ms, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        ms.append(1000 * (time.perf_counter() - t))
    return ms, out


def bench(n: int, index: str, args, rng) -> tuple[list[dict], dict | None]:
    x, duration, motion = make_data(n, args.dim, rng)
    queries = x[rng.integers(0, n, args.queries)] + 0.3 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    mask = (duration > 4) & np.isin(motion, ["pan_left", "pan_right", "static"])
    collection = f"bench_{n}_{index.lower()}" if args.uri else "clips"
    cfg = load_index_config(overrides=["embedders.visual.enabled=false", f"milvus.lite_index={index}",
                                       f"milvus.server_index={index}", f"milvus.collection={collection}",
                                       f"milvus.index_params.nlist={args.nlist}",
                                       f"milvus.search_params.nprobe={args.nprobe}"]
                            + ([f"milvus.uri={args.uri}"] if args.uri else []))

    lib_root = Path(tempfile.mkdtemp(prefix="recap-bench-")) / "lib"
    make_library(lib_root, x, duration, motion, cfg)
    store = MilvusStore(lib_root, cfg.milvus)
    store.drop()
    store.create([ScalarSpec("duration_s", "float"), ScalarSpec("camera_motion", "string")], {EMBEDDER: args.dim})
    ids = clip_ids(n)

    def rows(lo: int, hi: int) -> list[dict]:
        return [{"clip_id": ids[i], "row_hash": "", "duration_s": float(duration[i]), "camera_motion": str(motion[i]),
                 has_field(EMBEDDER): True, vector_field(EMBEDDER): x[i].tolist()} for i in range(lo, hi)]

    t0 = time.perf_counter()
    for lo in range(0, n, CHUNK):
        store.insert(rows(lo, min(n, lo + CHUNK)))
    store.flush()
    insert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.upsert(rows(0, n // 10))                              # idempotent re-write of 10% of the rows
    store.flush()
    upsert_s = time.perf_counter() - t0
    store.search(EMBEDDER, [queries[0].tolist()], 10, "", [])   # load / warm up
    fields = fields_of(pa.schema([("duration_s", pa.float64()), ("camera_motion", pa.string())]),
                       {"camera_motion": tuple(CLASSES)})
    expr = compile_where(FILTER, fields).milvus()
    out = []
    for label, flt, m in (("none", "", None), ("filter", expr, mask)):
        truth = brute_force(x, queries, 10, m)
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            res = store.search(EMBEDDER, [q.tolist()], 10, flt, [])[0]
            lat.append(1000 * (time.perf_counter() - t))
            found.append([int(h["clip_id"][1:]) for h in res])
        recall = float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))
        t = time.perf_counter()
        for i in range(0, len(queries), args.batch):
            store.search(EMBEDDER, queries[i:i + args.batch].tolist(), 10, flt, [])
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
    recap = None
    if index == "FLAT" and not args.no_recap:
        store.close()                    # ClipIndex opens its own (Lite admits one opener at a time)
        recap = bench_recap(lib_root, cfg, x, mask, expr, args)
        store = MilvusStore(lib_root, cfg.milvus)
    store.drop()
    store.close()
    shutil.rmtree(lib_root.parent, ignore_errors=True)
    return out, recap


def bench_recap(root: Path, cfg, x: np.ndarray, mask: np.ndarray, expr: str, args) -> dict:
    """recap's search beside the raw call it makes, on the same collection, with the filter."""
    texts = [f"a clip of something number {i}" for i in range(args.recap_queries)]
    encoder = query_encoder("text", "bundled")
    enc_ms, _ = timed(lambda: embed_query(encoder, texts[0]), 20)
    qs = [embed_query(encoder, t) for t in texts]
    flt = f"({has_field(EMBEDDER)} == true) and ({expr})"      # as MilvusStore.search builds it
    raw, recap_milvus, recap_exact, numpy_ms, same = [], [], [], [], 0
    cfg_milvus = load_index_config(overrides=["embedders.visual.enabled=false", "milvus.exact_max_clips=0",
                                              f"milvus.collection={cfg.milvus.collection}"]
                                   + ([f"milvus.uri={args.uri}"] if args.uri else []))
    cfg_exact = load_index_config(overrides=["embedders.visual.enabled=false"])
    with ClipIndex(root, cfg_milvus) as slow, ClipIndex(root, cfg_exact) as fast:
        t = time.perf_counter()
        fast.search(texts[0], top_k=10, where=FILTER)             # reads the Parquet vectors once
        first_exact_ms = 1000 * (time.perf_counter() - t)
        slow.search(texts[0], top_k=10, where=FILTER)             # opens and loads the collection
        client, coll = slow.store.client, slow.store.collection
        params = slow.store.search_params()
        shown = [f for f in ("video_id", "source", "start_s", "end_s", "duration_s", "caption", "path")
                 if f in slow.store.describe()]
        for text, q in zip(texts, qs):          # interleaved, so load drifts hit every path alike
            ms, res = timed(lambda: client.search(coll, data=[q.tolist()], anns_field=vector_field(EMBEDDER),
                                                  limit=10, filter=flt, output_fields=shown, search_params=params), 1)
            raw += ms
            ms, a = timed(lambda: slow.search(text, top_k=10, where=FILTER), 1)
            recap_milvus += ms
            ms, b = timed(lambda: fast.search(text, top_k=10, where=FILTER), 1)
            recap_exact += ms
            ms, top = timed(lambda: brute_force(x, q[None], 10, mask)[0], 1)
            numpy_ms += ms
            same += [h.clip_id for h in a] == [h.clip_id for h in b] == [f"c{i:07d}" for i in top] \
                == [h["clip_id"] if "clip_id" in h else h["id"] for h in res[0]]
        many = bench_many(fast, slow, encoder, [f"a clip showing scene {i} of the set" for i in range(args.many_queries)],
                          args.many_reps)
    t = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "pipeline.cli", "search", str(root), texts[0], "--where", FILTER,
                          "--set", "embedders.visual.enabled=false"], cwd=ROOT, capture_output=True, text=True)
    cold_s = time.perf_counter() - t
    assert cli.returncode == 0, cli.stderr
    out = dict(n=len(x), raw_p50_ms=pct(raw, 50), recap_milvus_p50_ms=pct(recap_milvus, 50),
               recap_exact_p50_ms=pct(recap_exact, 50), recap_exact_first_ms=first_exact_ms,
               numpy_p50_ms=pct(numpy_ms, 50), encode_p50_ms=pct(enc_ms, 50), same_top10=f"{same}/{len(texts)}",
               cold_cli_s=cold_s, many=many)
    print(out, flush=True)
    return out


def tree_cpu_s() -> float:
    """CPU seconds (user+sys) of this process and its live children (Milvus Lite's server is one)."""
    total = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def bench_many(fast: ClipIndex, slow: ClipIndex, encoder, texts: list[str], reps: int) -> list[dict]:
    """`search_many(texts)` against one `search` per text (and the query encoding alone), both with
    the filter, interleaved `reps` times; medians of wall and tree CPU milliseconds."""
    paths = {
        "query encoding only": (lambda: [embed_query(encoder, t) for t in texts], lambda: embed_queries(encoder, texts)),
        "recap exact": (lambda: [fast.search(t, top_k=10, where=FILTER) for t in texts],
                        lambda: fast.search_many(texts, top_k=10, where=FILTER)),
        "recap via Milvus": (lambda: [slow.search(t, top_k=10, where=FILTER) for t in texts],
                             lambda: slow.search_many(texts, top_k=10, where=FILTER)),
    }
    out = []
    for label, (one_by_one, together) in paths.items():
        ms: dict[str, list[float]] = {"single": [], "many": []}
        cpu: dict[str, list[float]] = {"single": [], "many": []}
        got = {}
        for rep in range(reps):
            for what in (("single", "many") if rep % 2 == 0 else ("many", "single")):
                c, t = tree_cpu_s(), time.perf_counter()
                got[what] = (one_by_one if what == "single" else together)()
                ms[what].append(1000 * (time.perf_counter() - t))
                cpu[what].append(1000 * (tree_cpu_s() - c))
        if label == "query encoding only":
            same = bool(np.abs(np.stack(got["single"]) - got["many"]).max() < 1e-5)
        else:
            same = [[h.clip_id for h in hits] for hits in got["single"]] == \
                [[h.clip_id for h in hits] for hits in got["many"]]
        out.append(dict(path=label, queries=len(texts), single_ms=float(np.median(ms["single"])),
                        many_ms=float(np.median(ms["many"])), single_cpu_ms=float(np.median(cpu["single"])),
                        many_cpu_ms=float(np.median(cpu["many"])), same=same))
        print(out[-1], flush=True)
    return out


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would keep the forking parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_child(mode: str, root: Path) -> dict:
    """One build, in this (fresh) process: `recap` = `recap index ROOT --repair`; `raw` = the same
    rows inserted with `MilvusClient.insert` into a new Lite store beside the library."""
    cfg = load_index_config(overrides=["embedders.visual.enabled=false"])
    import pymilvus  # noqa: F401  (imported before the baseline RSS, as both modes need it)
    rss_before = peak_rss_mb()
    if mode == "recap":
        c, t = cpu_s(), time.perf_counter()
        rec = run_index(root, cfg, rebuild=True, log=lambda *_: None)
        cpu, wall, rows = cpu_s() - c, time.perf_counter() - t, rec.rows
    else:
        raw_db = root.parent / "raw.db"
        shutil.rmtree(raw_db, ignore_errors=True)
        cfg.milvus.uri = str(raw_db)
        cpu = wall = 0.0
        with ClipIndex(root, cfg) as index, index.desired() as want:
            store = index.store
            store.create(want.scalars, want.dims)
            fields = store.fields()
            for batch in want.source.batches(cfg.milvus.batch_rows):
                rows = rows_of(batch, fields)              # made from the same Parquet; not timed
                c, t = cpu_s(), time.perf_counter()
                store.client.insert(store.collection, rows)
                cpu, wall = cpu + cpu_s() - c, wall + time.perf_counter() - t
            c, t = cpu_s(), time.perf_counter()
            store.client.flush(store.collection)
            cpu, wall = cpu + cpu_s() - c, wall + time.perf_counter() - t
            rows = store.count()
        shutil.rmtree(raw_db, ignore_errors=True)
    return dict(mode=mode, rows=rows, wall_s=wall, cpu_s=cpu, rss_before_mb=rss_before, peak_rss_mb=peak_rss_mb())


def bench_build(args) -> None:
    """recap's build against raw pymilvus inserts of the same rows, interleaved, each in its own process."""
    results = []
    for n in args.sizes:
        x, duration, motion = make_data(n, args.dim, np.random.default_rng(n))
        lib_root = Path(tempfile.mkdtemp(prefix="recap-bench-build-")) / "lib"
        make_library(lib_root, x, duration, motion, load_index_config(overrides=["embedders.visual.enabled=false"]))
        del x, duration, motion
        runs: dict[str, list[dict]] = {"recap": [], "raw": []}
        for rep in range(args.reps):
            for mode in (("recap", "raw") if rep % 2 == 0 else ("raw", "recap")):
                out = subprocess.run([sys.executable, __file__, "--build-child", mode, str(lib_root)], cwd=ROOT,
                                     capture_output=True, text=True)
                assert out.returncode == 0, out.stderr[-3000:]
                r = json.loads(out.stdout.strip().splitlines()[-1])
                assert r["rows"] == n, r
                print(dict(n=n, rep=rep, **r), flush=True)
                runs[mode].append(r)
        for mode, rs in runs.items():
            med = {k: float(np.median([r[k] for r in rs])) for k in ("wall_s", "cpu_s", "rss_before_mb", "peak_rss_mb")}
            results.append(dict(n=n, mode=mode, **med))
        shutil.rmtree(lib_root.parent, ignore_errors=True)
    print(f"\nMedians of {args.reps} interleaved runs, each in its own process; load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs:\n")
    print("| clips | path | wall s | rows/s (wall) | CPU s | rows per CPU-s | vs raw (CPU) | RSS before MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    raw_cpu = {r["n"]: r["cpu_s"] for r in results if r["mode"] == "raw"}
    for r in results:
        label = "recap index --repair" if r["mode"] == "recap" else "raw MilvusClient.insert"
        print(f"| {r['n']:,} | {label} | {r['wall_s']:.1f} | {r['n'] / r['wall_s']:,.0f} | {r['cpu_s']:.1f} | "
              f"{r['n'] / r['cpu_s']:,.0f} | {raw_cpu[r['n']] / r['cpu_s']:.2f}x | {r['rss_before_mb']:.0f} | "
              f"{r['peak_rss_mb']:.0f} |")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--build-child":
        print(json.dumps(build_child(sys.argv[2], Path(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--index", default="FLAT,IVF_FLAT", help="comma-separated index types")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--recap-queries", type=int, default=30, help="queries for the recap-path comparison (FLAT)")
    p.add_argument("--no-recap", action="store_true", help="skip recap's own paths")
    p.add_argument("--many-queries", type=int, default=16, help="texts for the search_many comparison (FLAT)")
    p.add_argument("--many-reps", type=int, default=11, help="interleaved runs of each side of search_many's comparison")
    p.add_argument("--batch", type=int, default=50, help="queries per request in the batched measurement")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, default=64)
    p.add_argument("--uri", default="", help="Milvus server; default a Milvus Lite file in a temp folder")
    p.add_argument("--build", action="store_true", help="benchmark the collection build instead (see above)")
    p.add_argument("--reps", type=int, default=3, help="--build: runs of each path per size")
    args = p.parse_args()
    if args.build:
        bench_build(args)
        return
    rng = np.random.default_rng(0)
    results, recaps = [], []
    for n in args.sizes:
        for index in args.index.split(","):
            rows, recap = bench(n, index, args, rng)
            results += rows
            recaps += [recap] if recap else []
    print("\n| clips | index | filter (kept) | p50 ms | p99 ms | batched ms/query | numpy p50 ms | recall@10 | insert rows/s | upsert rows/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['index']} | {r['filter']} ({r['selectivity']:.0%}) | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['batched_ms_per_query']:.2f} | {r['numpy_p50_ms']:.2f} | "
              f"{r['recall_at_10']:.4f} | {r['insert_rows_per_s']:,.0f} | {r['upsert_rows_per_s']:,.0f} |")
    if recaps:
        print(f"\nWith the filter `{FILTER}`, top 10, p50 of interleaved single queries:\n")
        print("| clips | raw pymilvus ms | recap via Milvus ms (÷ raw) | recap exact ms (first call) | numpy ms | "
              "query encoding ms | same top-10 | cold `recap search` s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in recaps:
            print(f"| {r['n']:,} | {r['raw_p50_ms']:.1f} | {r['recap_milvus_p50_ms']:.1f} "
                  f"({r['recap_milvus_p50_ms'] / r['raw_p50_ms']:.2f}) | {r['recap_exact_p50_ms']:.1f} "
                  f"({r['recap_exact_first_ms']:.0f}) | {r['numpy_p50_ms']:.1f} | {r['encode_p50_ms']:.1f} | "
                  f"{r['same_top10']} | {r['cold_cli_s']:.2f} |")
        n_q = recaps[0]["many"][0]["queries"]
        print(f"\n{n_q} queries with the filter, top 10: one `search` per text against one `search_many` of all "
              f"of them; medians of {args.many_reps} interleaved runs, wall and CPU (this process and its children) "
              f"ms; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs:\n")
        print(f"| clips | path | {n_q} × search ms (CPU ms) | search_many ms (CPU ms) | speed-up wall (CPU) | same hits |")
        print("|---|---|---|---|---|---|")
        for r in recaps:
            for m in r["many"]:
                print(f"| {r['n']:,} | {m['path']} | {m['single_ms']:.1f} ({m['single_cpu_ms']:.0f}) | "
                      f"{m['many_ms']:.1f} ({m['many_cpu_ms']:.0f}) | {m['single_ms'] / m['many_ms']:.2f}x "
                      f"({m['single_cpu_ms'] / max(m['many_cpu_ms'], 1e-9):.2f}x) | {m['same']} |")


if __name__ == "__main__":
    main()

"""How near-duplicate search and the whole filter view scale with the number of clips.

Synthetic clips with 3 random 64-bit pHashes each, 10% of them near copies (a few bits flipped)
of another clip. Times `near_duplicates` alone and `evaluate` (all threshold rules + dedup) and
counts candidate pairs, from 1k to 100k clips (more with --sizes). --blank P gives P% of the
clips the same hashes (black or blank shots, a repeated intro: every pair of them is a candidate).

  .venv/bin/python bench/dedup.py [--sizes 1000 10000 100000] [--hamming 6] [--bands 4] [--blank 10]

--cluster instead makes every clip a near copy of one (each hash one random bit off): all pairs are
near duplicates, so the work is quadratic whatever the search; this times what it costs.

  .venv/bin/python bench/dedup.py --cluster --sizes 1000 2000 4000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.filters.config import DedupConfig, load_filter_config  # noqa: E402
from pipeline.filters.evaluate import evaluate  # noqa: E402
from pipeline.filters.near_duplicates import near_duplicates  # noqa: E402


def synthetic(n: int, seed: int = 0, blank: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, (n, 3), dtype=np.uint64, endpoint=True)
    copies = rng.choice(n, n // 10, replace=False)
    sources = rng.integers(0, n, n // 10)
    flips = np.uint64(1) << rng.integers(0, 64, (n // 10, 3, 3)).astype(np.uint64)
    hashes[copies] = hashes[sources] ^ np.bitwise_or.reduce(flips, axis=2)
    hashes[rng.choice(n, int(n * blank / 100), replace=False)] = 0
    return pa.table({
        "clip_id": [f"c{i:08d}" for i in range(n)],
        "video_id": [f"v{i // 8:07d}" for i in range(n)],
        "duration_s": rng.uniform(1, 10, n), "motion_score": rng.lognormal(1, 1.2, n).astype(np.float32),
        "aesthetic_score": rng.normal(5, 1, n).astype(np.float32), "width": np.full(n, 1920), "height": np.full(n, 1080),
        "phash": pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)), pa.array(hashes.ravel())),
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    p.add_argument("--hamming", type=int, default=6)
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--blank", type=float, default=0.0, metavar="P", help="percent of clips with the same (zero) hashes")
    p.add_argument("--cluster", action="store_true", help="every clip a near copy of one (see above)")
    args = p.parse_args()
    if args.cluster:
        rng = np.random.default_rng(0)
        base = rng.integers(0, np.iinfo(np.uint64).max, 3, dtype=np.uint64, endpoint=True)
        for n in args.sizes:
            h = base[None, :] ^ (np.uint64(1) << rng.integers(0, 64, (n, 3)).astype(np.uint64))
            phash = pa.array(h.tolist(), pa.list_(pa.uint64()))
            t0 = time.perf_counter()
            dup = near_duplicates(phash, pa.array([f"v{k}" for k in range(n)]), np.arange(n), DedupConfig())
            print(f"{n:>8} clips in one cluster: {time.perf_counter() - t0:.2f} s, {int((dup >= 0).sum())} duplicates")
        return
    cfg = DedupConfig(hamming=args.hamming, bands=args.bands)
    filters = load_filter_config(overrides=[f"dedup.hamming={args.hamming}", f"dedup.bands={args.bands}"])
    print(f"hamming <= {cfg.hamming}, {cfg.bands} bands (probe radius {cfg.hamming // cfg.bands}), 3 hashes/clip")
    print(f"{'clips':>8} {'dedup s':>8} {'view s':>8} {'us/clip':>8} {'dups':>7}")
    for n in args.sizes:
        table = synthetic(n, blank=args.blank)
        rank = np.arange(n)
        t0 = time.perf_counter()
        dup = near_duplicates(table.column("phash"), table.column("video_id"), rank, cfg)
        t_dedup = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate(table, filters)
        t_view = time.perf_counter() - t0
        print(f"{n:>8} {t_dedup:>8.3f} {t_view:>8.3f} {1e6 * t_dedup / n:>8.1f} {int((dup >= 0).sum()):>7}")


if __name__ == "__main__":
    main()

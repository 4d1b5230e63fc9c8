"""Re-evaluate which clips pass, from the stored signals only (no decoding): a view, not a delete.

Reads the signal columns of LIB/clips/, applies the thresholds of configs/filters.yaml (plus
--config and --set overrides) and near-duplicate search, and atomically rewrites
LIB/views/filters.parquet: one row per clip with `passed`, `reject_reasons` (e.g.
['motion.min', 'duplicate']) and `duplicate_of`. Takes seconds for 100k clips; change a threshold
and run it again. `recap report LIB` shows the result. Refused while `recap remove` runs (it
would judge clips being removed).

Examples:
  recap filter lib
  recap filter lib --set filters.motion.min=1.0 --set filters.aesthetic.min=5.0
  recap filter lib --set filters.text.enabled=false --set dedup.hamming=4
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.filters.config import load_filter_config
from pipeline.filters.evaluate import reason_counts, run_filters
from pipeline.library import LibraryError
from pipeline.library.views import VIEW_PATH
from trainer.typedconfig import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIB", help="library folder written by `recap ingest`")
    p.add_argument("--config", metavar="FILE", help="YAML layered over configs/filters.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one key, e.g. --set filters.motion.min=1.0 (repeatable)")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        cfg = load_filter_config(args.config, args.overrides)
        view, missing = run_filters(args.library, cfg)
    except (ConfigError, FileNotFoundError, LibraryError) as e:
        print(f"recap filter: error: {e}", file=sys.stderr)
        return 2
    n, kept = view.num_rows, int(sum(view.column("passed").to_pylist()))
    print(f"{kept} of {n} clips pass ({100 * kept / max(n, 1):.1f}%) -> {args.library}/{VIEW_PATH}")
    for reason, count in reason_counts(view).items():
        print(f"  {reason:<20} {count:>8}  ({100 * count / max(n, 1):.1f}%)")
    if missing:
        print("not applied (column not in the library): " + ", ".join(missing))
    print(f"took {time.perf_counter() - t0:.2f} s")
    return 0

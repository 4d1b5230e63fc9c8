"""Write an HTML report of a clip library: signals, filter pass rates and rejected examples.

Signal histograms with the filter thresholds, pass rate per filter, clip lengths, camera motion,
and example thumbnails for each rejection reason.

Uses the stored filter view (LIB/views/filters.parquet, from `recap filter`) when there is one,
otherwise evaluates configs/filters.yaml in memory. Thumbnails decode one frame per example clip.

Examples:
  recap report lib                  # -> lib/report/index.html
  recap report lib --out /tmp/rep
"""

from __future__ import annotations

import argparse
import sys

from pipeline.filters.report import ReportError, build_report
from pipeline.library import LibraryError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIB", help="library folder written by `recap ingest`")
    p.add_argument("--out", metavar="DIR", help="output folder (default: LIB/report)")


def run(args: argparse.Namespace) -> int:
    try:
        index = build_report(args.library, args.out)
    except (FileNotFoundError, LibraryError, ReportError) as e:
        print(f"recap report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0

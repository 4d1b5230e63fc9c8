"""Split raw videos into single-shot clips and record them in a Parquet clip library.

SOURCE can be a video file, a directory (searched recursively), a glob ('videos/**/*.mp4'),
a manifest (.txt with one uri per line, or .csv/.jsonl/.parquet with a `uri` column; relative
paths in it are read from its own folder) or an fsspec URL (s3://, gs://, https://, ...;
staged through a size-bounded local cache).

Rerunning the same command resumes: sources already handled are skipped, and a crash or
kill -9 loses nothing but the batch in flight. Bad inputs become rows in LIB/errors/ (listed by
`recap info LIB --errors`) and the job goes on; a source that takes longer than sources.timeout_s (or sources.cpu_timeout_s of
CPU) is given up as an error row. Exit status: 0 when every source succeeded, 3 when some
failed or the library has no clips, 2 for a usage, config or Ray start error (then nothing
is written).

Without --ray-address the job runs on this machine without Ray: one sandboxed process per video in
flight, as many as the CPUs allow (execution.cpus_per_task, execution.max_tasks_in_flight). With
--ray-address the videos are Ray tasks on that cluster.

Examples:
  recap ingest videos/ --out lib
  recap ingest videos/ --out lib --dry-run          # how many videos a run would take; writes nothing
  recap ingest manifest.csv --out lib --set clips.mode=encode --set clips.max_seconds=8
  recap ingest s3://bucket/raw/ --out lib --ray-address auto
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pipeline.ingest.config import load_ingest_config
from pipeline.ingest.job import plan_ingest, run_ingest
from pipeline.ingest.sources import SourceError
from pipeline.library import LibraryError
from trainer.progress import add_no_progress_option
from trainer.typedconfig import ConfigError

EXIT_SOME_FAILED = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="files, directories, globs, manifests or URLs")
    p.add_argument("--out", required=True, metavar="LIB", help="library folder (created if missing)")
    p.add_argument("--config", metavar="FILE", help="YAML config layered over configs/ingest.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config key, e.g. --set clips.max_seconds=8 (repeatable)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="run on this Ray cluster ('auto' or host:port); default: this machine without Ray, a "
                        "sandboxed process per video in flight (--set execution.executor=ray starts a local Ray)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the sources and the config, say how many sources a run would ingest (and "
                        "their size), and write nothing")
    add_no_progress_option(p)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_ingest_config(args.config, args.overrides)
        if args.ray_address:   # as given: an address is not parsed as YAML
            cfg.execution.ray_address = args.ray_address
        if args.dry_run:
            print("\n".join(plan_ingest(args.sources, args.out, cfg).lines()))
            return 0
        summary = run_ingest(args.sources, args.out, cfg, progress=not args.no_progress,
                             command=" ".join(shlex.quote(a) for a in ["recap", *sys.argv[1:]]))
    except (ConfigError, SourceError, LibraryError) as e:
        print(f"recap ingest: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    if summary.failed:
        print(f"{summary.failed} source(s) failed: `recap info {shlex.quote(args.out)} --errors` lists them",
              file=sys.stderr)
    if summary.failed or not summary.library_clips:
        return EXIT_SOME_FAILED
    return 0

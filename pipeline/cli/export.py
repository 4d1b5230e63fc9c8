"""Export selected clips as bucketed, re-encoded WebDataset training shards with a dataset card.

Selects the clips that pass the filter view (`recap filter`), are not near-duplicates and match
--where (the shared filter language) and --query (semantic search, `recap index` first). Each
clip goes to a bucket of configs/buckets.yaml (resolution/aspect x frame count at one fps),
black bars cropped, and is re-encoded to exactly that size and length. Source videos go whole to
train or val (seeded), so no video is in both. Writes SHARDS/{train,val}-NNNNNN.tar (per sample
KEY.mp4 + KEY.json, see trainer/shards.py), SHARDS/manifest.parquet and the dataset card
SHARDS/README.md. On one machine shards are written one after another, each shard's samples
rendered on every CPU; with --ray-address (or --set execution.executor=ray), one Ray task per
shard. Shards are renamed into place when complete, so running the same command again after a
crash finishes the export without duplicates.

Examples:
  recap export lib --out shards
  recap export lib --out shards --dry-run                # the selection and the plan; writes nothing
  recap export lib --out shards --where 'duration_s >= 2 and camera_motion != "shaky"' --val-fraction 0.1
  recap export lib --out dogs --query "a dog running on a beach" --top-k 500 --caption-version 3f2a9c81d0e4
  recap export lib --out small --buckets my_buckets.yaml --shard-size 64MB
  recap export /shared/lib --out /shared/shards --ray-address auto          # one task per shard on a cluster
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from pipeline.export.buckets import load_buckets
from pipeline.export.config import load_export_config
from pipeline.export.job import preview_export, run_export
from pipeline.export.selection import ExportError
from pipeline.library import LibraryError
from trainer.progress import add_no_progress_option
from trainer.typedconfig import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIB", help="library folder written by `recap ingest`")
    p.add_argument("--out", required=True, metavar="SHARDS", help="output folder (new, or a killed export to resume)")
    p.add_argument("--where", metavar="EXPR", help="filter, e.g. 'duration_s > 3 and caption_version is not null'")
    p.add_argument("--query", action="append", metavar="TEXT",
                   help="keep only the clips a semantic search for TEXT returns; repeat it for several "
                        "(a clip any of them finds is kept)")
    p.add_argument("--selection", metavar="NAME",
                   help="export the clips of LIB/selections/NAME.parquet as chosen (the filter view is not applied)")
    p.add_argument("--top-k", type=int, default=100, metavar="N", help="hits of each --query to keep (default 100)")
    p.add_argument("--caption-version", metavar="V",
                   help="caption version to train on (default: the library's default version)")
    p.add_argument("--buckets", metavar="FILE", help="bucket file replacing configs/buckets.yaml")
    p.add_argument("--val-fraction", type=float, metavar="F", help="share of clips for validation (by video)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the split and the shard order")
    p.add_argument("--shard-size", metavar="SIZE", help="target shard size, e.g. 512MB (default), 2GB")
    p.add_argument("--config", metavar="FILE", help="YAML layered over configs/export.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one export key, e.g. --set crf=23 (repeatable)")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to run on, one task per shard (default: this machine, no Ray)")
    p.add_argument("--dry-run", action="store_true",
                   help="select and plan, then print the samples by split and bucket, the shards and their "
                        "estimated size; render and write nothing")
    add_no_progress_option(p)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for key, value in (("val_fraction", args.val_fraction), ("seed", args.seed),
                       ("shard_size", None if args.shard_size is None else json.dumps(args.shard_size))):
        if value is not None:   # the size as a string: YAML would read `--shard-size 0` as a number
            overrides.append(f"{key}={value}")
    if not args.query and args.top_k != 100:
        print("recap export: error: --top-k needs --query", file=sys.stderr)
        return 2
    if args.top_k < 1:
        print(f"recap export: error: --top-k must be >= 1, got {args.top_k}", file=sys.stderr)
        return 2
    try:
        cfg = load_export_config(args.config, overrides)
        if args.ray_address:   # as given: an address is not parsed as YAML
            cfg.execution.ray_address = args.ray_address
        buckets = load_buckets(args.buckets)
        if args.dry_run:
            print("\n".join(preview_export(args.library, where=args.where, query=args.query, top_k=args.top_k,
                                            caption_version=args.caption_version, selection=args.selection,
                                            buckets=buckets, cfg=cfg)))
            return 0
        summary = run_export(args.library, args.out, where=args.where, query=args.query, top_k=args.top_k,
                             caption_version=args.caption_version, selection=args.selection, buckets=buckets, cfg=cfg,
                             buckets_file=args.buckets, progress=not args.no_progress,
                             command=" ".join(shlex.quote(a) for a in ["recap", *sys.argv[1:]]))
    except (ConfigError, ExportError, LibraryError) as e:
        print(f"recap export: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0

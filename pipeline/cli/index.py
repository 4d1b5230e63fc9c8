"""Build or update the search index of a library: embed new clips, then sync Milvus from Parquet.

Embeddings are written to LIB/embeddings/<embedder>/ (Parquet, the source of truth), then the
Milvus collection is made to match the library: missing clips added, changed ones (new caption,
new filter result) updated, removed ones deleted. Milvus Lite (LIB/milvus.db) by default; give
--milvus-uri for a Milvus server. Reruns only embed what changed.

  --check   compare Milvus with Parquet and report missing, extra and stale rows; change nothing
            (exit status 1 when they differ, or when the store is damaged)
  --repair  make Milvus match Parquet without embedding anything new (e.g. after --check, or to
            rebuild a dropped collection without loading a model); a Milvus Lite store is removed
            and rebuilt from Parquet whatever state it is in (a damaged Lite store found by a plain
            `recap index` is rebuilt too)

Milvus Lite admits one process: while another one holds LIB/milvus.db, this waits up to
milvus.lock_wait_s, then says which process it is (searches do not need the store).
Exit status: 0 done, 1 --check found differences, 2 usage or config error, nothing to index
(no captions and no visual embedder), or the store is busy or unreachable.

Examples:
  recap index lib
  recap index lib --set embedders.visual.enabled=true --set embedders.visual.model=/models/clip-vit-b32
  recap index lib --milvus-uri http://milvus:19530 --token root:Milvus
  recap index lib --check
"""

from __future__ import annotations

import argparse
import sys
import time

from index.api import ClipIndex, SearchError
from index.embedders import EmbedderError
from index.store import StoreError
from pipeline.embed import load_index_config, run_index
from pipeline.library import LibraryError
from trainer.progress import add_no_progress_option
from trainer.typedconfig import ConfigError


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by `recap index` and `recap search`."""
    p.add_argument("library", metavar="LIB", help="library folder written by `recap ingest`")
    p.add_argument("--config", metavar="FILE", help="YAML layered over configs/index.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config key, e.g. --set milvus.server_index=IVF_FLAT (repeatable)")
    p.add_argument("--milvus-uri", metavar="URI", help="Milvus server (http://host:19530); default LIB/milvus.db")
    p.add_argument("--token", metavar="T", help="Milvus token (user:password or API key)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report how Milvus differs from Parquet; change nothing")
    mode.add_argument("--repair", action="store_true", help="make Milvus match Parquet without embedding new clips")
    add_no_progress_option(p)


def open_index(args: argparse.Namespace) -> ClipIndex:
    return ClipIndex(args.library, load_index_config(args.config, args.overrides), milvus_uri=args.milvus_uri,
                     token=args.token)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        if args.check:
            with open_index(args) as index:
                rec = index.check()
        else:
            rec = run_index(args.library, load_index_config(args.config, args.overrides), embed=not args.repair,
                            milvus_uri=args.milvus_uri, token=args.token, rebuild=args.repair)
    except (ConfigError, FileNotFoundError, StoreError, EmbedderError, SearchError, LibraryError) as e:
        print(f"recap index: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{rec.rows} clips in the library; Milvus {'matches Parquet' if rec.clean else 'differs from Parquet'}")
        labels = (("missing", rec.missing), ("extra", rec.extra), ("stale", rec.stale))
    else:
        print(f"{rec.rows} clips in the library; Milvus {'was up to date' if rec.clean else 'now matches Parquet'}")
        labels = (("added", rec.missing), ("removed", rec.extra), ("updated", rec.stale))
    for what, ids in labels:
        if ids:
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            print(f"  {what:<8} {len(ids):>7}  {shown}")
    if rec.damaged:
        print(f"  store    {rec.damaged}" if args.check else "  store    was damaged: rebuilt from Parquet")
    elif rec.schema_changed:
        print("  collection " + ("missing, or its fields differ from the library's columns" if args.check
                                 else "created (new, rebuilt, or the library's columns changed)"))
    for name, n in rec.unembedded.items():
        if n:
            print(f"  {name}: {n} clips without a vector (no caption yet, or not embedded yet)")
    print(f"took {time.perf_counter() - t0:.2f} s")
    return 1 if args.check and not rec.clean else 0

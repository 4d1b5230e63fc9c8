"""Search a library's clips by text or by example, with the one filter language.

Modes: `caption` (the text against caption embeddings), `visual` (against CLIP/SigLIP frame
embeddings, through the model's text tower), `hybrid` (both, fused by reciprocal rank), `auto`
(every kind of vector the index has). --like CLIP_ID finds clips close to that clip (any unique
prefix of its id will do, as with git commits).

--where takes the filter language shared by recap (`recap export` and `recap caption` take the same
fields): comparisons (== != < <= > >=), `in [...]`, `not in [...]`, `is null`, bool fields on their
own (`passed`, `duplicate`), and/or/not, parentheses.

On Milvus Lite, a library of up to milvus.exact_max_clips clips is searched by an exact scan of its
Parquet vectors in this process (the same hits as Lite, and no wait while `recap index` holds the
store); a Milvus server, or a larger library, through Milvus.

Examples:
  recap search lib "a dog running on a beach at sunset"
  recap search lib "traffic at night" --top-k 20 --where 'duration_s > 3 and not duplicate'
  recap search lib "slow pan over mountains" --where 'camera_motion in ["pan_left", "pan_right"]' --json
  recap search lib --like 3f2a9c0d --mode caption
"""

from __future__ import annotations

import argparse
import json
import sys

from index.api import SearchError
from index.embedders import EmbedderError
from index.store import StoreError
from index.where import WhereError
from pipeline.cli.index import add_common, open_index
from trainer.typedconfig import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("text", nargs="?", help="what to look for (omit with --like)")
    p.add_argument("--like", metavar="CLIP_ID", help="find clips similar to this clip (a unique prefix of its id will do)")
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="results to return (default 10)")
    p.add_argument("--where", metavar="EXPR", help="filter, e.g. 'duration_s > 3 and not duplicate'")
    p.add_argument("--mode", choices=["auto", "caption", "visual", "hybrid"], default="auto",
                   help="which embeddings to search (default: all the index has)")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")


def _time(s: float | None) -> str:
    return "?" if s is None else f"{int(s // 60)}:{s % 60:05.2f}"


def run(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.like is None):
        print("recap search: error: give a text query or --like CLIP_ID (not both)", file=sys.stderr)
        return 2
    if args.top_k < 1:
        print("recap search: error: --top-k must be >= 1", file=sys.stderr)
        return 2
    try:
        with open_index(args) as index:
            hits = index.search(args.text, like=args.like, top_k=args.top_k, where=args.where, mode=args.mode)
    except WhereError as e:
        print(f"recap search: error in --where: {e}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, StoreError, EmbedderError, SearchError) as e:
        print(f"recap search: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        for h in hits:
            print(json.dumps(h.to_dict()))
        return 0
    if not hits:
        print("no matching clips")
    for h in hits:
        where = f"{h.source or h.video_id} [{_time(h.start_s)}-{_time(h.end_s)}]"
        print(f"{h.rank:>3}  {h.score:6.3f}  {h.clip_id}  {where}")
        if h.caption:
            cap = " ".join(h.caption.split())
            print(f"     {cap[:150]}{'...' if len(cap) > 150 else ''}")
        if h.path:
            print(f"     {h.path}")
    return 0

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

Several queries (texts as arguments, or --queries-file FILE with one per line) are embedded and
searched together; the hits come grouped under each query (with --json, one line per query:
{"query": ..., "hits": [...]}), as they do for any --queries-file.

Examples:
  recap search lib "a dog running on a beach at sunset"
  recap search lib "a dog on a beach" "a cat indoors" --top-k 5
  recap search lib --queries-file prompts.txt --json > hits.jsonl
  recap search lib "traffic at night" --top-k 20 --where 'duration_s > 3 and not duplicate'
  recap search lib "slow pan over mountains" --where 'camera_motion in ["pan_left", "pan_right"]' --json
  recap search lib --like 3f2a9c0d --mode caption
"""

from __future__ import annotations

import argparse
import json
import sys

from index.api import Hit, SearchError
from index.embedders import EmbedderError
from index.store import StoreError
from index.where import WhereError
from pipeline.cli.display import one_line
from pipeline.cli.index import add_common, open_index
from pipeline.library import LibraryError
from trainer.typedconfig import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("text", nargs="*", help="what to look for; several texts are searched together (omit with --like)")
    p.add_argument("--queries-file", metavar="FILE",
                   help="more queries, one a line (blank lines and lines starting with # skipped; - reads stdin); "
                        "hits are then grouped by query, even for one")
    p.add_argument("--like", metavar="CLIP_ID", help="find clips similar to this clip (a unique prefix of its id will do)")
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="results to return (default 10)")
    p.add_argument("--where", metavar="EXPR", help="filter, e.g. 'duration_s > 3 and not duplicate'")
    p.add_argument("--mode", choices=["auto", "caption", "visual", "hybrid"], default="auto",
                   help="which embeddings to search (default: all the index has)")
    p.add_argument("--json", action="store_true",
                   help="print results as JSON lines: one a hit; with several queries one a query, {\"query\", \"hits\"}")


def _time(s: float | None) -> str:
    return "?" if s is None else f"{int(s // 60)}:{s % 60:05.2f}"


def read_queries(path: str) -> list[str]:
    """The queries of a --queries-file: one a line, blank lines and `#` comments skipped."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    return [q for q in (line.strip() for line in lines) if q and not q.startswith("#")]


def _error(message: str) -> int:
    print(f"recap search: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    texts = list(args.text)
    if args.queries_file is not None:
        try:
            from_file = read_queries(args.queries_file)
        except (OSError, UnicodeDecodeError) as e:
            return _error(f"cannot read --queries-file {args.queries_file}: {e}")
        if not from_file:
            return _error(f"--queries-file {args.queries_file} holds no queries "
                          "(one a line; blank lines and lines starting with # are skipped)")
        texts += from_file
    if bool(texts) == (args.like is not None):
        return _error("give a text query or --like CLIP_ID (not both)")
    if args.top_k < 1:
        return _error("--top-k must be >= 1")
    try:
        with open_index(args) as index:
            if args.like is not None:
                found = [index.search(like=args.like, top_k=args.top_k, where=args.where, mode=args.mode)]
            else:
                found = index.search_many(texts, top_k=args.top_k, where=args.where, mode=args.mode)
    except WhereError as e:
        print(f"recap search: error: --where: {e}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, StoreError, EmbedderError, SearchError, LibraryError) as e:
        return _error(str(e))
    if len(found) == 1 and args.queries_file is None:      # one query: its hits alone, as ever
        _print(found[0], args.json)
        return 0
    for i, (text, hits) in enumerate(zip(texts, found)):
        if args.json:
            print(json.dumps({"query": text, "hits": [h.to_dict() for h in hits]}))
            continue
        if i:
            print()
        print(f"query {i + 1} of {len(texts)}: {text}")
        _print(hits, False)
    return 0


def _print(hits: list[Hit], as_json: bool) -> None:
    if as_json:
        for h in hits:
            print(json.dumps(h.to_dict()))
        return
    if not hits:
        print("no matching clips")
    for h in hits:
        where = f"{one_line(h.source or h.video_id)} [{_time(h.start_s)}-{_time(h.end_s)}]"
        print(f"{h.rank:>3}  {h.score:6.3f}  {h.clip_id}  {where}")
        if h.caption:
            cap = " ".join(h.caption.split())
            print(f"     {cap[:150]}{'...' if len(cap) > 150 else ''}")
        if h.path:
            print(f"     {h.path}")

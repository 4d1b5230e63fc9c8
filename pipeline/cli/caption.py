"""Caption library clips with a vision-language model; every model and prompt is its own version.

Writes LIB/captions/part-*.parquet (one row per clip and version: text, status ok / flagged /
error with a reason, model id and revision, prompt id, generation parameters, token counts,
latency). A new model, prompt or parameter set adds a version and never overwrites one; rerunning
the same command skips clips already captioned by that version. The first version that writes
captions becomes the default (LIB/captions/default.json), which export uses; change it with
--make-default or --set-default.

Clips: those that pass the filter view (`recap filter`), or all clips when there is none (or with
--all), narrowed by --where, an expression in recap's filter language (the same one as
`recap search` and `recap export`), e.g. --where 'duration_s >= 4 and camera_motion == "static"'.

Backends:
  transformers  the model in this process or in a Ray actor pool (--model HF_ID_OR_FOLDER);
                bfloat16 on GPU (set execution.gpus_per_actor=1 to ask Ray for one per actor)
  openai        an OpenAI-compatible server such as `vllm serve` (--base-url, --model = served name)
  signals       no model: a deterministic caption from the measured signals (camera motion,
                motion, brightness, colour, on-screen text). It describes how a clip was filmed,
                not what it shows: the offline demo's stand-in where no VLM weights are available.

Importing captions a corpus came with: --from FILE.jsonl, one {"uri", "start_s", "end_s",
"caption"} per line (range optional; relative uris from FILE's folder). Each clip takes the caption
whose range covers most of it (at least half); the file is its own version (see
pipeline/caption/importer.py).

Exit status: 0 every selected clip has a caption of this version (ok or flagged), 3 some clips
could not be captioned (error rows; a rerun retries them), 2 usage or config error, missing model
weights or unreachable server (nothing written).

Examples:
  recap caption lib --backend signals
  recap caption lib --model Qwen/Qwen2.5-VL-7B-Instruct --set execution.gpus_per_actor=1 --set execution.actors=8
  recap caption lib --backend openai --model Qwen/Qwen2.5-VL-7B-Instruct --base-url http://gpu-node:8000/v1
  recap caption lib --model /models/tiny --prompt short --local --limit 10
  recap caption lib --from corpus_captions.jsonl --make-default
  recap caption lib --list
"""

from __future__ import annotations

import argparse
import sys

from captioner.model import MissingModelError
from captioner.openai_backend import AuthError, RequestError
from pipeline.caption.config import load_caption_config
from pipeline.caption.importer import import_captions
from pipeline.caption.job import run_caption
from pipeline.cli.display import one_line
from pipeline.library import CaptionStore, Library, LibraryError
from trainer.progress import add_no_progress_option
from trainer.typedconfig import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIB", help="library folder written by `recap ingest`")
    p.add_argument("--from", dest="from_file", metavar="FILE.jsonl",
                   help="import given captions (uri, start_s, end_s, caption per line) instead of captioning")
    p.add_argument("--model", help="HF id or local folder (openai backend: the served model name)")
    p.add_argument("--backend", choices=["transformers", "openai", "signals"],
                   help="default: from the config (transformers)")
    p.add_argument("--prompt", help="prompt template: dense (default), short, or a path to a .txt file")
    p.add_argument("--base-url", help="openai backend: server URL, e.g. http://localhost:8000/v1")
    p.add_argument("--allow-download", action="store_true",
                   help="fetch a hub model that is not in the local Hugging Face cache (default: offline)")
    p.add_argument("--where", metavar="EXPR", help="only clips matching this filter expression, e.g. 'duration_s > 3 and camera_motion == \"static\"' "
                        "(among the clips that pass the filter view; with --all among every clip)")
    p.add_argument("--all", action="store_true", dest="all_clips", help="ignore the filter view: consider every clip")
    p.add_argument("--limit", type=int, metavar="N", help="caption at most N clips this run")
    p.add_argument("--config", metavar="FILE", help="YAML layered over configs/captioner.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one key, e.g. --set generation.max_new_tokens=512 (repeatable)")
    p.add_argument("--local", action="store_true", help="run in this process without Ray (execution.executor=local)")
    p.add_argument("--ray-address", metavar="ADDR", help="join an existing Ray cluster (e.g. auto)")
    p.add_argument("--make-default", action="store_true", help="mark this run's version as the one export uses")
    p.add_argument("--list", action="store_true", help="list the caption versions of LIB and exit")
    p.add_argument("--set-default", metavar="VERSION", help="mark VERSION as the one export uses and exit")
    add_no_progress_option(p)
    p.add_argument("--quiet", dest="no_progress", action="store_true", help=argparse.SUPPRESS)  # --no-progress's old name


def run(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"recap caption: error: {message}", file=sys.stderr)
        return 2

    try:
        store = Library(args.library).captions
    except LibraryError as e:
        return fail(str(e))
    if args.list:
        print_versions(store)
        return 0
    if args.set_default:
        try:
            store.set_default(args.set_default)
        except KeyError as e:
            return fail(str(e.args[0]))
        print(f"default caption version: {args.set_default}")
        return 0
    if args.from_file:
        return import_from(args, store, fail)
    if args.limit is not None and args.limit < 1:
        return fail(f"--limit must be at least 1, got {args.limit}")

    overrides = list(args.overrides)
    for key, value in (("model.backend", args.backend), ("model.id", args.model), ("prompt.id", args.prompt),
                       ("openai.base_url", args.base_url), ("model.allow_download", args.allow_download or None)):
        if value is not None:
            overrides.insert(0, f"{key}={value}")
    try:
        cfg = load_caption_config(args.config, overrides)
    except ConfigError as e:
        return fail(str(e))
    if args.local:
        cfg.execution.executor = "local"
    if args.ray_address:
        cfg.execution.ray_address = args.ray_address
    if cfg.model.backend == "signals":
        print("captioning from measured signals only (no vision-language model): deterministic text about "
              "camera, motion, light, colour and on-screen text, not a description of the content")
    try:
        summary = run_caption(args.library, cfg, where=args.where, all_clips=args.all_clips, limit=args.limit,
                              progress=not args.no_progress)
    except AuthError as e:      # at the start or part-way: what was captioned before it is kept
        return fail(f"{e}\ncaptions made before it are kept; rerun once the key is fixed (they are skipped).")
    except (MissingModelError, RequestError) as e:
        return fail(f"{e}\nnothing was written.")
    except (ValueError, FileNotFoundError, LibraryError) as e:
        return fail(str(e))
    if args.make_default and summary.captioned:
        store.set_default(summary.version)
    print(f"version {summary.version}: {summary.captioned} clips captioned, {summary.skipped} already done, "
          f"{summary.selected} selected; took {summary.wall_seconds:.1f} s")
    if not summary.selected and args.where and not args.all_clips:
        print("  (--where picks among the clips that pass the filter view; --all picks among every clip)")
    if summary.captioned:
        print("  " + ", ".join(f"{k} {v}" for k, v in sorted(summary.by_status.items()))
              + (" | reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.by_reason.items()))
                 if summary.by_reason else ""))
        if summary.output_tokens:
            print(f"  {summary.output_tokens / summary.wall_seconds:.1f} output tokens/s, "
                  f"{summary.captioned / summary.wall_seconds:.2f} clips/s")
    print(f"default version: {store.default()}")
    return 3 if summary.by_status.get("error") else 0


def import_from(args: argparse.Namespace, store: CaptionStore, fail) -> int:
    try:
        summary = import_captions(args.library, args.from_file)
    except (OSError, ValueError, LibraryError) as e:
        return fail(str(e))
    if args.make_default and (summary.matched_clips or summary.already):
        store.set_default(summary.version)
    print(f"version {summary.version} (imported from {args.from_file}): {summary.matched_clips} clips captioned, "
          f"{summary.already} already done; {summary.unmatched_clips} clips without a caption, "
          f"{summary.unused_lines} of {summary.lines} lines matched no clip")
    if summary.unknown_sources:
        print(f"  {len(summary.unknown_sources)} uris not in the library, e.g. {one_line(summary.unknown_sources[0])}")
    print(f"default version: {store.default()}")
    return 0


def print_versions(store) -> None:
    default = store.default()
    versions = store.versions()
    if not versions:
        print("no caption versions yet")
    for v in versions:
        mark = "*" if v["version"] == default else " "
        counts = ", ".join(f"{k} {n}" for k, n in sorted(v["counts"].items()))
        print(f"{mark} {v['version']}  {v['backend']:<12} {v['model_id']}  prompt={v['prompt_id']}  "
              f"{counts}  last {v['last']:%Y-%m-%d %H:%M}")

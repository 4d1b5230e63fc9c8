"""Write the synthetic sample corpus: six short videos with known shots and transitions.

Mixed sizes, frame rates and codecs (H.264 MP4, VP9 WebM, MPEG-4 in Matroska) with hard cuts,
fades through black, cross-dissolves, a static shot, fast motion and in-shot flashes. DIR gets
the videos and truth.json (every transition, shot and flash as 0-based frame ranges, end
exclusive). The same seed always gives the same files and truth.

With --semantic, writes instead the semantic corpus: one-shot videos of a coloured square moving
in one direction ("a red square moving left on a dark background"; 4 colours x 4 directions,
--per-pair videos each), DIR/captions.jsonl (their captions, for `recap caption LIB --from`) and
DIR/truth.json (colour and direction of each video). It trains and checks prompt following.

examples:
  recap samples samples/
  recap samples /tmp/semantic --semantic --per-pair 4
  recap samples /tmp/corpus --seed 3
  recap samples /tmp/bench --benchmark 60     # also a 60 s 1080p H.264 file for benchmarks
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from pipeline.samples.corpus import TRUTH_FILE, write_benchmark_video, write_samples
from pipeline.samples.semantic import CAPTIONS_FILE, write_semantic_samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for every length and look (default 0)")
    parser.add_argument("--benchmark", type=float, metavar="SECONDS", default=None,
                        help="also write bench_1080p_SECONDSs.mp4: 1080p30 H.264, a cut every 2-5 s")
    parser.add_argument("--semantic", action="store_true",
                        help="write the captioned semantic corpus (coloured squares moving) instead")
    parser.add_argument("--per-pair", type=int, default=4, metavar="N",
                        help="--semantic: videos per colour x direction pair (default 4)")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.benchmark is not None and not (1 <= args.benchmark * 30 < math.inf):   # 30 fps: one frame or more
        print(f"recap samples: error: --benchmark takes a finite number of seconds, at least 1/30 "
              f"(got {args.benchmark:g})", file=sys.stderr)
        return 2
    problem = _folder_problem(args.dir)
    if problem:
        print(f"recap samples: error: {problem}", file=sys.stderr)
        return 2
    if args.semantic:
        if args.per_pair < 1:
            print("recap samples: error: --per-pair must be >= 1", file=sys.stderr)
            return 2
        truth = write_semantic_samples(args.dir, seed=args.seed, per_pair=args.per_pair)
        print(f"{len(truth['videos'])} videos ({truth['size']}x{truth['size']}, {truth['fps']} fps, "
              f"{truth['frames']} frames) in {args.dir}; captions {args.dir / CAPTIONS_FILE} "
              f"({time.perf_counter() - started:.1f} s)")
        return 0
    truth = write_samples(args.dir, seed=args.seed)
    for name, v in truth["videos"].items():
        kinds: dict[str, int] = {}
        for t in v["transitions"]:
            kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no transitions"
        print(f"{args.dir / name}  {v['width']}x{v['height']} {v['fps']} fps {v['codec']}/{v['container']} "
              f"{v['frames']} frames, {len(v['shots'])} shots: {summary}"
              + (f", {len(v['flashes'])} flash" if v["flashes"] else ""))
    print(f"{args.dir / TRUTH_FILE}  seed {args.seed} ({time.perf_counter() - started:.1f} s)")
    if args.benchmark:
        path = args.dir / f"bench_1080p_{args.benchmark:g}s.mp4"
        started = time.perf_counter()
        bench = write_benchmark_video(path, args.benchmark, seed=args.seed)
        print(f"{path}  {bench['width']}x{bench['height']} {bench['fps']} fps h264, {bench['frames']} frames, "
              f"{len(bench['cuts'])} cuts ({time.perf_counter() - started:.1f} s)")
    return 0


def _folder_problem(folder: Path) -> str | None:
    """Why the output folder cannot be made (a file in the way, no permission) or used (it holds
    something else: the corpus would overwrite files of the same names), else None. An earlier
    corpus (its truth.json) is written over."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if folder.is_dir() and not (folder / TRUTH_FILE).exists():
        held = sorted(p.name for p in folder.iterdir())
        if held:
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            return (f"{folder} is not empty ({shown}) and holds no earlier sample corpus ({TRUTH_FILE}): "
                    "give a new or empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create {folder}: {e.strerror}"
    return None

"""What the clip signals add to the single decode pass, on the ingest benchmark file.

    .venv/bin/python bench/signals.py [FILE] [--seconds 60] [--threads 2] [--rounds 2] [--mv]

Without FILE it writes the ingest benchmark video (`pipeline.samples.corpus.write_benchmark_video`,
1080p30 H.264) to bench/out/. Each round times, in this process:
  decode    `pipeline.ingest.decode.decode_pass` with no analyzer: demux, decode, shrink to 160 px
  signals   the same pass with every signal analyzer (default `SignalsConfig`: motion, exposure,
            pHash, bars, sharpness, OCR) and one 480 px detail frame per second, the analyzers
            inline on the decoding thread (ingest runs them on a background thread; the
            per-video cost of that is `bench/ingest.py`'s "+signals" case)
and prints wall and CPU seconds (min over rounds), the overhead of signals over decode, and
each analyzer's own CPU cost per frame. On a shared machine trust CPU seconds more than wall
time. The OCR models are loaded before timing (a worker loads them once, not per video).

--mv compares the motion score with the codec's own motion vectors (decoder flag
`flags2=+export_mvs`): extra CPU of each over its decode, and the Spearman rank correlation of
their per-second motion over the file (do both rank the same seconds as moving?).

--worker measures what matters for short, small videos: the CPU-seconds of a whole warm ingest
worker per video (`ingest_source`: hash, probe, decode pass with shot detection, clip files,
clips.mode=remux), with signals off ("worker") and on ("+signals"), on benchmark files of
`--seconds` at each of `--sizes` (360 -> 640x360, ...). Each code tree (this one and every
`--compare ROOT`, e.g. an unpacked `git archive HEAD`) gets one long-lived worker process (as a
Ray worker's sandbox child: imports and the OCR engine load once, then a warm-up video), and
the runs are interleaved (repeat -> file -> tree -> case) so a change in machine load hits every
case alike; CPU-seconds are user + sys of the worker process, all its threads, per video (median).

    .venv/bin/python bench/signals.py --worker --sizes 360 720 1080 --seconds 15 --repeats 7 \
        --compare /tmp/recap-before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402

from pipeline.ingest import decode as decode_mod  # noqa: E402
from pipeline.ingest.config import DecodeConfig  # noqa: E402
from pipeline.ingest.signals.analyzers import clip_signals, make_analyzers  # noqa: E402
from pipeline.ingest.signals.config import SignalsConfig  # noqa: E402
from pipeline.ingest.signals.text import load_ocr  # noqa: E402


class Timed:
    """Wraps an analyzer and adds up the CPU time of its `update` (this thread's CPU time, so
    other processes on a busy machine do not inflate it)."""

    def __init__(self, inner, totals: dict[str, float]):
        self.inner, self.totals, self.name = inner, totals, inner.name

    def update(self, frame) -> None:
        t0 = time.thread_time()
        self.inner.update(frame)
        self.totals[self.name] += time.thread_time() - t0


def run_once(path: Path, threads: int, signals: bool) -> tuple[float, float, int, dict[str, float]]:
    decode_cfg = DecodeConfig(threads=threads)
    totals: dict[str, float] = defaultdict(float)
    analyzers, detail = [], None
    if signals:
        scfg = SignalsConfig()
        with av.open(str(path)) as c:
            size = (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height)
        analyzers = [Timed(a, totals) for a in make_analyzers(scfg, size)]
        detail = (scfg.detail_every_s, scfg.detail_width)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = decode_mod.decode_pass(path, decode_cfg, analyzers, detail=detail)
    if signals:  # the per-clip summaries: one clip per 5 s here
        t0 = time.thread_time()
        inner = [a.inner for a in analyzers]
        for start in range(0, result.n_frames, 150):
            clip_signals(inner, start, min(start + 150, result.n_frames))
        totals["clip_signals (all clips)"] = time.thread_time() - t0
    return time.perf_counter() - wall0, time.process_time() - cpu0, result.n_frames, totals


def _ranks(x):
    import numpy as np

    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def motion_vector_pass(path: Path, threads: int, export: bool) -> tuple[float, list[float], float]:
    """Plain PyAV decode (no shrink); with `export`, mean |motion vector| per frame in % width/s."""
    import numpy as np

    cpu0 = time.process_time()
    per_frame, times = [], []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        if export:
            stream.codec_context.options = {"flags2": "+export_mvs"}
        fps = float(stream.average_rate or 30)
        for frame in c.decode(stream):
            times.append(float(frame.pts * frame.time_base) if frame.pts is not None else len(times) / fps)
            if not export:
                continue
            mvs = frame.side_data.get("MOTION_VECTORS")
            if mvs is None:  # intra frame: no vectors, no estimate
                per_frame.append(np.nan)
                continue
            a = mvs.to_ndarray()
            a = a[a["source"] < 0]  # vectors from a past reference
            if a.size == 0:
                per_frame.append(np.nan)
                continue
            scale = a["motion_scale"].astype(np.float32)
            mag = np.hypot(a["motion_x"] / scale, a["motion_y"] / scale)
            area = a["w"].astype(np.float32) * a["h"]
            per_frame.append(float((mag * area).sum() / area.sum()) / frame.width * fps * 100)
    return time.process_time() - cpu0, per_frame, float(fps)


def compare_motion_vectors(path: Path, threads: int) -> None:
    import numpy as np

    from pipeline.ingest.signals.config import MotionConfig
    from pipeline.ingest.signals.motion import MotionAnalyzer

    decode_cfg = DecodeConfig(threads=threads)
    cpu0 = time.process_time()
    base = decode_mod.decode_pass(path, decode_cfg, [])
    cpu_decode = time.process_time() - cpu0
    motion = MotionAnalyzer(MotionConfig())
    cpu0 = time.process_time()
    decode_mod.decode_pass(path, decode_cfg, [motion])
    cpu_flow = time.process_time() - cpu0
    cpu_plain, _, fps = motion_vector_pass(path, threads, export=False)
    cpu_mv, mv_frames, _ = motion_vector_pass(path, threads, export=True)

    window = int(round(fps))
    flow_s, mv_s = [], []
    for start in range(0, base.n_frames - window + 1, window):
        flow = motion.clip_signals(start, start + window)["motion_score"]
        chunk = np.asarray(mv_frames[start:start + window], float)
        mv = float(np.nanmean(chunk)) if np.isfinite(chunk).any() else np.nan
        if flow is not None and np.isfinite(mv):
            flow_s.append(flow)
            mv_s.append(mv)
    mcfg = MotionConfig()
    print(f"\nmotion score vs codec motion vectors on {path.name} ({base.n_frames} frames, {len(flow_s)} one-second windows)")
    print(f"  Farneback ({mcfg.flow_width} px, every {mcfg.flow_step} frames): +{cpu_flow - cpu_decode:6.2f} s CPU over decode_pass ({cpu_decode:.2f} s)")
    print(f"  codec motion vectors (export_mvs):  +{cpu_mv - cpu_plain:6.2f} s CPU over plain decode ({cpu_plain:.2f} s)")
    if len(flow_s) < 3:
        print("  the codec exported no motion vectors (FFmpeg exports them for H.264 / MPEG-2 / MPEG-4 only)")
        return
    rho = float(np.corrcoef(_ranks(np.array(flow_s)), _ranks(np.array(mv_s)))[0, 1])
    print(f"  Spearman rank correlation of per-second motion: {rho:.3f}")


class CountingOCR:
    """The OCR engine, counting detector runs and box recognitions and adding up their CPU time."""

    def __init__(self, ocr):
        self.ocr = ocr
        self.detections = self.recognitions = 0
        self.cpu = 0.0

    def __call__(self, image, use_det: bool = True, **kwargs):
        if use_det:
            self.detections += 1
        else:
            self.recognitions += 1
        t0 = time.thread_time()
        try:
            return self.ocr(image, use_det=use_det, **kwargs)
        finally:
            self.cpu += time.thread_time() - t0


def count_ocr_reads(files: list[Path]) -> None:
    """Text reading of one decode pass per file, as ingest schedules it: detector runs and box
    recognitions with the reuse (a still picture keeps its reading: text.SAME_PICTURE; a box that
    still looks as it did keeps its text: text.BOX_JITTER) and without it, and the CPU-seconds of
    OCR engine's calls (best of 3 passes)."""
    from pipeline.ingest.signals import text

    counting = CountingOCR(load_ocr())
    text.load_ocr = lambda: counting
    cfg, same, jitter = SignalsConfig(), text.SAME_PICTURE, text.BOX_JITTER
    print("| file | seconds | detector runs | box recognitions | OCR CPU s | without reuse: runs | "
          "recognitions | OCR CPU s |\n|---|---|---|---|---|---|---|---|")
    for path in files:
        row = []
        for reuse in (True, False):
            text.SAME_PICTURE, text.BOX_JITTER = (same, jitter) if reuse else (-1.0, -1)  # -1: never the same
            cpu = []
            for _ in range(3):
                counting.detections = counting.recognitions = 0
                counting.cpu = 0.0
                analyzer = text.TextAnalyzer(cfg.text)
                result = decode_mod.decode_pass(path, DecodeConfig(), [analyzer],
                                                detail=(cfg.detail_every_s, cfg.detail_width))
                analyzer.clip_signals(0, result.n_frames)  # reads the frames held after the last regular reading
                cpu.append(counting.cpu)
            row += [counting.detections, counting.recognitions, f"{min(cpu):.2f}"]
        text.SAME_PICTURE, text.BOX_JITTER = same, jitter
        print(f"| {path.name} | {result.duration_s:.0f} | " + " | ".join(map(str, row)) + " |", flush=True)


# One long-lived worker per code tree: reads "FILE<TAB>OVERRIDES-JSON" lines, ingests FILE into a
# fresh library and answers with this process's CPU-seconds (all threads) and wall time for it.
SERVE_SNIPPET = """
import json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from pipeline.ingest.config import load_ingest_config
from pipeline.ingest.worker import ingest_source
from pipeline.ingest.signals.text import load_ocr
load_ocr()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    path, overrides = line.rstrip("\\n").split("\\t")
    cfg = load_ingest_config(None, json.loads(overrides))
    with tempfile.TemporaryDirectory() as lib:
        c0, w0 = time.process_time(), time.perf_counter()
        r = ingest_source(path, cfg, lib)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert r.outcome == "ingested", r.rows
    keep = ("start_frame", "end_frame", "motion_score", "camera_motion", "camera_shake", "colorfulness",
            "brightness", "sharpness", "text_area", "ocr_text", "phash", "bars")
    clips = [{k: c.get(k) for k in keep} for c in r.rows["clips"]]
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "clips": clips}), flush=True)
"""


class TreeWorker:
    """A warm ingest worker process running the code of one source tree."""

    def __init__(self, root: Path):
        self.root = root
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE_SNIPPET, str(root)], cwd=str(root),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(root)))
        assert json.loads(self.proc.stdout.readline())["ready"]

    def ingest(self, path: Path, overrides: list[str]) -> dict:
        self.proc.stdin.write(f"{path}\t{json.dumps(overrides)}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {self.root} died on {path}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def benchmark_file(height: int, seconds: float) -> Path:
    """The ingest benchmark video (hard cuts every 2-5 s, moving texture) at 16:9 `height`p."""
    from pipeline.samples.corpus import write_benchmark_video

    width = int(round(height * 16 / 9 / 2)) * 2
    path = ROOT / "bench" / "out" / f"bench_{height}p_{seconds:g}s.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} ...", flush=True)
        partial = path.with_name(f".{path.stem}.partial.mp4")
        write_benchmark_video(partial, seconds, width=width, height=height)
        partial.rename(path)
    return path


def worker_benchmark(sizes: list[int], seconds: float, threads: int, repeats: int, compare: list[Path],
                     extra: list[Path], variant: list[str]) -> None:
    files = list(dict.fromkeys([benchmark_file(h, seconds) for h in sizes] + [f.absolute() for f in extra]))
    base = [f"decode.threads={threads}", "clips.mode=remux"]
    cases = {"worker": [*base, "signals.enabled=false"], "+signals": base}
    if variant:  # a third case: signals with these overrides too (e.g. signals.text.stretch=false)
        cases["+signals " + " ".join(variant)] = [*base, *variant]
    trees = {"this tree": ROOT, **{str(c): c for c in compare}}
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    workers = {name: TreeWorker(root) for name, root in trees.items()}
    cpu: dict[tuple[Path, str, str], list[float]] = defaultdict(list)
    values: dict[tuple[Path, str], list[dict]] = {}   # (file, tree) -> the clips' signal values
    try:
        def tree_cases(tree: str) -> dict[str, list[str]]:  # the variant's keys may be new: this tree only
            return cases if tree == "this tree" else {k: cases[k] for k in ("worker", "+signals")}

        for f in files:  # warm-up: first-use costs (code paths, allocator) stay out of the numbers
            for tree, w in workers.items():
                for overrides in tree_cases(tree).values():
                    w.ingest(f, overrides)
        for r in range(repeats):
            for f in files:
                for tree, w in workers.items():
                    for case, overrides in tree_cases(tree).items():
                        result = w.ingest(f, overrides)
                        cpu[(f, tree, case)].append(result["cpu_s"])
                        if case == "+signals":
                            values[(f, tree)] = result["clips"]
            print(f"  repeat {r + 1}/{repeats} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for w in workers.values():
            w.close()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"\nCPU-seconds per video in a warm worker, median of {repeats} interleaved runs, "
          f"{threads} decoder thread(s), {seconds:g} s files")
    print("(the minimum over runs is the least disturbed by other processes on a shared machine)")
    print("| file | code | case | worker, CPU-s | with signals, CPU-s | signals add | signals add, minima |")
    print("|---|---|---|---|---|---|---|")
    for f in files:
        for tree in trees:
            runs = cpu[(f, tree, "worker")]
            w, w_min = statistics.median(runs), min(runs)
            for case in list(tree_cases(tree))[1:]:
                s, s_min = statistics.median(cpu[(f, tree, case)]), min(cpu[(f, tree, case)])
                print(f"| {_label(f, files)} | {tree} | {case} | {w:.3f} | {s:.3f} | **{100 * (s / w - 1):+.0f}%** "
                      f"| {100 * (s_min / w_min - 1):+.0f}% |")
    for tree in list(trees)[1:]:
        compare_values(files, values, "this tree", tree)


def _label(f: Path, files: list[Path]) -> str:
    """A file's name in the tables; its path where two files share a name."""
    return f.name if sum(g.name == f.name for g in files) == 1 else str(f)


NUMERIC = ("motion_score", "camera_shake", "colorfulness", "brightness", "sharpness", "text_area")
CATEGORICAL = ("camera_motion", "ocr_text", "phash", "bars")


def compare_values(files: list[Path], values: dict[tuple[Path, str], list[dict]], new: str, old: str) -> None:
    """How the clips' signal values of `new` differ from `old`'s on the same clips, per file:
    Spearman rank correlation of each numeric column (1.000 = same order), share of equal values."""
    import numpy as np

    print(f"\nsignal values on the same clips, {new} against {old}: Spearman rho (numeric) or same/all")
    print("| file | clips | " + " | ".join(NUMERIC + CATEGORICAL) + " |")
    print("|---|---|" + "---|" * (len(NUMERIC) + len(CATEGORICAL)))
    for f in files:
        a, b = values[(f, old)], values[(f, new)]
        if [(c["start_frame"], c["end_frame"]) for c in a] != [(c["start_frame"], c["end_frame"]) for c in b]:
            print(f"| {_label(f, files)} | clips differ: not comparable |")
            continue
        cells = []
        for col in NUMERIC:
            pairs = [(x[col], y[col]) for x, y in zip(a, b) if x[col] is not None and y[col] is not None]
            x, y = (np.array(v, float) for v in zip(*pairs)) if pairs else (np.array([]), np.array([]))
            if len(x) and np.allclose(x, y, rtol=1e-6, atol=1e-9):
                cells.append("same")
            elif len(x) >= 3 and np.std(x) > 0 and np.std(y) > 0:
                cells.append(f"{np.corrcoef(_ranks(x), _ranks(y))[0, 1]:.3f}")
            else:
                cells.append("n/a")
        for col in CATEGORICAL:
            cells.append(f"{sum(x[col] == y[col] for x, y in zip(a, b))}/{len(a)}")
        print(f"| {_label(f, files)} | {len(a)} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", type=Path)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--mv", action="store_true", help="only compare Farneback with codec motion vectors")
    p.add_argument("--worker", action="store_true", help="CPU-seconds per video of a warm ingest worker, "
                   "signals off and on, at each of --sizes")
    p.add_argument("--sizes", type=int, nargs="+", default=[360, 720, 1080], help="--worker: frame heights")
    p.add_argument("--repeats", type=int, default=7, help="--worker: interleaved runs per case")
    p.add_argument("--compare", type=Path, nargs="*", default=[], metavar="ROOT",
                   help="--worker: also measure the code tree at ROOT (e.g. an unpacked `git archive HEAD`) "
                   "and compare its clips' signal values with this tree's")
    p.add_argument("--files", type=Path, nargs="*", default=[], metavar="VIDEO",
                   help="--worker: more videos to measure beside the benchmark files (e.g. ones with text)")
    p.add_argument("--variant", nargs="*", default=[], metavar="KEY=VALUE",
                   help="--worker: a third case, signals with these config overrides too")
    p.add_argument("--ocr-reads", action="store_true",
                   help="count text detector runs and box recognitions per file in --files, with and "
                        "without reusing what an earlier reading read")
    args = p.parse_args()
    if args.ocr_reads:
        count_ocr_reads(args.files)
        return
    if args.worker:
        worker_benchmark(args.sizes, args.seconds, args.threads, args.repeats, args.compare, args.files,
                         args.variant)
        return
    path = args.file
    if path is None:
        from pipeline.samples.corpus import write_benchmark_video

        path = ROOT / "bench" / "out" / f"bench_1080p_{int(args.seconds)}s.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            print(f"writing {path} ...", flush=True)
            write_benchmark_video(path, args.seconds)
    if args.mv:
        compare_motion_vectors(path, args.threads)
        return
    load_ocr()  # models load once per worker process, not per video: keep that out of the timing
    best: dict[str, tuple[float, float]] = {}
    breakdown: dict[str, float] = {}
    n = 0
    for r in range(args.rounds):
        for mode in ("decode", "signals"):
            wall, cpu, n, totals = run_once(path, args.threads, mode == "signals")
            print(f"round {r + 1} {mode:<8} wall {wall:6.2f} s  cpu {cpu:6.2f} s", flush=True)
            old = best.get(mode)
            best[mode] = (min(wall, old[0]), min(cpu, old[1])) if old else (wall, cpu)
            if totals:
                breakdown = totals if not breakdown else {k: min(v, breakdown.get(k, v)) for k, v in totals.items()}
    (dw, dc), (sw, sc) = best["decode"], best["signals"]
    print(f"\n{path.name}: {n} frames, {args.threads} decoder threads, min over {args.rounds} rounds")
    print(f"  decode pass        wall {dw:6.2f} s  cpu {dc:6.2f} s  ({1000 * dw / n:.2f} ms/frame wall)")
    print(f"  + all signals      wall {sw:6.2f} s  cpu {sc:6.2f} s  ({1000 * sw / n:.2f} ms/frame wall)")
    print(f"  overhead           wall {100 * (sw / dw - 1):+.1f}%   cpu {100 * (sc / dc - 1):+.1f}%")
    print("  per analyzer (ms per video frame, summed update time / frames):")
    for name, s in sorted(breakdown.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<32} {1000 * s / n:6.3f}   ({s:.2f} s total)")


if __name__ == "__main__":
    main()

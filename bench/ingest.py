"""Ingest speed and memory against ffmpeg decode-only and PySceneDetect's CLI, on the same file.

    .venv/bin/python bench/ingest.py --seconds 60 120 --threads 2

For each length it generates (once, cached in bench/out/) a 1080p H.264 file, then times:
  ffmpeg      `ffmpeg -threads N -i FILE -f null -`            (decode only: the floor)
  ffmpeg-nolf the same with `-skip_loop_filter all`, the decode mode ingest's analysis uses
              (decode.skip_loop_filter, on by default): shows how much of the margin that buys
  worker      recap's per-video work in a fresh process: hash, probe, decode + shot detection,
              clip planning and remux (what each Ray task does), clip signals off (issue 2's scope)
  +signals    the same with every clip signal measured in the same decode pass (issue 3)
  cli-warm    `recap ingest FILE --out LIB --ray-address ADDR` against an already running Ray
              (signals on, filter view refreshed at the end: the default job)
  cli-cold    `recap ingest FILE --out LIB`, starting a local Ray itself
  scenedetect `scenedetect -i FILE detect-adaptive` (PySceneDetect's CLI, OpenCV decode)
and prints wall-time ratios to ffmpeg (for the worker cases also the video's own time, without
the per-process imports and model loads a Ray worker pays once) and peak RSS (largest single process, and the sum over
the whole process tree for the CLI runs, Ray's daemons included).

    .venv/bin/python bench/ingest.py --corpus --repeats 3

Corpus mode: many short web-like files (24 by default: half 640x360, half 1280x720, 10-20 s, cuts
every 2-5 s; made once, cached in bench/out/corpus/), the way users feel ingest. Interleaved:
  ffmpeg       decode-only of every file, `-threads 1`, two files at a time (the floor on 2 cores)
  recap        `recap ingest CORPUS --out LIB` with the default config (signals on, filter view)
  recap-ray    the same with `--set execution.executor=ray` (a local Ray started by the job)
  recap -text  the same without text signals (`signals.text.enabled=false`): what OCR costs the run
  360p/720p +/- signals   `recap ingest` of one resolution's half, signals on and off: their share
               (and "-text": every signal but text)
  fixed        `recap ingest` of one 3 s 360p file, minus its own ffmpeg decode: the cost of a run
Wall time, CPU seconds of the whole process tree (every descendant, Ray's daemons included) and
the process tree's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall time; CPU seconds of the whole process tree: the larger of what the kernel accounts
    for the descendants that were reaped (our sandbox children are; Ray's workers are reaped by
    the raylet and may be killed instead) and the sum of every process's own CPU as last sampled;
    peak RSS of the largest process and of the whole process tree (sampled)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak_one = peak_tree = 0
    cpu_seen: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_one, peak_tree
        while not done.is_set():
            try:
                procs = [proc, *proc.children(recursive=True)]
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                        times = p.cpu_times()
                        cpu_seen[p.pid] = times.user + times.system
                    except psutil.Error:
                        pass
                peak_one, peak_tree = max(peak_one, max(rss, default=0)), max(peak_tree, sum(rss))
            except psutil.Error:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    if proc.returncode not in (0,):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), sum(cpu_seen.values()))
    result = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_one / 2**20, "peak_tree_rss_mb": peak_tree / 2**20}
    last = out.decode().strip().splitlines()[-1:] or [""]
    if last[0].startswith("{"):
        result.update(json.loads(last[0]))  # the worker snippet's own split: setup vs the video
    return result


def bench_file(seconds: int) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bench_1080p_{seconds}s.mp4"
    if not path.exists():
        from pipeline.samples.corpus import write_benchmark_video

        print(f"generating {path} ...", file=sys.stderr)
        partial = path.with_name(f".{path.stem}.partial.mp4")
        write_benchmark_video(partial, seconds=seconds)
        partial.rename(path)
    return path


# One video in a fresh process. Imports and model loads (the OCR engine) happen once per Ray
# worker process, not once per video, so the snippet reports them apart from the video's own time.
WORKER_SNIPPET = """
import json, sys, time, tempfile
t0 = time.perf_counter()
from pipeline.ingest.config import load_ingest_config
from pipeline.ingest.worker import ingest_source
import pipeline.ingest.decode, pipeline.ingest.shots, pipeline.ingest.clipfiles, pipeline.ingest.probe, pipeline.ingest.sources, pipeline.ingest.signals
cfg = load_ingest_config(None, sys.argv[2:])
if cfg.signals.enabled and cfg.signals.text.enabled:
    from pipeline.ingest.signals.text import load_ocr
    load_ocr()
setup = time.perf_counter() - t0
with tempfile.TemporaryDirectory() as lib:
    t1 = time.perf_counter()
    r = ingest_source(sys.argv[1], cfg, lib)
    video = time.perf_counter() - t1
    assert r.outcome == "ingested", r.rows
print(json.dumps({"setup_s": setup, "video_s": video}))
"""


def run(seconds_list: list[int], threads: int, repeats: int, only: list[str] | None = None) -> list[dict]:
    results = []
    overrides = [f"decode.threads={threads}", f"execution.cpus_per_task={threads}", "clips.mode=remux"]
    set_args = [a for o in overrides for a in ("--set", o)]
    ray_tmp = tempfile.mkdtemp(prefix="rb-")
    # the warm cluster uses token auth: the nodes and the driver share one token
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    warm_ray = not only or "cli-warm" in only  # an idle Ray head costs CPU: start it only when used
    if warm_ray:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--num-cpus={threads}", "--include-dashboard=false",
                        "--port=6391", f"--temp-dir={ray_tmp}", "--disable-usage-stats"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for seconds in seconds_list:
            f = bench_file(seconds)
            cases = {
                "ffmpeg": lambda: ["ffmpeg", "-v", "error", "-threads", str(threads), "-i", str(f), "-f", "null", "-"],
                "ffmpeg-nolf": lambda: ["ffmpeg", "-v", "error", "-threads", str(threads), "-skip_loop_filter", "all",
                                        "-i", str(f), "-f", "null", "-"],
                "worker": lambda: [sys.executable, "-c", WORKER_SNIPPET, str(f), *overrides, "signals.enabled=false"],
                "+signals": lambda: [sys.executable, "-c", WORKER_SNIPPET, str(f), *overrides],
                "cli-warm": lambda: [str(BIN / "recap"), "ingest", str(f), "--out", tempfile.mkdtemp(dir=OUT),
                                     "--no-progress", "--ray-address", "127.0.0.1:6391", *set_args],
                "cli-cold": lambda: [str(BIN / "recap"), "ingest", str(f), "--out", tempfile.mkdtemp(dir=OUT),
                                     "--no-progress", *set_args],
                "scenedetect": lambda: [str(BIN / "scenedetect"), "-q", "-i", str(f), "detect-adaptive"],
            }
            if only:
                cases = {name: make for name, make in cases.items() if name in {"ffmpeg", *only}}
            row: dict = {"seconds": seconds, "file": f.name, "threads": threads}
            runs: dict[str, list[dict]] = {name: [] for name in cases}
            for _ in range(repeats):  # interleaved, so a change in machine load hits every case alike
                for name, make in cases.items():
                    runs[name].append(measure(make(), env))
            for name, rs in runs.items():
                row[name] = sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2]  # the median run
            for name in cases:
                row[name]["ratio_to_ffmpeg"] = row[name]["wall_s"] / row["ffmpeg"]["wall_s"]
            results.append(row)
            _print_row(row)
    finally:
        if warm_ray:
            subprocess.run([str(BIN / "ray"), "stop", "--force"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for d in OUT.glob("tmp*"):
            shutil.rmtree(d, ignore_errors=True)
    return results


def _print_row(row: dict) -> None:
    print(f"\n1080p H.264, {row['seconds']} s, {row['threads']} threads ({row['file']})")
    print(f"  {'case':<12} {'wall s':>8} {'x ffmpeg':>9} {'video s':>8} {'x ffmpeg':>9} {'setup s':>8} "
          f"{'peak RSS MB':>12} {'tree RSS MB':>12}")
    ff = row["ffmpeg"]["wall_s"]
    for name in ("ffmpeg", "ffmpeg-nolf", "worker", "+signals", "cli-warm", "cli-cold", "scenedetect"):
        if name not in row:
            continue
        r = row[name]
        video = (f"{r['video_s']:8.2f} {r['video_s'] / ff:9.2f} {r['setup_s']:8.2f}" if "video_s" in r
                 else f"{'':8} {'':9} {'':8}")
        print(f"  {name:<12} {r['wall_s']:8.2f} {r['ratio_to_ffmpeg']:9.2f} {video} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_tree_rss_mb']:12.0f}")
    if "worker" not in row or "+signals" not in row:
        return
    w, s = row["worker"], row["+signals"]
    print(f"  signals add {100 * (s['video_s'] / w['video_s'] - 1):.1f}% per video in a warm worker "
          f"({100 * (s['wall_s'] / w['wall_s'] - 1):.1f}% for a cold process, OCR engine load included)")


# ---- corpus mode ----------------------------------------------------------------------------------
CORPUS_SIZES = {"360p": (640, 360), "720p": (1280, 720)}


def corpus(files: int, seed: int = 0) -> dict[str, Path]:
    """Folders of short benchmark videos per resolution (files / 2 each, 10-20 s), made once."""
    import random

    from pipeline.samples.corpus import write_benchmark_video

    rng = random.Random(seed)
    root = OUT / f"corpus_{files}_{seed}"
    folders = {}
    for i, (name, (w, h)) in enumerate(CORPUS_SIZES.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(files // len(CORPUS_SIZES)):
            seconds = rng.uniform(10, 20)
            path = folder / f"v{k:02d}.mp4"
            if not path.exists():
                print(f"generating {path} ({seconds:.1f} s) ...", file=sys.stderr)
                partial = path.with_name(f".{path.stem}.partial.mp4")
                write_benchmark_video(partial, seconds=seconds, width=w, height=h, seed=seed * 1000 + i * 100 + k)
                partial.rename(path)
        folders[name] = folder
    tiny = root / "tiny" / "three_seconds.mp4"
    if not tiny.exists():
        tiny.parent.mkdir(parents=True, exist_ok=True)
        write_benchmark_video(tiny, seconds=3, width=640, height=360, seed=seed)
    folders["tiny"] = tiny.parent
    return folders


def ffmpeg_all(paths: list[Path], at_once: int = 2) -> dict[str, float]:
    """Decode-only of every file with ffmpeg, `at_once` processes at a time, one thread each."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    todo, running = list(paths), []
    while todo or running:
        while todo and len(running) < at_once:
            running.append(subprocess.Popen(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(todo.pop()),
                                             "-f", "null", "-"]))
        running[0].wait()
        running = [p for p in running if p.poll() is None]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - t0,
            "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


def run_corpus(files: int, repeats: int, only: list[str] | None = None) -> dict:
    folders = corpus(files)
    videos = sorted(p for name in CORPUS_SIZES for p in folders[name].glob("*.mp4"))
    whole = folders["360p"].parent / "all"
    whole.mkdir(exist_ok=True)
    for p in videos:     # one folder holding every file, as a user's corpus would
        link = whole / f"{p.parent.name}_{p.name}"
        if not link.exists():
            link.symlink_to(p)

    def ingest(source: Path, *sets: str) -> list[str]:
        args = [a for s in sets for a in ("--set", s)]
        return [str(BIN / "recap"), "ingest", str(source), "--out", tempfile.mkdtemp(dir=OUT), "--no-progress", *args]

    def failure(cmd: list[str]) -> str:
        """What the library of a failed run says about its sources."""
        import pyarrow.parquet as pq

        lib = Path(cmd[cmd.index("--out") + 1])
        rows = [r for f in sorted((lib / "errors").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        return "\n".join(f"{r.get('uri')}: {r.get('error_type')}: {r.get('message')}" for r in rows[:5])

    def measure_ok(cmd: list[str]) -> dict[str, float]:
        try:
            return measure(cmd)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{failure(cmd)}") from None

    cases = {
        "ffmpeg": lambda: ffmpeg_all(videos),
        "recap": lambda: measure_ok(ingest(whole)),
        "recap-ray": lambda: measure_ok(ingest(whole, "execution.executor=ray")),
        "recap -text": lambda: measure_ok(ingest(whole, "signals.text.enabled=false")),
        "360p +signals": lambda: measure_ok(ingest(folders["360p"])),
        "360p -signals": lambda: measure_ok(ingest(folders["360p"], "signals.enabled=false")),
        "360p -text": lambda: measure_ok(ingest(folders["360p"], "signals.text.enabled=false")),
        "720p +signals": lambda: measure_ok(ingest(folders["720p"])),
        "720p -signals": lambda: measure_ok(ingest(folders["720p"], "signals.enabled=false")),
        "720p -text": lambda: measure_ok(ingest(folders["720p"], "signals.text.enabled=false")),
        "fixed": lambda: measure_ok(ingest(folders["tiny"])),
        "fixed-ffmpeg": lambda: ffmpeg_all(list(folders["tiny"].glob("*.mp4")), 1),
    }
    if only:
        unknown = set(only) - set(cases)
        if unknown:
            raise SystemExit(f"unknown case(s) {sorted(unknown)}; corpus cases: {', '.join(cases)}")
        cases = {name: make for name, make in cases.items() if name in {"ffmpeg", *only}}
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    try:
        for r in range(repeats):  # interleaved: a change in machine load hits every case alike
            for name, case in cases.items():
                runs[name].append(case())
                print(f"  run {r + 1} {name}: {runs[name][-1]['wall_s']:.2f} s", file=sys.stderr)
    finally:
        for d in OUT.glob("tmp*"):
            shutil.rmtree(d, ignore_errors=True)
    median = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    video_s = sum(float(json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(p)],
        capture_output=True, text=True, check=True).stdout)["format"]["duration"]) for p in videos)
    result = {"files": len(videos), "video_seconds": video_s, "repeats": repeats, "load": os.getloadavg(),
              "median": median, "runs": runs}
    _print_corpus(result)
    return result


def _print_corpus(result: dict) -> None:
    m = result["median"]
    ff = m["ffmpeg"]
    print(f"\ncorpus: {result['files']} files, {result['video_seconds']:.0f} s of video, medians of "
          f"{result['repeats']} interleaved runs (load at the end {result['load'][0]:.1f})")
    print(f"  {'case':<15} {'wall s':>8} {'x ffmpeg':>9} {'CPU s':>8} {'x ffmpeg':>9} {'tree peak MB':>13}")
    for name in ("ffmpeg", "recap", "recap-ray", "recap -text"):
        if name not in m:
            continue
        r = m[name]
        peak = f"{r['peak_tree_rss_mb']:13.0f}" if "peak_tree_rss_mb" in r else f"{'':13}"
        print(f"  {name:<15} {r['wall_s']:8.2f} {r['wall_s'] / ff['wall_s']:9.2f} {r['cpu_s']:8.2f} "
              f"{r['cpu_s'] / ff['cpu_s']:9.2f} {peak}")
    for res in CORPUS_SIZES:
        if not {f"{res} +signals", f"{res} -signals", f"{res} -text"} <= m.keys():
            continue
        on, off = m[f"{res} +signals"], m[f"{res} -signals"]
        print(f"  {res}: signals add {100 * (on['cpu_s'] / off['cpu_s'] - 1):.0f}% CPU "
              f"({off['cpu_s']:.2f} -> {on['cpu_s']:.2f} CPU-s for the run, {off['wall_s']:.2f} -> {on['wall_s']:.2f} s wall); "
              f"without text {100 * (m[f'{res} -text']['cpu_s'] / off['cpu_s'] - 1):.0f}%")
    if {"fixed", "fixed-ffmpeg"} <= m.keys():
        fixed = m["fixed"]["wall_s"] - m["fixed-ffmpeg"]["wall_s"]
        print(f"  fixed cost of a run: {fixed:.2f} s wall ({m['fixed']['cpu_s']:.2f} CPU-s, one 3 s file; "
              f"peak tree {m['fixed']['peak_tree_rss_mb']:.0f} MB)")
    if {"recap", "recap-ray"} <= m.keys():
        print(f"  with Ray: recap-ray - recap = {m['recap-ray']['wall_s'] - m['recap']['wall_s']:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="store_true", help="corpus mode (see above) instead of single long files")
    ap.add_argument("--files", type=int, default=24, help="corpus mode: number of files")
    ap.add_argument("--seconds", type=int, nargs="+", default=[60, 120])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="+", metavar="CASE", help="only these cases (ffmpeg always runs: it is the "
                    "baseline), e.g. --cases worker +signals")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.corpus:
        (OUT / "ingest_corpus.json").write_text(json.dumps(run_corpus(args.files, args.repeats, args.cases), indent=2))
        return
    results = run(args.seconds, args.threads, args.repeats, args.cases)
    (OUT / "ingest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

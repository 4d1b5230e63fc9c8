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
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
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
    """Wall time, peak RSS of the largest process and of the whole process tree (sampled)."""
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak_one = peak_tree = 0
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
    result = {"wall_s": wall, "peak_rss_mb": peak_one / 2**20, "peak_tree_rss_mb": peak_tree / 2**20}
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, nargs="+", default=[60, 120])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="+", metavar="CASE", help="only these cases (ffmpeg always runs: it is the "
                    "baseline), e.g. --cases worker +signals")
    args = ap.parse_args()
    results = run(args.seconds, args.threads, args.repeats, args.cases)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ingest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

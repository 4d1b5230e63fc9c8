"""Decode pass + shot detection vs `ffmpeg -threads N -i FILE -f null -` on the same file.

    .venv/bin/python bench/decode_speed.py [FILE] [--threads 2] [--rounds 3] [--seconds 60]

Without FILE, writes a 1080p H.264 benchmark video (`pipeline.samples.corpus.write_benchmark_video`)
to a temp folder. Each round runs ffmpeg, then `recap`'s decode pass with the shot analyzer
attached and `detect_shots`, each in a fresh process; prints wall and CPU seconds (min over
rounds) and the ratios. On a shared machine trust the CPU ratio more than the wall one.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OURS = """
import sys
sys.path.insert(0, {root!r})
from pipeline.ingest.config import load_ingest_config
from pipeline.ingest.decode import decode_pass
from pipeline.ingest.shots import ShotDetector, detect_shots
cfg = load_ingest_config(overrides=["decode.threads={threads}"])
features = ShotDetector(cfg.shots)
result = decode_pass({path!r}, cfg.decode, [features])
shots = detect_shots(features, cfg.shots)
print(result.n_frames, len(shots.shots), len(shots.hard_cuts))
"""


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the generated video")
    args = ap.parse_args(argv)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("ffmpeg CLI not found", file=sys.stderr)
        return 2
    tmp = None
    path = args.file
    if path is None:
        sys.path.insert(0, str(ROOT))
        from pipeline.samples.corpus import write_benchmark_video
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "bench1080.mp4"
        print(f"writing {args.seconds:.0f} s 1080p benchmark video ...", flush=True)
        write_benchmark_video(path, args.seconds)
    ff_cmd = [ffmpeg, "-v", "error", "-threads", str(args.threads), "-i", str(path), "-f", "null", "-"]
    ours_cmd = [sys.executable, "-c", OURS.format(root=str(ROOT), threads=args.threads, path=str(path))]
    ff, us = [], []
    for r in range(args.rounds):
        ff.append(timed(ff_cmd)[:2])
        wall, cpu, out = timed(ours_cmd)
        us.append((wall, cpu))
        print(f"round {r + 1}: ffmpeg {ff[-1][0]:.2f} s wall {ff[-1][1]:.2f} s cpu | "
              f"decode+shots {wall:.2f} s wall {cpu:.2f} s cpu (frames, shots, cuts: {out})", flush=True)
    ff_wall, ff_cpu = min(w for w, _ in ff), min(c for _, c in ff)
    us_wall, us_cpu = min(w for w, _ in us), min(c for _, c in us)
    print(f"\n{path} threads={args.threads}")
    print(f"ffmpeg decode-only : {ff_wall:6.2f} s wall  {ff_cpu:6.2f} s cpu   ({' '.join(ff_cmd[:1] + ff_cmd[3:])})")
    print(f"decode pass + shots: {us_wall:6.2f} s wall  {us_cpu:6.2f} s cpu")
    print(f"ratio              : {us_wall / ff_wall:6.2f} x wall  {us_cpu / ff_cpu:6.2f} x cpu   (target <= 1.3 for the whole ingest)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

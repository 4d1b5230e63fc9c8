"""NVDEC against the CPU decoders in ingest's decode pass (issue 18 item 3), on a GPU machine.

    python3 bench/nvdec.py FILE [FILE ...] [--repeats 3]

For each file, interleaved `--repeats` times: `decode_pass` with shot detection (what ingest
runs on every frame), once with `decode.device: cpu` (FFmpeg's software decoder on all cores,
loop filter skipped as ingest does) and once with `decode.device: cuda` (NVDEC, frames copied back
to host memory). Prints the median wall and CPU seconds of each, where the frames were really
decoded (a build or machine without NVDEC falls back to the CPU and says so), whether the hard
cuts found are the same, and the largest mean luma difference of an analysis frame between the
two (NVDEC does not skip the loop filter, so pictures agree closely, not bit for bit). A third
column times NVDEC with one decoder thread: ingest gives a 1080p file one frame thread per CPU, and
on an H100 (16 cores) the NVDEC pass took 6x the CPU decoders' wall and twice their CPU time; FFmpeg's
frame threads around a hardware decoder are the first suspect (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ingest.config import DecodeConfig, ShotsConfig  # noqa: E402
from pipeline.ingest.decode import decode_pass  # noqa: E402
from pipeline.ingest.shots import ShotDetector  # noqa: E402


class LumaKeeper:
    """Keeps every analysis frame's luma, to compare the two decoders' pictures."""

    name = "luma"

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def update(self, frame) -> None:
        self.frames.append(frame.luma.copy())


def one_pass(path: Path, cfg: DecodeConfig) -> tuple[float, float, str, list[int], list[np.ndarray]]:
    """(wall s, CPU s, device used, hard cuts, analysis lumas) of one decode pass."""
    shots, keeper = ShotDetector(ShotsConfig()), LumaKeeper()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = decode_pass(path, cfg, [shots, keeper])
    cuts = shots.finish(result).hard_cuts
    return time.perf_counter() - wall0, time.process_time() - cpu0, result.device, cuts, keeper.frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cpu_cfg = DecodeConfig()
    cuda_cfg = dataclasses.replace(cpu_cfg, device="cuda")
    cuda_one = dataclasses.replace(cuda_cfg, threads=1)
    print("| file | frames | CPU decode wall s | CPU s | NVDEC wall s | CPU s | NVDEC, 1 thread: wall s | CPU s | "
          "decoded on | same cuts | max mean luma diff |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.files:
        one_pass(path, cpu_cfg), one_pass(path, cuda_cfg)   # warm-up: caches, CUDA context
        runs: dict[str, list[tuple[float, float]]] = {"cpu": [], "cuda": [], "cuda1": []}
        for _ in range(args.repeats):
            c_wall, c_cpu, _, c_cuts, c_frames = one_pass(path, cpu_cfg)
            g_wall, g_cpu, device, g_cuts, g_frames = one_pass(path, cuda_cfg)
            runs["cpu"].append((c_wall, c_cpu))
            runs["cuda"].append((g_wall, g_cpu))
            runs["cuda1"].append(one_pass(path, cuda_one)[:2])
        diff = max((float(np.abs(a.astype(np.int16) - b).mean()) for a, b in zip(c_frames, g_frames)), default=0.0)
        med = {k: [statistics.median(x[i] for x in v) for i in (0, 1)] for k, v in runs.items()}
        print(f"| {path.name} | {len(c_frames)} | {med['cpu'][0]:.2f} | {med['cpu'][1]:.2f} | {med['cuda'][0]:.2f} | "
              f"{med['cuda'][1]:.2f} | {med['cuda1'][0]:.2f} | {med['cuda1'][1]:.2f} | {device} | {c_cuts == g_cuts and len(c_frames) == len(g_frames)} | "
              f"{diff:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Shard loader throughput: samples/s it delivers and samples per CPU-second, against the loader as
it was before decode workers and against a decode-only floor.

    .venv/bin/python bench/loader.py                        # 256x256x33, batch 16, workers 1 and the CPU count
    .venv/bin/python bench/loader.py --workers 1 2 3 --batches 8 --rounds 5 --json out.json

Rows, measured in interleaved rounds (one of each per round; medians reported) on synthetic
shards written by trainer/synthetic.py (soft blobs over gradients: a low bitrate, so decoding is
cheaper than on real footage and the RGB conversion and copies weigh more; --grain re-encodes them
with noise, for a bitrate nearer real footage's):
  old           the loader before decode workers: per sample `decode_mp4` as it was (frame-threaded
                decoder, swscale with a thread per core, a list of frames), np.stack per sample and
                per batch, one batch after the other in one thread
  workers=N     `BucketLoader(decode_workers=N)`: N threads decode a batch's clips side by side,
                each frame converted to RGB once, straight into the batch's array
  pyav yuv      PyAV decoding every clip to YUV frames in one thread, nothing else (what the
                loader's decoding alone costs)
  ffmpeg        `ffmpeg -threads 1 -f concat -i <every clip> -f null -`: the decode-only reference
CPU seconds are user+sys of this process's threads (getrusage) or of the ffmpeg child.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.shards import (  # noqa: E402
    Bucket,
    BucketLoader,
    ShardWriter,
    SkipCounter,
    decode_mp4,
    encode_mp4,
    iter_raw_samples,
    list_shards,
)
from trainer.synthetic import write_synthetic_shards  # noqa: E402


def synthetic_shards(work: Path, bucket: str, samples: int, grain: float = 0.0) -> Path:
    """Shards of `samples` synthetic clips of `bucket`, made once per work folder. `grain`: the
    std of Gaussian noise added to every frame before encoding, for a bitrate nearer real footage's."""
    shards = work / (f"shards_{bucket}_{samples}" + (f"_grain{grain:g}" if grain else ""))
    if not shards.exists():
        tmp = work / f".{shards.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if grain:
            add_grain(synthetic_shards(work, bucket, samples), tmp, grain)
        else:
            write_synthetic_shards(tmp, [bucket], per_bucket=samples, seed=0, samples_per_shard=max(1, samples // 4))
        tmp.rename(shards)
    return shards


def add_grain(source: Path, out: Path, grain: float) -> None:
    """The same samples, each clip re-encoded with grain (so far more bits to decode)."""
    rng = np.random.default_rng(0)
    urls = list_shards(source)
    with ShardWriter(out, max_samples=sum(1 for _ in iter_raw_samples(urls[0], SkipCounter()))) as writer:
        for url in urls:
            for sample in iter_raw_samples(url, SkipCounter()):
                video = decode_mp4(sample.mp4).astype(np.float32)  # type: ignore[arg-type]
                video += rng.normal(0, grain, video.shape).astype(np.float32)
                writer.write(sample.meta, encode_mp4(np.clip(video, 0, 255).astype(np.uint8), sample.meta.fps))


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measured(run: Callable[[], int]) -> dict:
    """Samples/s and samples per CPU-second of `run` (which returns the samples it delivered)."""
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    n = run()
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    return {"samples": n, "wall_s": wall, "cpu_s": cpu, "samples_per_s": n / wall,
            "samples_per_cpu_s": n / max(cpu, 1e-9), "cores_used": cpu / wall}


def loader_speed(data: Path, batch: int, batches: int, workers: int = 0) -> dict:
    """The loader's rate over `batches` batches after a first one (which starts the workers)."""
    loader = BucketLoader(list_shards(data), batch_size=batch, shuffle_buffer=4, prefetch=2, decode_workers=workers)
    it = iter(loader)
    next(it)
    result = measured(lambda: sum(len(next(it)) for _ in range(batches)))
    it.close()
    return {**result, "decode_workers": loader.decode_workers}


def old_decode(data: bytes, max_frames: int) -> np.ndarray:
    """`decode_mp4` before decode workers (trainer/shards.py at fd1e6bf), kept here as the baseline."""
    frames = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= max_frames:
                break
    return np.stack(frames)


def old_loader_speed(data: Path, batch: int, batches: int) -> dict:
    """The same batches decoded as the loader did before: one sample after the other, stacked."""
    loader = BucketLoader(list_shards(data), batch_size=batch, shuffle_buffer=4)
    raw = loader._raw_batches()          # the batch order the loader uses (its decoding aside)
    next(raw)

    def run() -> int:
        n = 0
        for _ in range(batches):
            _, bucket, group = next(raw)
            n += len(np.stack([old_decode(s.mp4, bucket.frames) for s in group]))  # type: ignore[arg-type]
        return n
    return measured(run)


def clips(data: Path) -> list[bytes]:
    return [s.mp4 for url in list_shards(data) for s in iter_raw_samples(url, SkipCounter()) if s.mp4]


def pyav_decode_only(videos: list[bytes]) -> dict:
    def run() -> int:
        for data in videos:
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1
                for _ in container.decode(stream):
                    pass
        return len(videos)
    return measured(run)


def ffmpeg_decode_only(videos: list[bytes], folder: Path) -> dict | None:
    """One ffmpeg process decoding every clip (concat demuxer, so its start-up is paid once); the
    clips are written to `folder` once."""
    if shutil.which("ffmpeg") is None:
        return None
    folder.mkdir(exist_ok=True)
    listing = folder / "list.txt"
    if not listing.exists():
        for i, data in enumerate(videos):
            (folder / f"{i:05d}.mp4").write_bytes(data)
        listing.write_text("".join(f"file '{i:05d}.mp4'\n" for i in range(len(videos))))
    cpu0, wall0 = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1", "-f", "concat",
                    "-safe", "0", "-i", str(listing), "-f", "null", "-"], check=True)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0
    n = len(videos)
    return {"samples": n, "wall_s": wall, "cpu_s": cpu, "samples_per_s": n / wall, "samples_per_cpu_s": n / cpu,
            "cores_used": cpu / wall}


def median_rows(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    out = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds if r.get(name)]
        if runs:
            out[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            out[name]["rounds"] = len(runs)
    return out


def bitrate_kbps(videos: list[bytes], bucket: Bucket, fps: float = 8.0) -> float:
    seconds = bucket.frames / fps
    return statistics.mean(len(v) for v in videos) * 8 / seconds / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", default="256x256x33")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=64, help="synthetic clips in the shards")
    parser.add_argument("--grain", type=float, default=0.0,
                        help="std of noise added to every frame before encoding (e.g. 8: a bitrate like real footage's)")
    parser.add_argument("--batches", type=int, default=6, help="batches measured per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                        help="decode_workers values to measure")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--work", help="folder for the shards (default: a temporary one)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bench_loader_") if not args.work else None
    work = Path(args.work or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    bucket = Bucket.parse(args.bucket)
    data = synthetic_shards(work, args.bucket, args.samples, args.grain)
    videos = clips(data)
    print(f"{len(videos)} clips of {args.bucket}, {bitrate_kbps(videos, bucket):.0f} kbit/s; batch {args.batch}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[str, Callable[[], dict | None]] = {"old": lambda: old_loader_speed(data, args.batch, args.batches)}
    for n in args.workers:
        runs[f"workers={n}"] = lambda n=n: loader_speed(data, args.batch, args.batches, n)
    runs["pyav yuv"] = lambda: pyav_decode_only(videos)
    runs["ffmpeg"] = lambda: ffmpeg_decode_only(videos, work / f"{data.name}_clips")
    rounds = []
    for i in range(args.rounds):
        rounds.append({name: run() for name, run in runs.items()})
        print(f"round {i + 1}: " + ", ".join(f"{name} {r['samples_per_s']:.1f}/s {r['samples_per_cpu_s']:.1f}/cpu-s"
                                             for name, r in rounds[-1].items() if r), flush=True)
    rows = median_rows(rounds)
    base = rows["old"]["samples_per_cpu_s"]
    print(f"\nload average after: {os.getloadavg()[0]:.1f}\n")
    print("| path | samples/s | samples per CPU-s | CPU ms per sample | cores used | CPU-s vs old |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['samples_per_s']:.1f} | {r['samples_per_cpu_s']:.1f} | {1e3 / r['samples_per_cpu_s']:.1f} "
              f"| {r['cores_used']:.2f} | {base / r['samples_per_cpu_s']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"bucket": args.bucket, "batch": args.batch, "rows": rows}, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

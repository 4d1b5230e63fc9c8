"""Export throughput (MB/s, clips/s) next to a plain copy of the same clip bytes (the ceiling).

    .venv/bin/python bench/export.py                      # the demo library (built once in bench/out/)
    .venv/bin/python bench/export.py --hd 30                # a 30 s 1080p H.264 video, ingested once
    .venv/bin/python bench/export.py --library LIB --executor ray local

Times, on the clips the export selects:
  copy     shutil.copyfile of every clip file the export reads (bytes in = bytes out)
  render   decode + crop + resize to the bucket, in this process (no encode, no tar)
  encode   H.264 encode of those frames, in this process (trainer.shards.encode_mp4)
  export   `run_export` end to end per executor: selection, plan, shards, manifest, card (local, the
           default without --ray-address: one shard after another, its samples on every CPU)
MB/s counts clip-file bytes read (the same bytes as `copy`); the written shard size is shown too.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))


def bench_library(hd_seconds: float | None) -> Path:
    """The demo corpus, or one 1080p benchmark video, ingested (remux clips) once into bench/out/."""
    recap = [sys.executable, "-m", "pipeline.cli"]
    if hd_seconds:
        lib, src = OUT / f"export_lib_1080p_{hd_seconds:g}s", OUT / f"bench_1080p_{hd_seconds:g}s.mp4"
        if not src.exists():
            from pipeline.samples.corpus import write_benchmark_video
            write_benchmark_video(src, hd_seconds)
    else:
        lib, src = OUT / "export_lib", OUT / "export_samples"
        if not src.exists():
            subprocess.run([*recap, "samples", str(src)], check=True, cwd=ROOT)
    if not (lib / "library.json").exists():
        subprocess.run([*recap, "ingest", str(src), "--out", str(lib), "--no-progress"], check=True, cwd=ROOT)
    return lib


def row(name: str, seconds: float, in_bytes: int, clips: int, out_bytes: int | None = None) -> str:
    out = f"{out_bytes / 1e6:.2f}" if out_bytes is not None else ""
    return (f"| {name} | {seconds:.2f} | {in_bytes / 1e6 / seconds:.1f} | {clips / seconds:.2f} | {out} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", type=Path, help="library to export (default: the demo library)")
    ap.add_argument("--hd", type=float, metavar="SECONDS", help="use a 1080p benchmark video of this length")
    ap.add_argument("--executor", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--buckets", help="bucket file (default configs/buckets.yaml)")
    args = ap.parse_args()

    from pipeline.export.buckets import load_buckets
    from pipeline.export.config import load_export_config
    from pipeline.export.job import run_export
    from pipeline.export.plan import plan_export
    from pipeline.export.render import render_frames
    from pipeline.export.selection import select
    from trainer.shards import encode_mp4

    lib = args.library or bench_library(args.hd)
    buckets = load_buckets(args.buckets)
    cfg = load_export_config(overrides=["val_fraction=0.2"])
    sel = select(lib)
    plan = plan_export(lib, sel, buckets, cfg)
    samples = [s for shard in plan.shards for s in shard.samples]
    files = sorted({s.spec.path for s in samples if not s.spec.by_time})
    in_bytes = sum(Path(f).stat().st_size for f in files)
    n = len(samples)
    print(f"library {lib}: {n} clips to export, {len(files)} clip files, {in_bytes / 1e6:.2f} MB")
    lines = ["| step | seconds | MB/s (clip bytes) | clips/s | shards MB |", "|---|---|---|---|---|"]

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for i, f in enumerate(files):
            shutil.copyfile(f, Path(tmp) / f"{i}{Path(f).suffix}")
        lines.append(row("copy (ceiling)", time.perf_counter() - t0, in_bytes, n, in_bytes))

    t0 = time.perf_counter()
    frames = [render_frames(s.spec) for s in samples]
    lines.append(row("render only (decode+crop+resize)", time.perf_counter() - t0, in_bytes, n))
    t0 = time.perf_counter()
    encoded = sum(len(encode_mp4(f, s.spec.fps, crf=s.spec.crf)) for f, s in zip(frames, samples))
    lines.append(row("encode only (H.264)", time.perf_counter() - t0, in_bytes, n, encoded))
    del frames

    for executor in args.executor:
        cfg.execution.executor = executor
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = run_export(lib, Path(tmp) / "shards", buckets=buckets, cfg=cfg, progress=False,
                                 log=lambda *a: None, command="bench/export.py")
            seconds = time.perf_counter() - t0
        label = f"export, {executor}" + (" (Ray start included)" if executor == "ray"
                                         else f" (this process, samples rendered on {cfg.execution.local_workers(cpus_per_task=1.0)} threads)")
        lines.append(row(label, seconds, in_bytes, summary.samples, summary.tar_bytes))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

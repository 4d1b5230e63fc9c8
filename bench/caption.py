"""Captioning throughput: clips/s and output tokens/s of one model and backend.

    # CPU smoke test (builds a tiny random-weight model; the numbers only prove the script works)
    .venv/bin/python bench/caption.py --tiny qwen2_5_vl --clips 8 --set generation.max_new_tokens=32

    # a real model on one GPU (bf16, flash attention when installed, else SDPA)
    .venv/bin/python bench/caption.py --model Qwen/Qwen2.5-VL-7B-Instruct --clips 64 --set model.batch_size=16

    # a vLLM server (started separately, see README), 64 requests in flight
    .venv/bin/python bench/caption.py --backend openai --model Qwen/Qwen2.5-VL-7B-Instruct \
        --base-url http://localhost:8000/v1 --clips 256 --set openai.concurrency=64

Clips come from a library (`--lib LIB`, the first N selected clips) or, by default, from a
synthetic 1280x720 H.264 video (moving shapes, one clip per 4 s) written to bench/out/. Two
phases are timed separately, as the pipeline runs them in separate stages:
  prep      frame sampling with decord + resize + prompt, one CPU process (clips/s)
  generate  the backend on the prepared clips in batches of model.batch_size (first batch is a
            warm-up, not timed): clips/s, output tokens/s, input tokens/s, per-clip latency
Prints a summary and one JSON line (appended to --out when given). The config is the captioner's
(`configs/captioner.yaml`, --config, --set), so the figures match what `recap caption` does.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_source(path: Path, seconds: float, fps: int = 30, size: tuple[int, int] = (1280, 720)) -> Path:
    """Moving coloured shapes over a gradient, H.264: something to decode at a realistic size."""
    import numpy as np

    from pipeline.samples.synth import write_video

    if path.exists():
        return path
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]

    def frames():
        for i in range(int(seconds * fps)):
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (xx * 255 // w + i) % 256
            img[..., 1] = (yy * 255 // h) % 256
            img[..., 2] = (i * 3) % 256
            x = int((w - 200) * (0.5 + 0.5 * np.sin(i / 20)))
            img[h // 3: h // 3 + 150, x:x + 200] = (255, 255, 255)
            yield img

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames(), fps, options={"crf": "23", "preset": "veryfast"}, gop=fps * 2)
    return path


def synthetic_rows(path: Path, n_clips: int, fps: int = 30, clip_s: float = 4.0) -> list[dict]:
    per = int(clip_s * fps)
    return [{"clip_id": f"bench{i:05d}", "video_id": "bench", "start_frame": i * per, "end_frame": (i + 1) * per,
             "fps": float(fps), "path": None, "file_start_frame": None, "source": str(path),
             "camera_motion": "static", "ocr_text": ""} for i in range(n_clips)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF id or local folder (openai: the served name)")
    ap.add_argument("--tiny", choices=["qwen2_5_vl", "qwen3_vl", "llava_onevision"],
                    help="build a tiny random model and use it")
    ap.add_argument("--backend", choices=["transformers", "openai"], default=None)
    ap.add_argument("--base-url")
    ap.add_argument("--lib", help="take clips from this library instead of the synthetic video")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", help="append the JSON result line to this file")
    a = ap.parse_args()

    import torch

    from captioner.captioner import Captioner, prepare_clip
    from captioner.frames import FrameReader
    from captioner.prompts import load_prompt
    from pipeline.caption.config import load_caption_config

    overrides = list(a.overrides)
    if a.tiny:
        from tests.support.tiny_vlm import build_tiny_model

        tiny_dir = tempfile.TemporaryDirectory(prefix="recap-tiny-")  # removed when the script ends
        a.model = str(build_tiny_model(a.tiny, tiny_dir.name))
    for key, value in (("model.id", a.model), ("model.backend", a.backend), ("openai.base_url", a.base_url)):
        if value:
            overrides.insert(0, f"{key}={value}")
    cfg = load_caption_config(a.config, overrides)

    if a.lib:
        from pipeline.caption.job import select_clips

        rows, lib_root = select_clips(a.lib)[: a.clips], a.lib
    else:
        src = synthetic_source(ROOT / "bench" / "out" / "caption_source.mp4", seconds=4.0 * a.clips)
        rows, lib_root = synthetic_rows(src, a.clips), str(ROOT)
    if not rows:
        print("no clips", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    captioner = Captioner(cfg)
    load_s = time.perf_counter() - t0

    prompt = load_prompt(cfg.prompt.id)
    t0 = time.perf_counter()
    reader = FrameReader()
    requests = [prepare_clip(r, lib_root, r.get("source"), cfg, prompt, reader) for r in rows]
    prep_s = time.perf_counter() - t0

    size = cfg.batch_size  # openai: the requests in flight, which the server batches
    warm, timed = requests[:size], requests[size:] or requests
    captioner.caption(warm)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = captioner.caption(timed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - t0

    out_tokens = sum(r.get("n_output_tokens") or 0 for r in out)
    in_tokens = sum(r.get("n_input_tokens") or 0 for r in out)
    statuses: dict[str, int] = {}
    for r in out:
        key = r["status"] + (f":{r['reason']}" if r.get("reason") else "")
        statuses[key] = statuses.get(key, 0) + 1
    result = {
        "model": cfg.model.id, "backend": cfg.model.backend, "version": captioner.version,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "clips": len(timed), "batch_size": size, "num_frames": cfg.frames.num_frames,
        "max_pixels": cfg.frames.max_pixels, "max_new_tokens": cfg.generation.max_new_tokens,
        "frames_as": "video" if getattr(captioner.backend, "as_video", False) else "images",
        "load_s": round(load_s, 2), "prep_clips_per_s": round(len(requests) / prep_s, 2),
        "gen_s": round(gen_s, 2), "clips_per_s": round(len(timed) / gen_s, 3),
        "output_tokens_per_s": round(out_tokens / gen_s, 1), "input_tokens_per_s": round(in_tokens / gen_s, 1),
        "mean_output_tokens": round(out_tokens / max(1, len(timed)), 1),
        "mean_input_tokens": round(in_tokens / max(1, len(timed)), 1),
        "gpu_peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "statuses": statuses,
    }
    print(f"{result['model']} ({result['backend']}, {result['frames_as']}) on {result['device']}: "
          f"{result['clips_per_s']} clips/s, {result['output_tokens_per_s']} output tokens/s "
          f"({result['mean_output_tokens']} per clip, {result['mean_input_tokens']} input), "
          f"prep {result['prep_clips_per_s']} clips/s on one CPU process")
    print("example:", (out[0]["text"] or "")[:300].replace("\n", " "))
    line = json.dumps(result)
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

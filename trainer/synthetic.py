"""Synthetic shards (soft coloured blobs drifting over gradients, captioned with what they show) for
tests, benchmarks and smoke runs: real MP4s through the real shard writer, no library needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.shards import Bucket, SampleMeta, ShardWriter, encode_mp4

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40),
           "white": (235, 235, 235), "purple": (150, 50, 200)}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def synthetic_video(rng: np.random.Generator, bucket: Bucket, colour: str, direction: str) -> np.ndarray:
    """(T, H, W, 3) uint8: a soft blob of `colour` moving in `direction` over a dark gradient."""
    t_, h, w = bucket.frames, bucket.height, bucket.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(10, 90, 3), rng.uniform(10, 90, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / w) * np.cos(angle) + (yy / h) * np.sin(angle) + 1) / 2
    background = c0 + ramp[..., None] * (c1 - c0)
    sigma = min(h, w) / 5
    dx, dy = DIRECTIONS[direction]
    speed = 0.5 * min(h, w) / max(1, t_ - 1)
    x0 = w / 2 - dx * speed * (t_ - 1) / 2 + rng.uniform(-1, 1)
    y0 = h / 2 - dy * speed * (t_ - 1) / 2 + rng.uniform(-1, 1)
    frames = np.empty((t_, h, w, 3), dtype=np.uint8)
    colour_rgb = np.array(COLOURS[colour], dtype=np.float32)
    for i in range(t_):
        cx, cy = x0 + dx * speed * i, y0 + dy * speed * i
        alpha = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))[..., None]
        frames[i] = np.clip(background * (1 - alpha) + colour_rgb * alpha, 0, 255).astype(np.uint8)
    return frames


def write_synthetic_shards(out_dir: str | Path, buckets: list[str], per_bucket: int, seed: int = 0,
                           samples_per_shard: int = 8, split: str = "train", fps: float = 8.0) -> list[Path]:
    """Write `per_bucket` captioned samples for each bucket name; returns the shard paths."""
    rng = np.random.default_rng(seed)
    with ShardWriter(out_dir, split=split, max_samples=samples_per_shard) as writer:
        n = 0
        for name in buckets:
            bucket = Bucket.parse(name)
            for _ in range(per_bucket):
                colour = str(rng.choice(list(COLOURS)))
                direction = str(rng.choice(list(DIRECTIONS)))
                video = synthetic_video(rng, bucket, colour, direction)
                meta = SampleMeta(key=f"{split}{seed:03d}{n:06d}", caption=f"a {colour} blob moving {direction}",
                                  bucket=bucket.name, fps=fps, clip_id=f"synthetic-{seed}-{n}", split=split,
                                  captions={"synthetic": f"a {colour} blob moving {direction}"},
                                  caption_version="synthetic", signals={"colour": colour, "direction": direction},
                                  lineage={"source_uri": "synthetic://", "frame_start": 0, "frame_end": bucket.frames})
                writer.write(meta, encode_mp4(video, fps))
                n += 1
    return writer.written


__all__ = ["synthetic_video", "write_synthetic_shards", "COLOURS", "DIRECTIONS"]

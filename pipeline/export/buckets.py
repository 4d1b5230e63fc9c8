"""Training buckets (`configs/buckets.yaml`): which width x height x frames a clip is exported at.

A clip keeps as much of itself as a bucket allows: the aspect ratio nearest to its picture (after
the black bars are cropped), then the largest resolution that picture covers without upscaling,
then the longest frame count its duration holds at the bucket frame rate. The window of frames is
centred in the clip; each output frame is the source frame nearest to its time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from trainer.shards import Bucket
from trainer.typedconfig import ConfigError, default_config, load_config


@dataclass
class BucketConfig:
    fps: float = 8.0
    frames: list[int] = field(default_factory=lambda: [9, 17, 33, 65])
    resolutions: dict[str, int] = field(default_factory=lambda: {"144p": 36864, "240p": 102240, "360p": 230400})
    aspect_ratios: list[str] = field(default_factory=lambda: ["9:16", "3:4", "1:1", "4:3", "16:9", "21:9"])
    multiple: int = 16
    max_crop_share: float = 0.25
    upscale_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.fps <= 0 or not self.frames or min(self.frames) < 1:
            raise ConfigError("buckets: fps > 0 and frames a non-empty list of counts >= 1")
        if not self.resolutions or min(self.resolutions.values()) <= 0:
            raise ConfigError("buckets: resolutions maps a name to a positive pixel area")
        if self.multiple < 2 or self.multiple % 2:
            raise ConfigError("buckets: multiple must be even (H.264 4:2:0 needs even sides)")
        if not 0 <= self.max_crop_share < 1 or self.upscale_tolerance < 0:
            raise ConfigError("buckets: 0 <= max_crop_share < 1 and upscale_tolerance >= 0")
        for ratio in self.aspect_ratios:
            parse_ratio(ratio)


def parse_ratio(text: str) -> float:
    """`"16:9"` -> 1.777..."""
    try:
        w, h = (float(x) for x in str(text).split(":"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"buckets: aspect ratio must look like W:H, got {text!r}") from None
    return w / h


def load_buckets(path: str | Path | None = None, overrides: list[str] | None = None) -> BucketConfig:
    """`configs/buckets.yaml` (or `path`, a whole bucket file) plus `key=value` overrides."""
    return load_config(BucketConfig, path or default_config("buckets.yaml"), overrides)


def bucket_size(area: int, ratio: float, multiple: int) -> tuple[int, int]:
    """Width and height of about `area` pixels at `ratio`, each a multiple of `multiple`."""
    h = math.sqrt(area / ratio)
    w = h * ratio
    return max(multiple, round(w / multiple) * multiple), max(multiple, round(h / multiple) * multiple)


@dataclass(frozen=True)
class Assignment:
    bucket: Bucket
    resolution: str
    aspect: str
    crop: tuple[float, float, float, float]   # centre crop to the bucket aspect: x0, y0, x1, y1 (fractions)
    frame_indices: tuple[int, ...]            # clip-relative source frames, one per output frame


def window(n_frames: int, src_fps: float, fps: float, frames: int) -> tuple[int, ...] | None:
    """Clip-relative source frame per output frame for a centred window of `frames` at `fps`, or
    None when the clip is too short (each output frame must lie within half an output period of
    its ideal time, inside the clip)."""
    if n_frames < 1 or src_fps <= 0:
        return None
    step = src_fps / fps                           # source frames per output frame
    span = (frames - 1) * step
    if span > (n_frames - 1) + 0.5 * step:
        return None
    offset = ((n_frames - 1) - span) / 2
    return tuple(min(n_frames - 1, max(0, round(offset + i * step))) for i in range(frames))


def assign(width: float, height: float, n_frames: int, src_fps: float, cfg: BucketConfig) -> Assignment | str:
    """The bucket for a picture of `width` x `height` display pixels (bars removed), or the reason
    it fits none: `too_short`, `too_small` or `aspect`."""
    if width <= 0 or height <= 0:
        return "too_small"
    ratio = width / height
    aspect = min(cfg.aspect_ratios, key=lambda r: abs(math.log(parse_ratio(r) / ratio)))
    target = parse_ratio(aspect)
    keep = min(target / ratio, ratio / target)     # share of the picture the centre crop keeps
    if 1 - keep > cfg.max_crop_share + 1e-9:
        return "aspect"
    fitting = []
    for name, area in cfg.resolutions.items():
        w, h = bucket_size(area, target, cfg.multiple)
        # the cropped picture's sides at the bucket aspect
        cw, ch = (height * target, height) if ratio > target else (width, width / target)
        if w <= cw * (1 + cfg.upscale_tolerance) and h <= ch * (1 + cfg.upscale_tolerance):
            fitting.append((w * h, name, w, h))
    if not fitting:
        return "too_small"
    _, resolution, w, h = max(fitting)
    for frames in sorted(cfg.frames, reverse=True):
        indices = window(n_frames, src_fps, cfg.fps, frames)
        if indices is not None:
            break
    else:
        return "too_short"
    exact = w / h        # the bucket's own ratio (sides rounded to `multiple`): no stretching
    if ratio > exact:    # wider than the bucket: trim the sides
        x = (1 - exact / ratio) / 2
        crop = (x, 0.0, 1 - x, 1.0)
    else:
        y = (1 - ratio / exact) / 2
        crop = (0.0, y, 1.0, 1 - y)
    return Assignment(Bucket(w, h, frames), resolution, aspect, crop, indices)


def bucket_table(cfg: BucketConfig) -> list[tuple[str, str, int, int]]:
    """(resolution, aspect, width, height) of every spatial bucket, for the dataset card."""
    return [(name, aspect, *bucket_size(area, parse_ratio(aspect), cfg.multiple))
            for name, area in cfg.resolutions.items() for aspect in cfg.aspect_ratios]

"""Clip planning: shots (clean frame ranges) -> clips of bounded length with trimmed margins."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from pipeline.ingest.config import ClipsConfig


@dataclass(frozen=True)
class PlannedClip:
    shot_index: int
    start_frame: int   # 0-based decode-order index, inclusive
    end_frame: int     # exclusive

    @property
    def n_frames(self) -> int:
        return self.end_frame - self.start_frame


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    """Deterministic clip id: the same video and range always give the same id."""
    return hashlib.blake2b(f"{video_id}:{start_frame}:{end_frame}".encode(), digest_size=10).hexdigest()


def frame_end_times(pts_s: np.ndarray) -> np.ndarray:
    """Time just after each frame: the next frame's PTS; for the last one, its PTS plus the
    median frame duration."""
    ends = np.empty_like(pts_s)
    if len(pts_s):
        ends[:-1] = pts_s[1:]
        ends[-1] = pts_s[-1] + (float(np.median(np.diff(pts_s))) if len(pts_s) > 1 else 0.0)
    return ends


def plan_clips(shots: list[tuple[int, int]], pts_s: np.ndarray, cfg: ClipsConfig) -> list[PlannedClip]:
    """Trim `cfg.margin_frames` at each end of every shot, drop what is shorter than
    `cfg.min_seconds`, and split what is longer than `cfg.max_seconds` into equal chunks
    (equal so that no chunk is a short leftover)."""
    ends = frame_end_times(pts_s)
    clips: list[PlannedClip] = []
    for shot_index, (start, end) in enumerate(shots):
        start, end = start + cfg.margin_frames, end - cfg.margin_frames
        if end <= start:
            continue
        duration = ends[end - 1] - pts_s[start]
        if duration < cfg.min_seconds:
            continue
        pieces = max(1, math.ceil(duration / cfg.max_seconds - 1e-9))
        while True:  # with variable frame rate, equal frame counts are not equal seconds
            bounds = np.linspace(start, end, pieces + 1).round().astype(int)
            lengths = ends[bounds[1:] - 1] - pts_s[bounds[:-1]]
            if lengths.max() <= cfg.max_seconds + 1e-6 or pieces >= end - start:
                break
            pieces += 1
        for a, b, length in zip(bounds[:-1], bounds[1:], lengths):
            if length >= cfg.min_seconds - 1e-6:
                clips.append(PlannedClip(shot_index, int(a), int(b)))
    return clips

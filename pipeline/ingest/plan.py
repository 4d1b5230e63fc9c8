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
    (equal so that no chunk is a short leftover).

    A frame that lasts longer than `cfg.max_seconds` (a gap in the timestamps: a recording paused,
    a damaged stream) fits in no clip: the shot is split around it, so that one frame does not
    cost the rest of the shot."""
    ends = frame_end_times(pts_s)
    clips: list[PlannedClip] = []
    for shot_index, (start, end) in enumerate(shots):
        start, end = start + cfg.margin_frames, end - cfg.margin_frames
        if end <= start:
            continue
        overlong = start + np.flatnonzero(ends[start:end] - pts_s[start:end] > cfg.max_seconds + 1e-6)
        for part_start, part_end in zip(np.append(start, overlong + 1), np.append(overlong, end)):
            for a, b in _chunks(int(part_start), int(part_end), pts_s, ends, cfg.max_seconds):
                if ends[b - 1] - pts_s[a] >= cfg.min_seconds - 1e-6:
                    clips.append(PlannedClip(shot_index, a, b))
    return clips


def _chunks(start: int, end: int, pts_s: np.ndarray, ends: np.ndarray, max_s: float) -> list[tuple[int, int]]:
    """[start, end) in equal frame counts of at most `max_s` seconds each. With variable frame rate
    equal frame counts are not equal seconds: a chunk still too long is split again on its own, so
    a burst of long frames changes only the chunks around it (and costs n log n, not n^2)."""
    if end <= start:
        return []
    duration = ends[end - 1] - pts_s[start]
    if duration <= max_s + 1e-6:
        return [(start, end)]
    if end - start == 1:      # one frame longer than max_s (plan_clips splits shots around those)
        return []
    pieces = min(end - start, max(2, math.ceil(duration / max_s - 1e-9)))
    bounds = np.linspace(start, end, pieces + 1).round().astype(int)
    return [c for a, b in zip(bounds[:-1], bounds[1:]) for c in _chunks(int(a), int(b), pts_s, ends, max_s)]

"""Frame sampling for captioning: which frames of a clip, read with decord, fitted to a pixel budget.

A clip is a frame range of a file: its own clip file (remux files start at a keyframe, so the
range starts `file_start_frame` frames in) or, in reference mode, the source video. Frames are
sampled uniformly (N frames, each at the middle of one of N equal segments) or at a target rate,
and downscaled so that width x height <= max_pixels (aspect kept, sides rounded to multiples of
28, the patch grid of Qwen-VL-style processors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from captioner.decord_import import import_decord

decord = import_decord()


@dataclass(frozen=True)
class ClipSource:
    """Where a clip's frames are: `path`, frames [start, end) of that file, and its frame rate."""
    clip_id: str
    path: str
    start: int
    end: int
    fps: float


def clip_source(row: dict, lib_root: str | Path, video_uri: str | None = None) -> ClipSource:
    """The file and frame range holding a clips/ row (its clip file, else the source video)."""
    n = int(row["end_frame"]) - int(row["start_frame"])
    if row.get("path"):
        skip = int(row.get("file_start_frame") or 0)
        return ClipSource(row["clip_id"], str(Path(lib_root) / row["path"]), skip, skip + n, float(row["fps"]))
    if not video_uri:
        raise FileNotFoundError(f"clip {row['clip_id']}: no clip file and no source uri")
    return ClipSource(row["clip_id"], video_uri, int(row["start_frame"]), int(row["end_frame"]), float(row["fps"]))


def sample_indices(n_frames: int, fps: float, num_frames: int = 8, target_fps: float = 0.0,
                   max_frames: int = 32) -> list[int]:
    """Frame offsets (0-based within the clip) to sample: `num_frames` uniform ones, or one every
    1/target_fps seconds when target_fps > 0; at most `max_frames`, at most one per frame."""
    if n_frames <= 0:
        return []
    if target_fps > 0 and fps > 0:
        count = max(1, int(math.floor(n_frames / fps * target_fps)))
    else:
        count = num_frames
    count = max(1, min(count, max_frames, n_frames))
    return [min(n_frames - 1, int((i + 0.5) * n_frames / count)) for i in range(count)]


def fit_to_budget(width: int, height: int, max_pixels: int, multiple: int = 28) -> tuple[int, int]:
    """(w, h) with the same aspect, w * h <= max_pixels, sides multiples of `multiple`, never
    upscaled beyond the source (except to reach one `multiple`)."""
    scale = min(1.0, math.sqrt(max_pixels / max(1, width * height)))
    w = max(multiple, int(width * scale // multiple) * multiple)
    h = max(multiple, int(height * scale // multiple) * multiple)
    return w, h


class FrameReader:
    """Reads sampled frames with decord, keeping the last file open: clips of one source video
    come one after another, and opening a long video (decord indexes every frame) costs more
    than reading a few frames from it.

    decord2 cannot convert some frame sizes (seen: any 96 px wide H.264, "DECORDArrayCopyFromTo:
    The size must exactly match"); those files are read by decoding with PyAV up to the last
    frame wanted instead."""

    def __init__(self):
        self._path: str | None = None
        self._reader = None

    def _open(self, path: str):
        if path != self._path:
            self._reader = None  # close the previous file first
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            self._path = path
        return self._reader

    def read(self, source: ClipSource, indices: list[int], max_pixels: int) -> np.ndarray:
        """Frames `indices` (offsets within the clip) of `source` as (T, H, W, 3) uint8 RGB."""
        vr = self._open(source.path)
        last = len(vr) - 1
        if last < 0:
            raise ValueError(f"{source.path}: no frames")
        # decord may count a frame or two fewer than the decoder that planned the clip: clamp
        absolute = [min(last, source.start + i) for i in indices]
        try:
            frames = vr.get_batch(absolute).asnumpy()
        except decord.DECORDError:
            frames = _decode_frames(source.path, absolute)
        h, w = frames.shape[1:3]
        tw, th = fit_to_budget(w, h, max_pixels)
        if (tw, th) != (w, h):
            frames = np.stack([cv2.resize(f, (tw, th), interpolation=cv2.INTER_AREA) for f in frames])
        return frames


def _decode_frames(path: str, indices: list[int]) -> np.ndarray:
    """Frames at `indices` (presentation order, as decord counts them) by decoding from the start."""
    wanted = set(indices)
    found: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= max(wanted):
                break
    if not found:
        raise ValueError(f"{path}: no frames")
    last = max(found)   # a frame past the end is the last one decoded, as decord clamps
    return np.stack([found.get(i, found[last]) for i in indices])


def read_frames(source: ClipSource, indices: list[int], max_pixels: int) -> np.ndarray:
    """Frames `indices` (offsets within the clip) of `source` as (T, H, W, 3) uint8 RGB."""
    return FrameReader().read(source, indices, max_pixels)


def sampled_fps(source: ClipSource, indices: list[int]) -> float:
    """Frame rate of the sampled sequence (for processors that encode time)."""
    if len(indices) < 2 or source.fps <= 0:
        return source.fps or 1.0
    return source.fps * (len(indices) - 1) / max(1, indices[-1] - indices[0])

"""Frames sampled evenly inside a clip, for the visual embedder (PyAV decode, RGB uint8).

A clip is read from its file under the library (skipping `file_start_frame` frames that precede
the clip in a remuxed file) or, in reference mode, from the source video by timestamps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAX_SIDE = 448   # frames are shrunk while decoding; the processor resizes to 224-384 anyway


def sample_positions(n_frames: int, n: int) -> list[int]:
    """`n` frame indices spread evenly over [0, n_frames): the centres of n equal parts."""
    if n_frames <= 0:
        return []
    return sorted({min(n_frames - 1, int((i + 0.5) * n_frames / n)) for i in range(n)})


def _rgb(frame, max_side: int) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = min(1.0, max_side / max(w, h))
    return frame.to_ndarray(format="rgb24", width=max(2, round(w * scale)), height=max(2, round(h * scale)))


def frames_from_file(path: str | Path, skip: int, n_frames: int, n: int, max_side: int = MAX_SIDE) -> list[np.ndarray]:
    """Frames at evenly spread positions of [skip, skip + n_frames) in decode order."""
    import av

    wanted = {skip + p for p in sample_positions(n_frames, n)}
    out: list[np.ndarray] = []
    if not wanted:
        return out
    last = max(wanted)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out.append(_rgb(frame, max_side))
            if i >= last:
                break
    return out


def frames_by_time(path: str | Path, start_s: float, end_s: float, n: int, max_side: int = MAX_SIDE) -> list[np.ndarray]:
    """The first frame at or after each of `n` evenly spread times in [start_s, end_s)."""
    import av

    span = max(end_s - start_s, 1e-6)
    targets = [start_s + (i + 0.5) * span / n for i in range(n)]
    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start_s > 1.0 and stream.time_base:
            container.seek(int((start_s - 1.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            if t >= end_s:
                break
            while targets and t >= targets[0]:   # a frame may serve several targets in a short clip
                out.append(_rgb(frame, max_side))
                targets.pop(0)
            if not targets:
                break
    return out


def clip_frames(lib_root: str | Path, clip: dict[str, Any], source_uri: str | None, n: int) -> list[np.ndarray]:
    """Frames of one clip row (needs path, file_start_frame, n_frames, start_s, end_s)."""
    if clip.get("path"):
        return frames_from_file(Path(lib_root) / clip["path"], int(clip.get("file_start_frame") or 0),
                                int(clip["n_frames"]), n)
    if not source_uri:
        raise FileNotFoundError(f"clip {clip['clip_id']}: no clip file and no source uri")
    return frames_by_time(source_uri, float(clip["start_s"]), float(clip["end_s"]), n)

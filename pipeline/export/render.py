"""One training sample's video: the clip's frames, cropped, resized to the bucket and re-encoded.

PyAV decodes the clip (its file under the library, skipping `file_start_frame`, or in reference
mode the source video by timestamps), the frames the bucket window picks are converted to RGB,
cropped (black bars, then centre crop to the bucket's aspect), turned like a player would turn
them (display rotation) and resized with area averaging; `trainer.shards.encode_mp4` writes the
H.264 bytes, so the trainer decodes exactly what the shard schema promises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import av
import cv2
import numpy as np

from trainer.shards import encode_mp4


@dataclass(frozen=True)
class RenderSpec:
    """Everything a worker needs to render one sample (plain values: cheap to ship to Ray)."""

    path: str                                   # clip file, or the source in reference mode
    by_time: bool                               # reference mode: find the clip by timestamps
    skip: int                                   # frames to skip at the start of a clip file
    n_frames: int                               # frames in the clip
    start_s: float
    end_s: float
    src_fps: float
    bars: tuple[float, float, float, float]     # crop that removes black bars, coded-frame fractions
    aspect: tuple[float, float, float, float]   # centre crop to the bucket aspect, turned-frame fractions
    frame_indices: tuple[int, ...]              # clip-relative frames, one per output frame
    width: int
    height: int
    fps: float
    crf: int = 18


def _clip_frames(spec: RenderSpec, container, stream) -> Iterator:
    """The clip's frames in order (av.VideoFrame), from its first frame."""
    if not spec.by_time:
        for i, frame in enumerate(container.decode(stream)):
            if i >= spec.skip:
                yield frame
        return
    tol = 0.5 / spec.src_fps
    if spec.start_s > 1.0 and stream.time_base:
        container.seek(int((spec.start_s - 1.0) / stream.time_base), stream=stream, backward=True)
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = float(frame.pts * stream.time_base)
        if t < spec.start_s - tol:
            continue
        if t >= spec.end_s - tol:
            return
        yield frame


def _fraction_crop(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    h, w = img.shape[:2]
    x0, y0 = round(box[0] * w), round(box[1] * h)
    x1, y1 = max(x0 + 1, round(box[2] * w)), max(y0 + 1, round(box[3] * h))
    return img[y0:y1, x0:x1]


def _to_bucket(frame, spec: RenderSpec) -> np.ndarray:
    img = _fraction_crop(frame.to_ndarray(format="rgb24", threads=1), spec.bars)
    turns = round((frame.rotation or 0) / 90) % 4   # frame.rotation 90 = np.rot90 once (as FFmpeg's autorotate)
    if turns:
        img = np.rot90(img, turns)
    img = _fraction_crop(img, spec.aspect)
    shrink = img.shape[1] >= spec.width and img.shape[0] >= spec.height
    return cv2.resize(np.ascontiguousarray(img), (spec.width, spec.height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def render_frames(spec: RenderSpec) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB at the bucket size; raises ValueError when the clip is shorter on
    disk than the library says."""
    wanted = sorted(set(spec.frame_indices))
    got: dict[int, np.ndarray] = {}
    with av.open(spec.path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1    # parallelism is across samples (see render_mp4)
        for i, frame in enumerate(_clip_frames(spec, container, stream)):
            if i in wanted:
                got[i] = _to_bucket(frame, spec)
            if i >= wanted[-1]:
                break
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ValueError(f"{spec.path}: clip frame {missing[0]} not found (decoded {len(got)} of {len(wanted)} wanted)")
    return np.stack([got[i] for i in spec.frame_indices])


def render_mp4(spec: RenderSpec) -> bytes:
    """The sample's H.264 MP4 bytes, decoded and encoded on one thread: an export renders as many
    samples at once as it has CPUs (pipeline/export/writer.py), where codec threads per sample
    would multiply into CPUs x threads; and x264's output depends on its thread count, which is
    then the same on every machine and executor."""
    return encode_mp4(render_frames(spec), spec.fps, crf=spec.crf, threads=1)

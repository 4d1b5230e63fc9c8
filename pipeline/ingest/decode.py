"""The one decode pass per video: threaded PyAV decoding, each frame downscaled once.

Every decoded frame becomes a small `AnalysisFrame` handed to each `FrameAnalyzer` in decode
order (0-based index = the frame index used everywhere else). Only the current frame is ever
held at full resolution (plus the few the decoder threads own), so memory does not depend on the
video's length or size.

Speed is the point of this module: ingest must cost about one ffmpeg decode. The per-frame
Python work is kept to a few small OpenCV calls on numpy views of the decoder's own planes.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import cv2
import numpy as np
from av.codec.hwaccel import HWAccel

from pipeline.ingest.analysis import AnalysisFrame, FrameAnalyzer
from pipeline.ingest.config import DecodeConfig
from pipeline.ingest.probe import main_video_stream
from pipeline.ingest.signals.series import DetailSchedule
from pipeline.stages.execution import available_cpus

# 8-bit planar YUV layouts whose planes we can read directly (chroma size is read per plane).
PLANAR_YUV8 = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})

# A stream is variable-frame-rate when a frame's duration strays this far from the median.
VFR_TOLERANCE = 0.25


class DecodeError(RuntimeError):
    """The file has no decodable video (unreadable container, no video stream, no frames)."""


@dataclass
class DecodeResult:
    n_frames: int                  # frames decoded = length of every per-frame array
    pts_s: np.ndarray              # (n_frames,) float64 presentation time of each frame, seconds
    time_base: Fraction            # the video stream's time base
    fps: float                     # frames per second averaged over the decoded PTS span
    is_vfr: bool                   # True when frame durations vary (VFR source, dropped frames)
    width: int                     # coded frame size, before rotation / aspect correction
    height: int
    analysis_size: tuple[int, int]  # (width, height) of the AnalysisFrames
    pix_fmt: str
    codec: str
    threads: int                   # decoder threads used
    device: str = "cpu"            # where it was decoded: "cpu", or "cuda" (NVDEC)
    decode_errors: int = 0         # packets the decoder rejected (skipped, not counted as frames)
    corrupt_frames: int = 0        # frames the decoder flagged corrupt but still produced
    dropped_frames: int = 0        # frames whose PTS did not advance (damaged stream): left out
    relabeled: bool = False        # the stream's own timestamps came in decode order (AVI with
                                   # B-frames): its packets cannot be cut by PTS (see PresentationTimes)
    truncated: bool = False        # demuxing stopped early on a read error
    declared_end_s: float | None = None  # where the container says the file ends (any stream), if it says
    # (first frame, width, height) of each run of frames of one coded size: one entry, unless the
    # stream switches sizes (stitched HLS renditions, a camera changing mode)
    sizes: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def ends_early(self) -> bool:
        """The video stops well before the end the container declares: a cut-off Matroska/WebM
        (which demuxes quietly to its last whole cluster), or audio that runs on past the picture."""
        if self.declared_end_s is None or self.n_frames == 0:
            return False
        return self.declared_end_s - self.end_s > max(1.0, 0.1 * self.declared_end_s)

    @property
    def warnings(self) -> str | None:
        """What was wrong with the stream, for a person; None when it decoded cleanly."""
        found = [text for count, text in (
            (self.truncated, "truncated: read error before the end"),
            (self.ends_early, f"video ends at {self.end_s:.1f} s of the "
                              f"{self.declared_end_s or 0:.1f} s the container declares (cut off?)"),
            (self.decode_errors, f"{self.decode_errors} packets rejected by the decoder"),
            (self.corrupt_frames, f"{self.corrupt_frames} frames decoded with errors"),
            (self.dropped_frames, f"{self.dropped_frames} frames out of time order left out"),
        ) if count]
        return "; ".join(found) or None

    @property
    def end_s(self) -> float:
        """End of the last frame (its PTS plus an average frame)."""
        return float(self.pts_s[-1]) + 1.0 / self.fps if self.n_frames else 0.0

    @property
    def duration_s(self) -> float:
        """Span from the first frame's PTS to the end of the last frame."""
        return self.end_s - float(self.pts_s[0]) if self.n_frames else 0.0


def analysis_size(width: int, height: int, sar: Fraction | None, cfg: DecodeConfig) -> tuple[int, int]:
    """Analysis (w, h): `analysis_width` wide, height by display aspect, capped, both even,
    never larger than the source."""
    display_w = width * float(sar) if sar else float(width)
    w = min(cfg.analysis_width, width)
    h = w * height / display_w
    if h > cfg.max_analysis_height:
        h = cfg.max_analysis_height
        w = h * display_w / height
    return _even(w), _even(h)


def detail_size(analysis: tuple[int, int], width: int, detail_width: int) -> tuple[int, int]:
    """Detail-frame (w, h): `detail_width` wide (at most the source's width), the analysis
    frames' display aspect, both even like theirs (an odd width, e.g. a 161 px wide source,
    cannot hold I420 chroma)."""
    aw, ah = analysis
    dw = max(2, min(detail_width, width) // 2 * 2)   # rounded down: never wider than the source
    return dw, _even(dw * ah / aw)


def _even(v: float) -> int:
    """The nearest even size, at least 2: I420 has one chroma sample per 2x2 pixels."""
    return max(2, int(round(v / 2)) * 2)


def decode_threads(cfg: DecodeConfig, width: int, height: int) -> int:
    """Decoder threads for frames of this size: one for small frames (`single_thread_pixels`),
    else `threads` (0: one per CPU this process may use)."""
    if 0 < width * height <= cfg.single_thread_pixels:
        return 1
    return cfg.threads or available_cpus()


def _plane_array(plane) -> np.ndarray:
    """A (height, width) uint8 view of one decoder plane, skipping line padding."""
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, :plane.width]


def _shrink(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Area-average `img` down to (w, h). Large reductions first keep every k-th pixel of every
    k-th row (a strided view, so only those pixels are read) down to about twice the target,
    then area-average: several times cheaper than one INTER_AREA over a 1080p plane, and each
    output pixel still averages four or more source samples."""
    src_h, src_w = img.shape
    if src_w == w and src_h == h:
        return img
    step = min(src_w // (2 * w), src_h // (2 * h))
    if step >= 2:
        img = np.ascontiguousarray(img[step // 2::step, step // 2::step])
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


class _FrameShrinker:
    """Turns a decoded frame into (bgr, luma) at analysis size."""

    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.i420 = np.empty((h * 3 // 2, w), np.uint8)  # reused: cvtColor copies out of it

    def __call__(self, frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray]:
        if frame.format.name not in PLANAR_YUV8:
            # Rare layouts (10-bit, nv12, rgb, ...): let swscale convert straight to small I420.
            frame = frame.reformat(self.w, self.h, "yuv420p", interpolation="AREA")
        w, h = self.w, self.h
        y = _shrink(_plane_array(frame.planes[0]), w, h)
        u = _shrink(_plane_array(frame.planes[1]), w // 2, h // 2)
        v = _shrink(_plane_array(frame.planes[2]), w // 2, h // 2)
        buf = self.i420
        buf[:h] = y
        buf[h:].reshape(-1)[: u.size] = u.reshape(-1)
        buf[h:].reshape(-1)[u.size:] = v.reshape(-1)
        bgr = cv2.cvtColor(buf, cv2.COLOR_YUV2BGR_I420)
        return bgr, np.ascontiguousarray(y)


def _nominal_rate(stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _is_variable(pts_s: np.ndarray) -> bool:
    if len(pts_s) < 3:
        return False
    durations = np.diff(pts_s)
    median = float(np.median(durations))
    if median <= 0:
        return True
    return bool(np.max(np.abs(durations - median)) > VFR_TOLERANCE * median)


class PresentationTimes:
    """Gives decoded frames their presentation times, in seconds.

    A decoder hands frames out in presentation order, but the timestamps it attaches can be a
    permutation of the right ones: AVI has no PTS, so its demuxer's guesses follow decode order,
    and a B-frame stream comes out labelled 1, 2, 3, 5, 4, 6, 8, 7, ... So a frame waits until as
    many frames as the decoder can reorder have followed it, and takes the smallest timestamp seen:
    the right one (with no reordering, its own). A time already passed (or taken) is damage, not
    reordering: that frame is left out and counted."""

    def __init__(self, ctx, time_base: float, step_s: float):
        self.ctx = ctx
        self.tb = time_base
        self.step_s = step_s               # assumed duration of a frame that has no timestamp
        self.waiting: deque[av.VideoFrame] = deque()
        self.labels: list[float] = []      # heap of the waiting frames' timestamps
        self.newest = -math.inf
        self.last = -math.inf              # the last time handed out
        self.dropped = 0
        self.relabeled = False

    def push(self, frame: av.VideoFrame) -> list[tuple[av.VideoFrame, float]]:
        """Frames ready to use, with their times, after `frame` arrives."""
        if frame.pts is not None:
            t = frame.pts * self.tb
        else:
            t = self.newest + self.step_s if self.newest > -math.inf else 0.0
        if t <= self.last or t in self.labels:
            self.dropped += 1
            return []
        self.newest = max(self.newest, t)
        heapq.heappush(self.labels, t)
        self.waiting.append(frame)
        ready = []
        while len(self.waiting) > self._depth():
            ready.append(self._pop())
        return ready

    def flush(self) -> list[tuple[av.VideoFrame, float]]:
        return [self._pop() for _ in range(len(self.waiting))]

    def _pop(self) -> tuple[av.VideoFrame, float]:
        frame, t = self.waiting.popleft(), heapq.heappop(self.labels)
        if frame.pts is not None and frame.pts * self.tb != t:
            self.relabeled = True
        self.last = t
        return frame, t

    def _depth(self) -> int:
        """How many frames the decoder may hold back to reorder (FFmpeg's has_b_frames)."""
        depth = getattr(self.ctx, "reorder_depth", None)   # PyAV >= 15; older ones give only a bool
        return int(depth) if depth is not None else 2 * bool(self.ctx.has_b_frames)


_said_no_cuda: list[str] = []    # the reason CUDA decoding is unavailable in this process, once said


def open_for_decode(path: str | Path, device: str = "cpu") -> tuple[av.container.InputContainer, str]:
    """The container opened for decoding, and where its frames will be decoded. `cuda` asks FFmpeg
    for NVDEC (frames come back to host memory, so the analysis code is the same); where this
    machine or this FFmpeg build has no CUDA decoder the file opens for the CPU, and a warning says
    so once per process. A codec NVDEC cannot decode falls back to software inside FFmpeg."""
    if device == "cuda":
        try:
            return av.open(str(path), hwaccel=HWAccel(device_type="cuda", allow_software_fallback=True)), "cuda"
        except (av.error.FFmpegError, OSError) as err:
            if not _said_no_cuda:
                _said_no_cuda.append(str(err))
                print(f"warning: decode.device=cuda: no CUDA decoder available ({err}); decoding on the CPU",
                      file=sys.stderr)
    try:
        return av.open(str(path)), "cpu"
    except (av.error.FFmpegError, OSError) as err:
        raise DecodeError(f"cannot open {path}: {err}") from err


def decode_pass(path: str | Path, cfg: DecodeConfig, analyzers: Sequence[FrameAnalyzer],
                detail: tuple[float, int] | None = None) -> DecodeResult:
    """Decode the first video stream of `path` once, feeding every analyzer each frame in order.

    `detail` = (every_s, width): also attach a larger BGR frame, `width` px wide, to the first
    frame at or after every multiple of `every_s` seconds (the signals' OCR / sharpness / bars).
    Packets the decoder rejects are skipped and counted; a read error mid-file ends the pass
    with what was decoded (`truncated`). Frames come out with strictly increasing PTS: a damaged
    stream can make the decoder emit a frame out of time order, which is left out (and counted),
    because clip boundaries are found by PTS. Raises DecodeError when no frame can be decoded.
    """
    container, device = open_for_decode(path, cfg.device)
    with container:
        if not container.streams.video:
            raise DecodeError(f"{path}: no video stream")
        stream = main_video_stream(container)   # the track probe described and clip files cut, not cover art
        ctx = stream.codec_context
        threads = decode_threads(cfg, ctx.width, ctx.height)
        stream.thread_type = "AUTO"
        ctx.thread_count = threads
        # OpenCV's pool gets this video's share too: on small frames its hand-offs cost more than
        # they save (one video per worker process, which is what sets this process-wide value)
        cv2.setNumThreads(threads)
        if cfg.skip_loop_filter:
            ctx.options = {**ctx.options, "skip_loop_filter": "all"}
        if not ctx.width or not ctx.height:
            raise DecodeError(f"{path}: video stream has no frame size (codec {ctx.name!r})")
        aw, ah = analysis_size(ctx.width, ctx.height, ctx.sample_aspect_ratio, cfg)
        shrink = _FrameShrinker(aw, ah)
        schedule = DetailSchedule(detail[0]) if detail else None
        if detail:
            # the same plane arithmetic as the analysis frames: ~10x cheaper than swscale AREA
            detail_shrink = _FrameShrinker(*detail_size((aw, ah), ctx.width, detail[1]))
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
        tb = float(time_base)   # float PTS math: exact enough, and Fraction costs per frame
        rate = _nominal_rate(stream)
        step_s = 1.0 / float(rate) if rate else 1.0 / 30.0

        pts: list[float] = []
        sizes: list[tuple[int, int, int]] = []
        errors = corrupt = 0
        truncated = False
        pix_fmt = ctx.pix_fmt or ""
        times = PresentationTimes(ctx, tb, step_s)

        def analyze(frame: av.VideoFrame, t: float) -> None:
            nonlocal corrupt, pix_fmt
            corrupt += frame.is_corrupt
            pix_fmt = frame.format.name
            size = (frame.width, frame.height)
            if not sizes or sizes[-1][1:] != size:
                sizes.append((len(pts), *size))
            bgr, luma = shrink(frame)
            big = None
            if schedule is not None and schedule.due(t):
                big = detail_shrink(frame)[0]
            af = AnalysisFrame(index=len(pts), pts_s=t, bgr=bgr, luma=luma, detail=big, source_size=size)
            pts.append(t)
            for analyzer in analyzers:
                analyzer.update(af)

        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError:
                truncated = True  # read error: keep what was decoded, drain the decoder below
                packet = None
            try:
                frames = packet.decode() if packet is not None else ctx.decode(None)
            except av.error.FFmpegError:
                errors += 1
                frames = []
            for frame in frames:
                for ready, t in times.push(frame):
                    analyze(ready, t)
            if packet is None:
                break
        for ready, t in times.flush():
            analyze(ready, t)
        declared_end_s = ((container.start_time or 0) + container.duration) / av.time_base \
            if container.duration else None

    n = len(pts)
    if n == 0:
        raise DecodeError(f"{path}: no decodable video frames"
                          + (f" ({errors} packets rejected)" if errors else ""))
    pts_s = np.asarray(pts, np.float64)
    span = float(pts_s[-1] - pts_s[0])
    avg_fps = (n - 1) / span if n > 1 and span > 0 else (float(rate) if rate else 30.0)
    return DecodeResult(
        n_frames=n, pts_s=pts_s, time_base=time_base, fps=avg_fps,
        is_vfr=_is_variable(pts_s), width=ctx.width, height=ctx.height,
        analysis_size=(aw, ah), pix_fmt=pix_fmt, codec=ctx.name, threads=threads, device=device,
        decode_errors=errors, corrupt_frames=corrupt, dropped_frames=times.dropped, truncated=truncated,
        relabeled=times.relabeled,
        declared_end_s=declared_end_s, sizes=sizes)

"""What the single decode pass hands to every analysis: one small frame at a time.

The decoder downscales each frame once (to `decode.analysis_width`) and calls every
`FrameAnalyzer` with it, in decode order. Analyzers keep only small per-frame numbers (or a
bounded sample of frames), so memory does not grow with the video's resolution, and only
linearly-and-tiny with its length. After the pass, clip-level signals are summaries of those
per-frame numbers over each clip's frame range.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from dataclasses import dataclass
from typing import Protocol, Sequence

import cv2
import numpy as np

THUMB = (32, 18)         # structure thumbnail (w, h); transposed for portrait frames
MIN_THUMB_STD = 2.0      # a thumbnail flatter than this has no structure to correlate


@dataclass(frozen=True)
class AnalysisFrame:
    index: int          # 0-based decode-order frame index
    pts_s: float        # presentation time in seconds (from PTS; monotonic within the stream)
    bgr: np.ndarray     # (h, w, 3) uint8, downscaled, display orientation not applied
    luma: np.ndarray    # (h, w) uint8, the Y plane at the same size
    detail: np.ndarray | None = None  # (H, W, 3) uint8 BGR at `signals.detail_width`, on sampled frames only
    source_size: tuple[int, int] = (0, 0)  # (width, height) of the decoded picture (a stream may switch sizes)

    @functools.cached_property
    def structure(self) -> tuple[np.ndarray, float]:
        """The normalised THUMB-sized luma thumbnail (flattened) and its std, computed once for
        every analyzer that compares frames by structure (shot detection, the OCR schedule): the
        structure distance of two frames is `1 - z1 @ z2 / z1.size`, meaningless when either std
        is below MIN_THUMB_STD (a featureless frame)."""
        luma = self.luma
        size = THUMB if luma.shape[1] >= luma.shape[0] else THUMB[::-1]
        thumb = cv2.resize(luma, size, interpolation=cv2.INTER_AREA)
        t_mean, t_std = cv2.meanStdDev(thumb)
        tstd = float(t_std[0, 0])
        return (thumb.ravel().astype(np.float32) - float(t_mean[0, 0])) / max(tstd, MIN_THUMB_STD), tstd


class FrameAnalyzer(Protocol):
    """Something that looks at every analysis frame once, in order."""

    name: str
    def update(self, frame: AnalysisFrame) -> None: ...


class BackgroundAnalyzers:
    """Runs analyzers on one background thread at a lower CPU priority, fed in decode order
    through a bounded queue.

    Their work is mostly OpenCV and ONNX Runtime calls, which release the GIL, so it runs beside
    the decoder threads and the caller's own per-frame work; at a lower priority (`nice`, Linux
    only: elsewhere it runs at normal priority) it takes the cycles they leave idle instead of
    slowing them down, and the queue (`depth` small analysis frames: 512, ~17 s at 30 fps, ~35 MB,
    so the decoder of a short video never waits for the analyzers) lets it fall behind and catch
    up, also after the pass while the caller writes clip files. Frames travel in batches of
    `batch` (one queue hand-off and thread wake-up per batch, not per frame). `close()` hands over the last
    partial batch, waits for the queue to drain and returns the first error an analyzer hit
    (later frames are then dropped, not analyzed), or None.
    """

    name = "background"

    def __init__(self, analyzers: Sequence[FrameAnalyzer], depth: int = 512, nice: int = 10, batch: int = 16):
        self.analyzers = list(analyzers)
        self.nice = nice
        self.batch = max(1, min(batch, depth))
        self._pending: list[AnalysisFrame] = []
        self._queue: queue.Queue[list[AnalysisFrame] | None] = queue.Queue(maxsize=max(1, depth // self.batch))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="frame-analyzers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:  # on Linux, setpriority on a thread id applies to that thread alone
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
        except (AttributeError, OSError):
            pass
        while (frames := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the producer never blocks on a dead consumer
            try:
                for frame in frames:
                    for analyzer in self.analyzers:
                        analyzer.update(frame)
            except BaseException as err:  # noqa: BLE001 - handed to the caller by close()
                self._error = err

    def update(self, frame: AnalysisFrame) -> None:
        self._pending.append(frame)
        if len(self._pending) >= self.batch:
            self._queue.put(self._pending)
            self._pending = []

    def close(self) -> BaseException | None:
        if self._thread.is_alive():
            if self._pending:
                self._queue.put(self._pending)
                self._pending = []
            self._queue.put(None)
            self._thread.join()
        return self._error

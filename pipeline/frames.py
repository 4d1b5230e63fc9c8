"""What the single decode pass hands to every analysis: one small frame at a time.

The decoder downscales each frame once (to `decode.analysis_width`) and calls every
`FrameAnalyzer` with it, in decode order. Analyzers keep only small per-frame numbers (or a
bounded sample of frames), so memory does not grow with the video's resolution, and only
linearly-and-tiny with its length. After the pass, clip-level signals are summaries of those
per-frame numbers over each clip's frame range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class AnalysisFrame:
    index: int          # 0-based decode-order frame index
    pts_s: float        # presentation time in seconds (from PTS; monotonic within the stream)
    bgr: np.ndarray     # (h, w, 3) uint8, downscaled, display orientation not applied
    luma: np.ndarray    # (h, w) uint8, the Y plane at the same size
    detail: np.ndarray | None = None  # (H, W, 3) uint8 BGR at `signals.detail_width`, on sampled frames only


class FrameAnalyzer(Protocol):
    """Something that looks at every analysis frame once, in order."""

    name: str

    def update(self, frame: AnalysisFrame) -> None: ...

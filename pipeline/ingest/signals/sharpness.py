"""Sharpness: variance of the Laplacian of the luma, on the sampled detail frames.

The 160 px analysis frames are too small for this: downscaling a 1080p frame 12x hides all but
the heaviest blur, so sharpness is measured on the larger detail frames (480 px wide by default)
inside the picture area (black bars excluded, they would read as blur). Values depend on the
detail width: thresholds are only comparable at the same `signals.detail_width`.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from pipeline.ingest.signals.bars import DetailBars
from pipeline.ingest.signals.config import BarsConfig
from pipeline.ingest.signals.series import SampleList


def laplacian_variance(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


class SharpnessAnalyzer:
    name = "sharpness"

    def __init__(self, bars: BarsConfig, measure: DetailBars | None = None):
        self.measure = measure or DetailBars(bars)  # shared with BarsAnalyzer: one measurement per frame
        self.samples = SampleList()

    def update(self, frame) -> None:
        found = self.measure(frame)  # bars excluded: they would read as blur
        if found is None:
            return
        gray, (top, bottom, left, right) = found
        picture = gray[top: gray.shape[0] - bottom, left: gray.shape[1] - right]
        if min(picture.shape) >= 8:
            self.samples.add(frame.index, laplacian_variance(picture))

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]:
        values = self.samples.window(start_frame, end_frame)
        return {"sharpness": float(np.mean(values)) if values else None}

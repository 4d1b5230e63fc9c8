"""Exposure and stillness from every analysis frame: brightness, contrast, colourfulness,
black / blank / frozen frame shares.

Colourfulness is Hasler and Suesstrunk's M (2003): sqrt(std_rg^2 + std_yb^2) + 0.3 *
sqrt(mean_rg^2 + mean_yb^2) with rg = R - G and yb = (R + G) / 2 - B; about 0 for grey, ~15 "slightly",
~60 "quite", > 100 "extremely" colourful.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from pipeline.ingest.signals.config import ExposureConfig
from pipeline.ingest.signals.series import FrameSeries
from pipeline.library.schema import EXPOSURE_COLUMNS


def colorfulness(bgr: np.ndarray) -> float:
    """Hasler-Suesstrunk colourfulness of a BGR uint8 image (on every 2nd pixel: a statistic of
    the whole frame, it does not need them all)."""
    b, g, r = cv2.split(bgr[::2, ::2].astype(np.float32))
    rg = r - g
    yb = 0.5 * (r + g) - b
    (rg_mean, rg_std), (yb_mean, yb_std) = cv2.meanStdDev(rg), cv2.meanStdDev(yb)
    return float(np.hypot(rg_std.item(), yb_std.item()) + 0.3 * np.hypot(rg_mean.item(), yb_mean.item()))


# Colourfulness is a clip average that changes slowly: every 3rd frame measures it as well as all.
COLOR_EVERY = 3


class ExposureAnalyzer:
    """Per frame: mean luma, luma std and |difference| to the previous frame; colourfulness on
    every `color_every`-th frame (`COLOR_EVERY`, spaced out further on small sources)."""

    name = "exposure"

    def __init__(self, cfg: ExposureConfig, color_every: int = COLOR_EVERY):
        self.cfg = cfg
        self.color_every = max(1, color_every)
        self.stats = FrameSeries(width=2)
        self.colors = FrameSeries(width=1)
        self.diffs = FrameSeries(width=1)
        self._prev: tuple[int, np.ndarray] | None = None

    def update(self, frame) -> None:
        mean, std = cv2.meanStdDev(frame.luma)
        self.stats.set(frame.index, (mean.item(), std.item()))
        if frame.index % self.color_every == 0:
            self.colors.set(frame.index, colorfulness(frame.bgr))
        if self._prev is not None and self._prev[0] == frame.index - 1 and self._prev[1].shape == frame.luma.shape:
            self.diffs.set(frame.index, cv2.norm(frame.luma, self._prev[1], cv2.NORM_L1) / frame.luma.size)
        self._prev = (frame.index, frame.luma)

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]:
        stats = self.stats.window(start_frame, end_frame)
        if len(stats) == 0:
            return {name: None for name, _, _ in EXPOSURE_COLUMNS}
        diffs = self.diffs.window(start_frame + 1, end_frame)[:, 0]  # the first frame's predecessor is outside
        colors = self.colors.window(start_frame, end_frame)
        if len(colors) == 0:  # a clip shorter than color_every frames between two measured ones
            colors = self.colors.window(start_frame - self.color_every + 1, end_frame)
        return {
            "brightness": float(stats[:, 0].mean()),
            "contrast": float(stats[:, 1].mean()),
            "colorfulness": float(colors.mean()) if len(colors) else None,
            "black_share": float((stats[:, 0] < self.cfg.black_luma).mean()),
            "blank_share": float((stats[:, 1] < self.cfg.blank_std).mean()),
            "frozen_share": frozen_share(diffs < self.cfg.frozen_diff, self.cfg.frozen_min_run) if len(diffs) else None,
        }


def frozen_share(repeats: np.ndarray, min_run: int) -> float:
    """Share of frames inside runs of at least `min_run` consecutive repeated frames."""
    edges = np.diff(np.concatenate([[0], repeats.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = ends - starts
    return float(lengths[lengths >= min_run].sum() / len(repeats))

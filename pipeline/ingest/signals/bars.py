"""Letterbox / pillarbox bars and the crop that removes them, from the sampled detail frames.

A bar is a run of near-black, flat rows (or columns) touching an edge, on both opposite edges
(a dark run on one side only is dark picture). A clip's bars are the thinnest seen over its
sampled frames, so the crop never cuts picture that shows up in any of them. The crop is in source (coded) pixels: detail-frame sizes scaled by source / detail size,
rounded inward to even numbers (what 4:2:0 encoders need), and one more detail pixel inward on
each side with a bar (its edge row may mix bar and picture): the crop never keeps a bar row and
cuts at most ~2 detail pixels of picture (~9 source px for 1080p at the default 480 px width).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from pipeline.ingest.signals.config import BarsConfig
from pipeline.ingest.signals.series import SampleList
from pipeline.library.schema import BARS_COLUMNS


def _edge_run(is_bar: np.ndarray) -> int:
    """Length of the run of True at the start of a 1-D mask."""
    stops = np.flatnonzero(~is_bar)
    return int(stops[0]) if stops.size else len(is_bar)


def bar_sizes(gray: np.ndarray, cfg: BarsConfig) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) bar thickness in pixels of `gray`; None for a frame that is all bar."""
    g = gray.astype(np.float32)
    rows = (g.mean(axis=1) < cfg.max_luma) & (g.std(axis=1) < cfg.max_std)
    cols = (g.mean(axis=0) < cfg.max_luma) & (g.std(axis=0) < cfg.max_std)
    if rows.all() or cols.all():
        return None
    return _edge_run(rows), _edge_run(rows[::-1]), _edge_run(cols), _edge_run(cols[::-1])


def detail_bars(frame, cfg: BarsConfig) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """(luma of the frame's detail frame, its bar sizes); None without a detail frame or when it
    is all bar (then there is no picture to measure)."""
    detail = getattr(frame, "detail", None)
    if detail is None:
        return None
    gray = cv2.cvtColor(detail, cv2.COLOR_BGR2GRAY)
    sizes = bar_sizes(gray, cfg)
    return None if sizes is None else (gray, sizes)


class DetailBars:
    """`detail_bars` of the latest frame, measured once for every analyzer that needs it (bars and
    sharpness see the same frames in turn)."""

    def __init__(self, cfg: BarsConfig):
        self.cfg = cfg
        self._last: tuple[int, tuple[np.ndarray, tuple[int, int, int, int]] | None] | None = None

    def __call__(self, frame) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        if getattr(frame, "detail", None) is None:
            return None
        if self._last is None or self._last[0] != frame.index:
            self._last = (frame.index, detail_bars(frame, self.cfg))
        return self._last[1]


def _even_up(x: float) -> int:
    return 2 * math.ceil(x / 2 - 1e-6)


def _even_down(x: float) -> int:
    return 2 * math.floor(x / 2 + 1e-6)


class BarsAnalyzer:
    """Keeps (top, bottom, left, right, h, w, source w, source h) per sampled detail frame; the
    source size is the frame's own (`source_size`, the coded `source_size` given here where a
    frame does not say it)."""

    name = "bars"

    def __init__(self, cfg: BarsConfig, source_size: tuple[int, int], measure: DetailBars | None = None):
        self.cfg = cfg
        self.source_w, self.source_h = source_size
        self.measure = measure or DetailBars(cfg)
        self.samples = SampleList()

    def update(self, frame) -> None:
        found = self.measure(frame)
        if found is not None:
            gray, sizes = found
            source = frame.source_size
            self.samples.add(frame.index, (*sizes, *gray.shape[:2], *(source if source[0] else
                                                                       (self.source_w, self.source_h))))

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]:
        samples = self.samples.window(start_frame, end_frame)
        if not samples:
            return {name: None for name, _, _ in BARS_COLUMNS}
        # a clip holds one picture size (shots are split where a stream switches sizes)
        source_w, source_h = samples[0][6:]
        top, bottom, left, right, h, w = np.min(np.array([s[:6] for s in samples if s[6:] == (source_w, source_h)]),
                                                axis=0)
        min_v, min_h = self.cfg.min_share * h, self.cfg.min_share * w
        top, bottom = (t if t >= max(min_v, 1) else 0 for t in (top, bottom))
        left, right = (s if s >= max(min_h, 1) else 0 for s in (left, right))
        # real bars come in pairs; a dark run on one side only is dark picture, not a bar
        if not (top and bottom):
            top = bottom = 0
        if not (left and right):
            left = right = 0
        sx, sy = source_w / w, source_h / h
        # the first picture row of the detail frame may still hold a sliver of bar: skip it too
        x0, y0 = (_even_up((left + 1) * sx) if left else 0), (_even_up((top + 1) * sy) if top else 0)
        x1 = _even_down(source_w - (right + 1) * sx) if right else source_w
        y1 = _even_down(source_h - (bottom + 1) * sy) if bottom else source_h
        vertical, horizontal = bool(top or bottom), bool(left or right)
        kind = {(False, False): "none", (True, False): "letterbox", (False, True): "pillarbox",
                (True, True): "windowbox"}[(vertical, horizontal)]
        if kind == "none":
            x0, y0, x1, y1 = 0, 0, source_w, source_h
        return {"bars": kind, "crop_x": x0, "crop_y": y0, "crop_w": x1 - x0, "crop_h": y1 - y0}

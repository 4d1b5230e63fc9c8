"""Motion: mean optical-flow magnitude and the camera-motion class, from Farneback flow.

Flow runs on the analysis luma shrunk to `flow_width` (80 px by default), between frame i-step and
frame i on every step-th frame. Each flow field is summarised by five numbers: its mean magnitude
and a global camera model (translation dx, dy and a zoom rate) fitted robustly with medians, so a
moving object on a still camera does not read as a pan. All speeds are in percent of the frame
width per second, so they do not depend on the analysis size or the frame rate.

Sign conventions (image y points down): when the camera pans left the scene moves right in the
frame (dx > 0); tilting up moves it down (dy > 0); zooming in makes it expand (zoom > 0).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from pipeline.ingest.signals.config import MotionConfig
from pipeline.ingest.signals.series import FrameSeries
from pipeline.library.schema import MOTION_COLUMNS


def _zoom_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every 2nd pixel: the mask of those far from the centre, and their offsets and radius^2."""
    ys, xs = np.mgrid[0:h:2, 0:w:2].astype(np.float32)
    xs -= (w - 1) / 2
    ys -= (h - 1) / 2
    r2 = xs * xs + ys * ys
    far = r2 > (0.25 * min(h, w)) ** 2  # near the centre a zoom moves nothing: its ratio is noise
    return far, xs[far], ys[far], r2[far]


_ZOOM_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def global_motion(flow: np.ndarray) -> tuple[float, float, float, float]:
    """(mean magnitude, dx, dy, zoom) of a flow field (h, w, 2) in pixels, zoom as a fraction.

    Translation is the median flow; zoom the median of radial flow / radius once it is removed.
    Medians use every 2nd pixel (the field is smooth): half the cost, same answer.
    """
    h, w = flow.shape[:2]
    if (h, w) not in _ZOOM_GRIDS:
        _ZOOM_GRIDS[(h, w)] = _zoom_grid(h, w)
    far, xs, ys, r2 = _ZOOM_GRIDS[(h, w)]
    magnitude = float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean())
    u, v = flow[::2, ::2, 0], flow[::2, ::2, 1]
    dx, dy = float(np.median(u)), float(np.median(v))
    if xs.size == 0:
        return magnitude, dx, dy, 0.0
    radial = ((u[far] - dx) * xs + (v[far] - dy) * ys) / r2
    return magnitude, dx, dy, float(np.median(radial))


# Spaced-out sampling (SignalsConfig.stretch) spaces flow pairs at most this much: camera shake
# and class need several pairs even in a 1 s clip (at 4x a shaky 1.5 s clip read as a pan).
MAX_PAIR_STRETCH = 2.0


class MotionAnalyzer:
    """Keeps 5 numbers per flow pair: magnitude, dx, dy, zoom (all per second) and the pair's first frame.

    A pair is frames (i, i + flow_step) for every `pair_every`-th frame i (0-4, 4-8, ... when
    pair_every = flow_step, the default; 0-4, 9-13, 18-22, ... on a small source where make_analyzers
    spaces pairs out: each pair still spans flow_step frames, so its values read the same). Only
    the frames a pair uses are looked at: the others cost nothing.
    """

    name = "motion"

    def __init__(self, cfg: MotionConfig, pair_every: int | None = None):
        self.cfg = cfg
        self.pair_every = max(pair_every or cfg.flow_step, cfg.flow_step)
        self.pairs = FrameSeries(width=5)
        self._prev: tuple[int, float, np.ndarray] | None = None

    def update(self, frame) -> None:
        i, step, every = frame.index, self.cfg.flow_step, self.pair_every
        starts = i % every == 0
        ends = i >= step and (i - step) % every == 0
        if not (starts or ends):
            return
        h, w = frame.luma.shape
        fw = min(self.cfg.flow_width, w)
        fh = max(8, round(h * fw / w))
        small = cv2.resize(frame.luma, (fw, fh), interpolation=cv2.INTER_AREA)
        prev, self._prev = self._prev, ((i, frame.pts_s, small) if starts else None)
        if not ends or prev is None or i - prev[0] != step or prev[2].shape != small.shape:
            return
        first_index, first_pts, first = prev
        flow = cv2.calcOpticalFlowFarneback(first, small, None, 0.5, 3, 9, 2, 5, 1.1, 0)
        dt = frame.pts_s - first_pts
        if not dt > 0:  # broken timestamps: assume 30 fps rather than divide by zero
            dt = step / 30.0
        magnitude, dx, dy, zoom = global_motion(flow)
        per_s = 100.0 / dt
        self.pairs.set(i, (magnitude / fw * per_s, dx / fw * per_s, dy / fw * per_s,
                           zoom * per_s, first_index))

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]:
        rows = self.pairs.window(start_frame, end_frame)
        rows = rows[rows[:, 4] >= start_frame]  # both frames of a pair inside the clip
        if len(rows) == 0:
            return {name: None for name, _, _ in MOTION_COLUMNS}
        dx, dy, zoom = (float(np.median(rows[:, i])) for i in (1, 2, 3))
        shake = camera_shake(rows[:, 1], rows[:, 2])
        return {
            "motion_score": float(rows[:, 0].mean()),
            "camera_motion": classify_camera(dx, dy, zoom, shake, self.cfg),
            "camera_dx": dx, "camera_dy": dy, "camera_zoom": zoom, "camera_shake": shake,
        }


def camera_shake(dx: np.ndarray, dy: np.ndarray, window: int = 5) -> float:
    """RMS distance of the per-pair translation from its moving average (what a steady move lacks)."""
    if len(dx) < 3:
        return 0.0
    k = min(window, len(dx))
    kernel = np.ones(k) / k
    res_x = dx - np.convolve(np.pad(dx, (k // 2, k - 1 - k // 2), mode="edge"), kernel, mode="valid")
    res_y = dy - np.convolve(np.pad(dy, (k // 2, k - 1 - k // 2), mode="edge"), kernel, mode="valid")
    return float(np.sqrt(np.mean(res_x**2 + res_y**2)))


def classify_camera(dx: float, dy: float, zoom: float, shake: float, cfg: MotionConfig) -> str:
    """One class from the clip's median camera model; thresholds in `MotionConfig`."""
    steady = float(np.hypot(dx, dy))
    zoom_edge_speed = abs(zoom) / 2  # a zoom of z %/s moves the frame's side edges by z/2 % of the width per s
    if shake >= cfg.shaky_min and shake >= cfg.shaky_ratio * max(steady, zoom_edge_speed):
        return "shaky"
    if abs(zoom) >= cfg.zoom_min and zoom_edge_speed >= steady:
        return "zoom_in" if zoom > 0 else "zoom_out"
    if steady < cfg.static_max:
        return "static"
    if abs(dx) >= abs(dy):
        return "pan_left" if dx > 0 else "pan_right"
    return "tilt_up" if dy > 0 else "tilt_down"

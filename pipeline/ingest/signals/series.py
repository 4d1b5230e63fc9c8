"""Per-frame numbers kept by analyzers (a growable array indexed by decode-order frame index),
the results of sampled frames, and the schedule that picks those samples.

A frame costs a few floats here, so an hour of 30 fps video is a few MB per analyzer; nothing
scales with the video's resolution.
"""

from __future__ import annotations

import math

import numpy as np


class FrameSeries:
    """`width` float32 values per frame, NaN where a frame was not measured."""

    def __init__(self, width: int = 1):
        self.width = width
        self._data = np.full((1024, width), np.nan, dtype=np.float32)
        self._n = 0  # one past the highest index written

    def set(self, index: int, values) -> None:
        if index >= len(self._data):
            grown = np.full((max(2 * len(self._data), index + 1), self.width), np.nan, dtype=np.float32)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[index] = values
        self._n = max(self._n, index + 1)

    def window(self, start: int, end: int) -> np.ndarray:
        """Rows [start, end) as an (n, width) view, only the measured ones (no NaN rows)."""
        rows = self._data[max(start, 0): min(end, self._n)]
        return rows[~np.isnan(rows).any(axis=1)]


class SampleList:
    """Results of the few sampled frames (frame index -> small result), in decode order."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.values: list = []

    def add(self, index: int, value) -> None:
        self.indices.append(index)
        self.values.append(value)

    def window(self, start: int, end: int) -> list:
        lo = np.searchsorted(self.indices, start, side="left")
        hi = np.searchsorted(self.indices, end, side="left")
        return self.values[lo:hi]


class DetailSchedule:
    """Which frames get a detail frame: the first frame at or after each multiple of `every_s`."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._next_s = -math.inf

    def due(self, pts_s: float) -> bool:
        if pts_s < self._next_s:
            return False
        self._next_s = (math.floor(pts_s / self.every_s) + 1) * self.every_s
        return True

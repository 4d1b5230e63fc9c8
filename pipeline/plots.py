"""What every histogram recap draws (the export card, the library report) needs: bin edges that
work for any data, however degenerate."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def histogram_bins(values: Iterable[float | None], most: int = 30, log: bool = False) -> np.ndarray:
    """Edges of at most `most` bins over the finite `values` (positive ones when `log`): one
    bin around a single value (matplotlib's own choice fails on a range of rounding noise:
    "Too many bins for data range"), a unit bin when there is nothing to show."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)], float)
    if finite.size == 0:
        return np.array([1.0, 10.0]) if log else np.array([0.0, 1.0])
    lo, hi = float(finite.min()), float(finite.max())
    if log:
        if hi / lo < 1 + 1e-6:
            return np.array([lo / 1.5, lo * 1.5])
        return np.geomspace(lo, hi, min(most, max(5, len(np.unique(finite)))) + 1)
    if hi - lo <= 1e-9 * max(1.0, abs(lo)):
        pad = max(abs(lo) * 0.05, 0.5)
        return np.array([lo - pad, lo + pad])
    return np.linspace(lo, hi, min(most, max(5, len(np.unique(finite)))) + 1)

"""Histograms of any data: one value, rounding noise, one sample, nothing, zeros on a log axis."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa
import pytest

from pipeline.export.card import _histograms
from pipeline.plots import histogram_bins

matplotlib.use("Agg")


@pytest.mark.parametrize("values", [
    [2.5] * 10,                                        # every clip the same length
    [1.2666666666666666, 1.2666666666666668] * 3,      # the same up to float noise
    [3.0],                                             # one sample
    [],                                                # nothing
    [None, math.nan, math.inf],                        # nothing measured
    [0.0, 0.0, 2.0],
])
@pytest.mark.parametrize("log", [False, True])
def test_bins_are_finite_increasing_and_hold_every_value(values, log):
    edges = histogram_bins(values, log=log)
    assert len(edges) >= 2 and np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)
    shown = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    assert all(edges[0] <= v <= edges[-1] for v in shown)
    if log:
        assert edges[0] > 0


def test_card_histograms_of_identical_durations(tmp_path: Path):
    # every selected clip 1.2666... s long (float noise apart): the card used to crash here
    manifest = pa.table({"split": ["train"] * 5 + ["val"],
                         "clip_duration_s": [1.2666666666666666, 1.2666666666666668] * 3,
                         "caption_words": [7] * 6})
    drawn = _histograms(tmp_path, manifest)
    assert [path for _, path in drawn] == ["card/duration.png", "card/caption_length.png"]
    assert all((tmp_path / path).stat().st_size > 0 for _, path in drawn)

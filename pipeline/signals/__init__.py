"""Clip quality signals, measured during the single decode pass.

Every signal is a `FrameAnalyzer` (see `pipeline/frames.py`) that keeps a few numbers per frame,
or the small results of a few sampled frames, and answers `clip_signals(start, end)` once the
clip ranges are known. Two kinds of input:

- every analysis frame (~160 px): motion and camera motion, exposure (brightness, contrast,
  colourfulness, black / blank / frozen shares), perceptual hashes;
- a larger *detail* frame (`detail_width`, 480 px) once every `detail_every_s` seconds, attached
  by the decoder as `AnalysisFrame.detail`: text (OCR), sharpness, black bars, aesthetic score.
  `DetailSchedule` says on which frames; with one detail frame per second every clip of at least
  a second has one.

`SIGNAL_COLUMNS` lists the clip columns produced, `make_analyzers` builds the analyzers for one
video and `clip_signals` merges their answers for one clip (every column present, null where a
signal could not be measured).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import pyarrow as pa

from pipeline.signals import aesthetic, bars, exposure, motion, phash, sharpness, text
from pipeline.signals.config import (AestheticConfig, BarsConfig, ExposureConfig, MotionConfig,
                                     SignalsConfig, TextConfig)

# (name, Arrow type, one-line doc) of every clip column the signals produce; all nullable
SIGNAL_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    *motion.COLUMNS, *exposure.COLUMNS, *bars.COLUMNS, *sharpness.COLUMNS, *text.COLUMNS,
    *aesthetic.COLUMNS, *phash.COLUMNS,
]


class SignalAnalyzer(Protocol):
    name: str

    def update(self, frame) -> None: ...

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]: ...


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


def make_analyzers(cfg: SignalsConfig, source_size: tuple[int, int],
                   scorer: aesthetic.AestheticScorer | None = None) -> list[SignalAnalyzer]:
    """The analyzers for one video; `source_size` is its coded (width, height), for the bar crop.

    `scorer` lets a worker load the aesthetic model once and share it across videos.
    """
    if not cfg.enabled:
        return []
    analyzers: list[SignalAnalyzer] = [
        motion.MotionAnalyzer(cfg.motion),
        exposure.ExposureAnalyzer(cfg.exposure),
        phash.PhashAnalyzer(cfg.phash_frames, flat_std=cfg.exposure.blank_std),
        bars.BarsAnalyzer(cfg.bars, source_size),
        sharpness.SharpnessAnalyzer(cfg.bars),
    ]
    if cfg.text.enabled:
        analyzers.append(text.TextAnalyzer(cfg.text))
    if cfg.aesthetic.model:
        analyzers.append(aesthetic.AestheticAnalyzer(cfg.aesthetic, scorer))
    return analyzers


def clip_signals(analyzers: list[SignalAnalyzer], start_frame: int, end_frame: int) -> dict[str, Any]:
    """All signal columns for the clip [start_frame, end_frame); null where nothing measured it."""
    row: dict[str, Any] = {name: None for name, _, _ in SIGNAL_COLUMNS}
    for analyzer in analyzers:
        row.update(analyzer.clip_signals(start_frame, end_frame))
    return row


__all__ = ["SIGNAL_COLUMNS", "SignalsConfig", "MotionConfig", "ExposureConfig", "BarsConfig",
           "TextConfig", "AestheticConfig", "DetailSchedule", "make_analyzers", "clip_signals"]

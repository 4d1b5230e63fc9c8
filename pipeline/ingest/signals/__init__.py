"""Clip quality signals, measured during the single decode pass.

Every signal is a `FrameAnalyzer` (see `pipeline/ingest/analysis.py`) that keeps a few numbers per frame,
or the small results of a few sampled frames, and answers `clip_signals(start, end)` once the
clip ranges are known. Two kinds of input:

- every analysis frame (~160 px): motion and camera motion, exposure (brightness, contrast,
  colourfulness, black / blank / frozen shares), perceptual hashes;
- a larger *detail* frame (`detail_width`, 480 px) once every `detail_every_s` seconds, attached
  by the decoder as `AnalysisFrame.detail`: sharpness and black bars on each; text (OCR) and the
  aesthetic score on one every 2 s (`text.every_s`, `aesthetic.every_s`), as they cost more.
  `DetailSchedule` says on which frames: the first at or after each multiple of the interval, so
  every clip at least that long gets one.

`SIGNAL_COLUMNS` lists the clip columns produced, `make_analyzers` builds the analyzers for one
video and `clip_signals` merges their answers for one clip (every column present, null where a
signal could not be measured).
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.ingest.signals import aesthetic, bars, exposure, motion, phash, sharpness, text
from pipeline.ingest.signals.config import (
    AestheticConfig,
    BarsConfig,
    ExposureConfig,
    MotionConfig,
    SignalsConfig,
    TextConfig,
)
from pipeline.ingest.signals.series import DetailSchedule
from pipeline.library.schema import SIGNAL_COLUMNS


class SignalAnalyzer(Protocol):
    name: str
    def update(self, frame) -> None: ...
    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]: ...


def make_analyzers(cfg: SignalsConfig, source_size: tuple[int, int], scorer=None) -> list[SignalAnalyzer]:
    """The analyzers for one video; `source_size` is its coded (width, height), for the bar crop.

    `scorer` (an `aesthetic.AestheticScorer`) lets a worker load the aesthetic model once and
    share it across videos; the OCR engine is shared per process already.
    """
    # imported here so that `import pipeline.ingest.signals` (columns, config) needs no OpenCV

    if not cfg.enabled:
        return []
    analyzers: list[SignalAnalyzer] = [
        motion.MotionAnalyzer(cfg.motion),
        exposure.ExposureAnalyzer(cfg.exposure),
        phash.PhashAnalyzer(cfg.phash_frames, flat_std=cfg.exposure.blank_std, every=cfg.phash_every),
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

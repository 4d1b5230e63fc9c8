"""The analyzers of one video and the merge of their answers for a clip (see the package's docstring)."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.ingest.signals import aesthetic, bars, exposure, motion, phash, sharpness, text
from pipeline.ingest.signals.config import SignalsConfig, ocr_available
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
    if not cfg.enabled:
        return []
    stretch = cfg.stretch(source_size)  # sparser sampling on small sources, whose decode is cheap
    detail_bars = bars.DetailBars(cfg.bars)  # one bar measurement per detail frame, for both users
    analyzers: list[SignalAnalyzer] = [
        motion.MotionAnalyzer(cfg.motion,
                              pair_every=round(cfg.motion.flow_step * min(stretch, motion.MAX_PAIR_STRETCH))),
        exposure.ExposureAnalyzer(cfg.exposure, color_every=max(1, round(exposure.COLOR_EVERY * stretch))),
        phash.PhashAnalyzer(cfg.phash_frames, flat_std=cfg.exposure.blank_std, every=cfg.phash_every),
        bars.BarsAnalyzer(cfg.bars, source_size, detail_bars),
        sharpness.SharpnessAnalyzer(cfg.bars, detail_bars),
    ]
    if cfg.text.enabled and ocr_available():   # without the engine (Python 3.13+) the text columns stay null
        analyzers.append(text.TextAnalyzer(cfg.text, every_s=cfg.text.every_s * (stretch if cfg.text.stretch else 1.0)))
    if cfg.aesthetic.model:
        analyzers.append(aesthetic.AestheticAnalyzer(cfg.aesthetic, scorer))
    return analyzers


def clip_signals(analyzers: list[SignalAnalyzer], start_frame: int, end_frame: int) -> dict[str, Any]:
    """All signal columns for the clip [start_frame, end_frame); null where nothing measured it."""
    row: dict[str, Any] = {name: None for name, _, _ in SIGNAL_COLUMNS}
    for analyzer in analyzers:
        row.update(analyzer.clip_signals(start_frame, end_frame))
    return row

"""Typed ingest configuration; defaults live in `configs/ingest.yaml` and in these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.ingest.signals.config import SignalsConfig
from pipeline.stages.execution import ExecutionConfig
from trainer.typedconfig import ConfigError, load_with_defaults


@dataclass
class DecodeConfig:
    threads: int = 0                 # decoder threads; 0 = one per CPU the task was given
    # Skip the in-loop deblocking filter (H.264/HEVC/VP8/VP9): ~15-20% less decode CPU. Analysis
    # frames are downscaled 4-12x, which averages block edges away; clip files are untouched
    # (remux copies packets, encode decodes again at full quality).
    skip_loop_filter: bool = True
    analysis_width: int = 160        # frames are downscaled once to this width for analysis
    max_analysis_height: int = 160   # ... and capped at this height (tall/rotated video)

    def __post_init__(self) -> None:
        if self.threads < 0 or self.analysis_width < 16 or self.max_analysis_height < 16:
            raise ConfigError("decode: threads must be >= 0 and analysis sizes >= 16")


@dataclass
class ShotsConfig:
    """Shot detection (pipeline/shots.py). Scores: ContentDetector's HSV score (0-255) and the
    structure distance S = 1 - correlation of 32x18 luma thumbnails (0 same picture, ~1 new one)."""

    cut_threshold: float = 27.0      # a hard cut needs ContentDetector's score (its default) ...
    cut_structure: float = 0.3       # ... and a structure jump S(t-1, t) at least this ...
    cut_contrast: float = 0.3        # ... that exceeds the jumps on either side by this (not motion)
    flash_max_frames: int = 3        # a change undone within this many frames is a flash, not a cut
    black_luma: int = 32             # luma (0-255, video range black = 16) at or below which a pixel is dark
    black_fraction: float = 0.9      # a frame with at least this share of dark pixels is black
    flat_std: float = 3.0            # a frame with less luma contrast than this is a solid colour
    fade_min_frames: int = 3         # shortest ramp into/out of black (or a solid colour) that is a fade
    fade_min_step: float = 0.01      # each fade frame moves at least this (relative) towards black
    dissolve_min_frames: int = 3     # shortest blend (frames strictly between two shots) that is a dissolve
    dissolve_max_frames: int = 60    # longest one looked for (at most 63)
    dissolve_structure: float = 0.4  # structure change across a dissolve window, at least,
    dissolve_color: float = 0.35     # ... and colour-histogram change (0-1) across it, at least,
    dissolve_structure_contrast: float = 0.4  # ... exceeding the change over the windows around it by this,
    dissolve_color_contrast: float = 0.3      # ... or colour-histogram change exceeding theirs by this
    min_shot_frames: int = 4         # content shorter than this between two gradual transitions is
                                     # part of them

    def __post_init__(self) -> None:
        if not 0 < self.dissolve_min_frames <= self.dissolve_max_frames <= 63:
            raise ConfigError("shots: need 0 < dissolve_min_frames <= dissolve_max_frames <= 63")
        if self.flash_max_frames < 0 or self.flash_max_frames > 4:
            raise ConfigError("shots.flash_max_frames must be in 0..4")
        if not 0 < self.black_fraction <= 1:
            raise ConfigError("shots.black_fraction must be in (0, 1]")


@dataclass
class ClipsConfig:
    min_seconds: float = 1.0         # shots (after margins) shorter than this are dropped
    max_seconds: float = 10.0        # longer shots are split into chunks of at most this
    margin_frames: int = 2           # frames trimmed at each shot boundary
    mode: Literal["reference", "remux", "encode"] = "remux"
    encode_width: int | None = None  # encode mode: target width (height keeps aspect, even)
    encode_fps: float | None = None  # encode mode: target frame rate (None keeps the source rate)
    encode_crf: int = 20
    encode_preset: str = "veryfast"  # libx264 speed/size trade-off (ultrafast ... veryslow)

    def __post_init__(self) -> None:
        if self.min_seconds <= 0 or self.max_seconds < self.min_seconds:
            raise ConfigError("clips: need 0 < min_seconds <= max_seconds")
        if self.margin_frames < 0:
            raise ConfigError("clips.margin_frames must be >= 0")


@dataclass
class SourcesConfig:
    cache_dir: str = ""              # staging cache for remote URLs; "" = LIB/.cache
    cache_max_gb: float = 20.0       # least-recently-used files are evicted past this size
    extensions: list[str] = field(default_factory=lambda: [
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".flv", ".wmv", ".mpg",
        ".mpeg", ".3gp", ".ogv"])
    retry_errors: bool = False       # on rerun, try again sources that failed before


@dataclass
class AfterIngestConfig:
    filter: bool = True                 # refresh the filter view (LIB/views/filters.parquet)
    caption: bool = False               # caption the new clips (recap caption) in the same job
    caption_config: str | None = None   # caption job YAML layered over configs/captioner.yaml
    caption_set: list[str] = field(default_factory=list)  # captioner --set overrides


@dataclass
class IngestConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    after: AfterIngestConfig = field(default_factory=AfterIngestConfig)


def load_ingest_config(path: str | Path | None = None, overrides: list[str] | None = None) -> IngestConfig:
    """Defaults from `configs/ingest.yaml`, then the user's file, then `--set` overrides."""
    return load_with_defaults(IngestConfig, "ingest.yaml", path, overrides)

"""Typed ingest configuration; defaults live in `configs/ingest.yaml` and in these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from trainer.typedconfig import ConfigError, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DecodeConfig:
    threads: int = 0                 # decoder threads; 0 = one per CPU the task was given
    analysis_width: int = 160        # frames are downscaled once to this width for analysis
    max_analysis_height: int = 160   # ... and capped at this height (tall/rotated video)

    def __post_init__(self) -> None:
        if self.threads < 0 or self.analysis_width < 16 or self.max_analysis_height < 16:
            raise ConfigError("decode: threads must be >= 0 and analysis sizes >= 16")


@dataclass
class ShotsConfig:
    cut_threshold: float = 27.0      # ContentDetector-style score that marks a hard cut
    adaptive_ratio: float = 3.0      # AdaptiveDetector ratio to the local average
    min_shot_frames: int = 8         # two cuts closer than this are one transition
    black_luma: float = 18.0         # mean luma (0-255) below which a frame is black
    fade_min_frames: int = 4         # shortest luma ramp to/from black counted as a fade
    dissolve_min_frames: int = 6     # shortest gradual transition counted as a dissolve
    dissolve_max_frames: int = 60
    flash_max_frames: int = 4        # a bright flash this short inside a shot is not a cut


@dataclass
class ClipsConfig:
    min_seconds: float = 1.0         # shots (after margins) shorter than this are dropped
    max_seconds: float = 10.0        # longer shots are split into chunks of at most this
    margin_frames: int = 2           # frames trimmed at each shot boundary
    mode: Literal["reference", "remux", "encode"] = "remux"
    encode_width: int | None = None  # encode mode: target width (height keeps aspect, even)
    encode_fps: float | None = None  # encode mode: target frame rate (None keeps the source rate)
    encode_crf: int = 20

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
class ExecutionConfig:
    cpus_per_video: float = 1.0      # Ray resources requested by each per-video task
    max_videos_in_flight: int = 0    # bound on concurrent per-video tasks; 0 = number of CPUs
    commit_every_videos: int = 16    # the library writer commits a batch this often ...
    commit_every_seconds: float = 20.0  # ... or after this long, whichever comes first


@dataclass
class IngestConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)


def load_ingest_config(path: str | Path | None = None, overrides: list[str] | None = None) -> IngestConfig:
    """Defaults from `configs/ingest.yaml`, then the user's file, then `--set` overrides."""
    defaults = yaml.safe_load((CONFIG_DIR / "ingest.yaml").read_text()) or {}
    return load_config(IngestConfig, path, overrides, base=defaults)

"""Typed ingest configuration; defaults live in `configs/ingest.yaml` and in these dataclasses.

Every value is checked when the config is loaded (ranges, choices), and a bad one fails naming its
key: a job never starts with a value that would fail per video, hang, or quietly do nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.ingest.signals.config import SignalsConfig
from pipeline.stages.execution import ExecutionConfig, check_range
from trainer.typedconfig import ConfigError, load_with_defaults

# libx264's presets, fastest first
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


@dataclass
class DecodeConfig:
    threads: int = 0                 # decoder threads; 0 = one per CPU the task was given
    # cpu: FFmpeg's software decoders; cuda: NVDEC through FFmpeg's hardware acceleration (frames
    # copied back to host memory for analysis; a codec NVDEC cannot take, or a machine without a
    # usable CUDA device, decodes on the CPU, said once per process)
    device: str = "cpu"
    # Frames of at most this many pixels (720p and smaller) decode on one thread whatever `threads`
    # says: they decode fast anyway, frame threads cost ~10% more CPU on them, and a task's other
    # CPUs serve other videos better. 0 = always `threads`.
    single_thread_pixels: int = 1280 * 720
    # Skip the in-loop deblocking filter (H.264/HEVC/VP8/VP9): ~15-20% less decode CPU. Analysis
    # frames are downscaled 4-12x, which averages block edges away; clip files are untouched
    # (remux copies packets, encode decodes again at full quality).
    skip_loop_filter: bool = True
    analysis_width: int = 160        # frames are downscaled once to this width for analysis
    max_analysis_height: int = 160   # ... and capped at this height (tall/rotated video)
    max_pixels: int = 8192 * 8192    # larger pictures are refused at probe time (`too_large`), before any is decoded

    def __post_init__(self) -> None:
        check_range("decode.threads", self.threads, 0, 256)
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"decode.device: {self.device!r} is not one of ['cpu', 'cuda']")
        check_range("decode.single_thread_pixels", self.single_thread_pixels, 0, 2**31 - 1)
        check_range("decode.analysis_width", self.analysis_width, 16, 4096)
        check_range("decode.max_analysis_height", self.max_analysis_height, 16, 4096)
        check_range("decode.max_pixels", self.max_pixels, 64 * 64, 2**31 - 1)


@dataclass
class ShotsConfig:
    """Shot detection (pipeline/ingest/shots.py). Scores: ContentDetector's HSV score (0-255) and the
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
    # a dissolve candidate: a structure change across the window of at least dissolve_structure,
    # with a colour change of at least dissolve_color or a structure change that clearly exceeds the
    # windows around it (dissolve_structure_contrast / dissolve_color_contrast); then it must fit
    # a blend of the frames on either side (pipeline/ingest/shots.py)
    dissolve_structure: float = 0.4
    dissolve_color: float = 0.35
    dissolve_structure_contrast: float = 0.4
    dissolve_color_contrast: float = 0.3
    min_shot_frames: int = 4         # content shorter than this between two gradual transitions is
                                     # part of them

    def __post_init__(self) -> None:
        # thresholds have no upper bound: one above any possible score turns that detector off
        for key, low, high in [("cut_threshold", 0, None), ("cut_structure", 0, None), ("cut_contrast", 0, None),
                               ("flash_max_frames", 0, 4), ("black_luma", 0, 255), ("flat_std", 0, None),
                               ("fade_min_frames", 1, None), ("fade_min_step", 0, 1), ("dissolve_min_frames", 1, 63),
                               ("dissolve_max_frames", 1, 63), ("dissolve_structure", 0, None), ("dissolve_color", 0, None),
                               ("dissolve_structure_contrast", 0, None), ("dissolve_color_contrast", 0, None),
                               ("min_shot_frames", 1, None)]:
            check_range(f"shots.{key}", getattr(self, key), low, high)
        check_range("shots.black_fraction", self.black_fraction, 0, 1, above=True)
        if self.dissolve_min_frames > self.dissolve_max_frames:
            raise ConfigError(f"shots.dissolve_min_frames ({self.dissolve_min_frames}) must be <= "
                              f"shots.dissolve_max_frames ({self.dissolve_max_frames})")


@dataclass
class ClipsConfig:
    min_seconds: float = 1.0         # shots (after margins) shorter than this are dropped
    max_seconds: float = 10.0        # longer shots are split into chunks of at most this
    margin_frames: int = 2           # frames trimmed at each shot boundary
    mode: Literal["reference", "remux", "encode"] = "remux"
    encode_width: int | None = None  # encode mode: at most this width (height keeps aspect, even; never enlarged)
    encode_fps: float | None = None  # encode mode: target frame rate (None keeps the source rate)
    encode_crf: int = 20             # libx264 quality: 0 (lossless) ... 51 (worst)
    encode_preset: str = "veryfast"  # libx264 speed/size trade-off (X264_PRESETS: ultrafast ... veryslow)

    def __post_init__(self) -> None:
        check_range("clips.min_seconds", self.min_seconds, 0, 24 * 3600, above=True)
        check_range("clips.max_seconds", self.max_seconds, 0, 24 * 3600, above=True)
        if self.max_seconds < self.min_seconds:
            raise ConfigError(f"clips.max_seconds ({self.max_seconds:g}) must be >= clips.min_seconds "
                              f"({self.min_seconds:g})")
        check_range("clips.margin_frames", self.margin_frames, 0, 10_000)
        if self.mode not in ("reference", "remux", "encode"):
            raise ConfigError(f"clips.mode: {self.mode!r} is not one of ['reference', 'remux', 'encode']")
        check_range("clips.encode_width", self.encode_width, 16, 16384, optional=True)
        check_range("clips.encode_fps", self.encode_fps, 0, 1000, above=True, optional=True)
        check_range("clips.encode_crf", self.encode_crf, 0, 51)
        if self.encode_preset not in X264_PRESETS:
            raise ConfigError(f"clips.encode_preset: {self.encode_preset!r} is not a libx264 preset "
                              f"(one of {', '.join(X264_PRESETS)})")


@dataclass
class SourcesConfig:
    cache_dir: str = ""              # staging cache for remote URLs; "" = LIB/.cache
    cache_max_gb: float = 20.0       # least-recently-used files are evicted past this size
    extensions: list[str] = field(default_factory=lambda: [
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".flv", ".wmv", ".mpg",
        ".mpeg", ".3gp", ".ogv"])
    retry_errors: bool = False       # on rerun, try again sources recorded as bad input (`error`) too
    # Budget of one source, fetch to clip files: past it the source becomes an error row (`timeout`)
    # and the job goes on; 0 = no limit. A hostile file (a decoder spinning on crafted data, a server
    # that never finishes) costs at most this much.
    timeout_s: float = 3600.0        # wall-clock seconds
    cpu_timeout_s: float = 7200.0    # CPU seconds, all threads of the process that ingests it

    def __post_init__(self) -> None:
        check_range("sources.cache_max_gb", self.cache_max_gb, 0, above=True)
        check_range("sources.timeout_s", self.timeout_s, 0)
        check_range("sources.cpu_timeout_s", self.cpu_timeout_s, 0)
        if self.cpu_timeout_s and self.cpu_timeout_s < 1:
            raise ConfigError(f"sources.cpu_timeout_s: must be 0 (no limit) or >= 1, got {self.cpu_timeout_s!r}")
        bad = [e for e in self.extensions if not (len(e) > 1 and e.startswith(".") and "/" not in e)]
        if bad or not self.extensions:
            raise ConfigError(f"sources.extensions: each must look like '.mp4', got {bad or self.extensions!r}")


@dataclass
class AfterIngestConfig:
    filter: bool = True                 # refresh the filter view (LIB/views/filters.parquet)
    caption: bool = False               # caption the new clips (recap caption) in the same job
    caption_config: str | None = None   # caption job YAML layered over configs/captioner.yaml
    caption_set: list[str] = field(default_factory=list)  # captioner --set overrides

    def __post_init__(self) -> None:
        if self.caption_config and not Path(self.caption_config).expanduser().is_file():
            raise ConfigError(f"after.caption_config: no such file: {self.caption_config}")


@dataclass
class IngestConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    # auto, as configs/ingest.yaml: local on one machine, Ray with a ray_address
    execution: ExecutionConfig = field(default_factory=lambda: ExecutionConfig(executor="auto"))
    after: AfterIngestConfig = field(default_factory=AfterIngestConfig)


def load_ingest_config(path: str | Path | None = None, overrides: list[str] | None = None) -> IngestConfig:
    """Defaults from `configs/ingest.yaml`, then the user's file, then `--set` overrides."""
    return load_with_defaults(IngestConfig, "ingest.yaml", path, overrides)

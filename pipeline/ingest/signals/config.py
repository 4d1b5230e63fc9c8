"""Typed configuration of the clip signals (the `signals:` section of the ingest config); every
value is range-checked at load, naming its key."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.stages.execution import check_range
from trainer.typedconfig import ConfigError

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


@dataclass
class MotionConfig:
    flow_width: int = 80          # Farneback runs on the analysis luma downscaled to this width
    flow_step: int = 4            # flow between frames i-step and i, for every step-th frame i (4: 0.13 s at 30 fps;
                                  # 3 costs a third more and reads ~8% higher on near-static clips)
    static_max: float = 1.0       # camera speed (% of frame width / s) below which it is static
    zoom_min: float = 3.0         # scale change (% / s) that counts as a zoom
    shaky_min: float = 6.0        # jitter around the smoothed camera path (% width / s) ...
    shaky_ratio: float = 1.5      # ... that is also this many times the steady motion: shaky

    def __post_init__(self) -> None:
        check_range("signals.motion.flow_width", self.flow_width, 16, 1024)
        check_range("signals.motion.flow_step", self.flow_step, 1, 1000)
        for key in ("static_max", "zoom_min", "shaky_min"):
            check_range(f"signals.motion.{key}", getattr(self, key), 0)
        check_range("signals.motion.shaky_ratio", self.shaky_ratio, 0, above=True)


@dataclass
class ExposureConfig:
    black_luma: float = 18.0      # mean luma (0-255) below which a frame is black
    blank_std: float = 4.0        # luma std below which a frame is blank (one flat colour)
    frozen_diff: float = 0.1      # mean |luma difference| to the previous frame below which it repeats it ...
    frozen_min_run: int = 6       # ... and a frame is frozen inside a run of at least this many repeats
                                  # (shorter runs are duplicated frames of low-fps / pulldown sources)

    def __post_init__(self) -> None:
        check_range("signals.exposure.black_luma", self.black_luma, 0, 255)
        check_range("signals.exposure.blank_std", self.blank_std, 0)
        check_range("signals.exposure.frozen_diff", self.frozen_diff, 0)
        check_range("signals.exposure.frozen_min_run", self.frozen_min_run, 1)


@dataclass
class BarsConfig:
    max_luma: float = 24.0        # a bar row/column is darker than this on average ...
    max_std: float = 8.0          # ... and this flat
    min_share: float = 0.01       # bars thinner than this share of the side are ignored

    def __post_init__(self) -> None:
        check_range("signals.bars.max_luma", self.max_luma, 0, 255)
        check_range("signals.bars.max_std", self.max_std, 0)
        check_range("signals.bars.min_share", self.min_share, 0, 0.5)


@dataclass
class TextConfig:
    enabled: bool = True
    every_s: float = 2.0          # always read the first detail frame at or after each multiple of this; the ones
                                  # in between only when their shot has no such reading (see signals/text.py)
    det_width: int = 320          # text detection runs at this width; reading uses the detail frame
    min_score: float = 0.5        # RapidOCR recognition confidence below which a box is dropped
    max_chars: int = 500          # stored text is cut to this length
    # true: space regular readings out on small sources like the other sampled signals (signals.
    # full_rate_pixels; 360p: -30% of the signals' CPU) at the price of missing overlays shorter than
    # the stretched interval (a 2 s title, a subtitle); false: every every_s whatever the size
    stretch: bool = False

    def __post_init__(self) -> None:
        check_range("signals.text.every_s", self.every_s, 0, above=True)
        check_range("signals.text.det_width", self.det_width, 32, 4096)
        check_range("signals.text.min_score", self.min_score, 0, 1)
        check_range("signals.text.max_chars", self.max_chars, 1)


def ocr_available() -> bool:
    """Whether text signals' OCR engine is installed (rapidocr-onnxruntime has no wheels for Python
    3.13+); asked where a job starts and for each video's analyzers, without importing it (or
    OpenCV): ~33 us a call."""
    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


@dataclass
class AestheticConfig:
    model: str = ""               # HF id or local path of a CLIP/SigLIP model; "" = no aesthetic score
    head: str = ""                # .safetensors/.pth of the linear/MLP head (LAION predictor layout)
    head_activation: str = "none"  # between head layers: "none" (LAION v2 MLP) or "relu"
    every_s: float = 2.0          # score the first detail frame at or after each multiple of this
    device: str = "cpu"           # ViT-L/14 costs ~2 s per image on one CPU thread: use a GPU
    batch_size: int = 16

    def __post_init__(self) -> None:
        if bool(self.model) != bool(self.head):
            raise ConfigError("signals.aesthetic: set both model and head, or neither")
        if self.head_activation not in ("none", "relu"):
            raise ConfigError(f"signals.aesthetic.head_activation: {self.head_activation!r} is not one of "
                              "['none', 'relu']")
        check_range("signals.aesthetic.every_s", self.every_s, 0, above=True)
        check_range("signals.aesthetic.batch_size", self.batch_size, 1, 4096)
        if not _DEVICE.match(self.device):
            raise ConfigError(f"signals.aesthetic.device: {self.device!r} is not cpu, cuda, cuda:N or mps")
        # a missing model would otherwise fail once per video, after all the decoding; the model
        # itself is checked where the job starts (pipeline.ingest.signals.aesthetic.check_model)
        if self.head and not Path(self.head).expanduser().is_file():
            raise ConfigError(f"signals.aesthetic.head: no such file: {self.head}")


@dataclass
class SignalsConfig:
    enabled: bool = True
    detail_every_s: float = 1.0   # one larger 'detail' frame this often (OCR, sharpness, bars, aesthetic)
    detail_width: int = 480       # width of those detail frames
    phash_frames: int = 3         # perceptual hashes kept per clip (evenly spread inside it) ...
    phash_every: int = 6          # ... chosen among every phash_every-th frame (5 candidates per second at 30 fps)
    # Cost follows the decode: a small video decodes several times faster than a 1080p one, while
    # the signals' frames (160 px analysis, 480 px detail, 320 px OCR) are the same size. So below
    # `full_rate_pixels` per frame the sampled work (regular OCR readings, colourfulness, and flow
    # pairs up to 2x) is spaced out by full_rate_pixels / the source's pixels, at most `max_stretch`
    # times (1080p and up: as configured; 720p: x2.25; 360p: x4). Every shot is still read for text.
    full_rate_pixels: int = 1920 * 1080   # 0 = always sample at the configured intervals
    max_stretch: float = 4.0
    motion: MotionConfig = field(default_factory=MotionConfig)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)
    bars: BarsConfig = field(default_factory=BarsConfig)
    text: TextConfig = field(default_factory=TextConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)

    def __post_init__(self) -> None:
        check_range("signals.detail_every_s", self.detail_every_s, 0, above=True)
        check_range("signals.detail_width", self.detail_width, 64, 4096)
        check_range("signals.phash_frames", self.phash_frames, 1, 1000)
        check_range("signals.phash_every", self.phash_every, 1, 10_000)
        check_range("signals.full_rate_pixels", self.full_rate_pixels, 0, 2**31 - 1)
        check_range("signals.max_stretch", self.max_stretch, 1, 100)

    def stretch(self, source_size: tuple[int, int]) -> float:
        """How much farther apart the sampled signals are taken on a source of this (w, h): 1 at
        `full_rate_pixels` and above, full_rate_pixels / pixels below it, at most `max_stretch`."""
        pixels = source_size[0] * source_size[1]
        if not self.full_rate_pixels or pixels <= 0:
            return 1.0
        return min(self.max_stretch, max(1.0, self.full_rate_pixels / pixels))

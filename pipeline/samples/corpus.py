"""The synthetic sample corpus (`recap samples`) and the 1080p benchmark video.

The corpus is six short videos (3-8 s) in mixed sizes, frame rates and codecs (H.264 MP4, VP9
WebM, MPEG-4 Part 2 in Matroska) made of procedural shots joined by hard cuts, fades through
black and cross-dissolves, with a static shot, fast motion (a whip pan with large fast shapes)
and in-shot flashes that are not transitions. The structure of each video is fixed; the seed
draws every length, position and look, so one seed always gives the same `truth.json` and the
same decoded frames (encoders run single-threaded).

`truth.json`::

    {"version": 1, "seed": 0, "videos": {NAME: {
        "fps": "30000/1001", "fps_float": 29.97, "frames": 190, "duration_s": 6.34,
        "width": 320, "height": 240, "codec": "h264", "container": "mp4", "pix_fmt": "yuv420p",
        "transitions": [{"kind": "cut"|"fade_out"|"black"|"fade_in"|"dissolve",
                         "start_frame": 45, "end_frame": 57}, ...],
        "shots":   [{"start_frame": 0, "end_frame": 45, "motion": "pan"}, ...],
        "flashes": [{"start_frame": 80, "end_frame": 82}, ...]}}}

Frame ranges are 0-based decode-order indices, end exclusive. A cut has `start_frame ==
end_frame` = the first frame of the new shot. Transitions and shots tile [0, frames) exactly
(cuts take no frames); a fade through black is three adjacent transitions (fade_out, black,
fade_in). `shots` are the clean ranges: no frame of a shot belongs to any transition. Flash
frames lie inside a shot and are part of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.samples.synth import Cut, Dissolve, Edit, FadeThroughBlack, Shot, plan_frames, render_frames, write_video

TRUTH_FILE = "truth.json"
TRUTH_VERSION = 1

# codec -> (PyAV encoder, options, bit rate or None): quality is high so fades and dissolves
# survive encoding.
# Reproducible output needs one thread each and, for x264, no assembly: on an AVX-512 machine
# its assembly gave run-to-run differences (up to 47 levels in decoded pixels; asm=avx2 did
# not). asm=0 is the portable fix and costs about 3x the (small) encode time.
ENCODERS: dict[str, tuple[str, dict[str, str], int | None]] = {
    "h264": ("libx264", {"preset": "veryfast", "crf": "18", "x264-params": "asm=0"}, None),
    "vp9": ("libvpx-vp9", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "0"}, None),
    # (through the API, -q:v needs a quality on every frame; a bit rate is simpler)
    "mpeg4": ("mpeg4", {}, 1_500_000),
}
CONTAINERS = {".mp4": "mp4", ".webm": "webm", ".mkv": "matroska"}


class _Lengths:
    """Draws frame counts for one video from its own random stream."""

    def __init__(self, rng: np.random.Generator, fps: Fraction):
        self.rng, self.fps = rng, float(fps)

    def seconds(self, lo: float, hi: float) -> int:
        return int(round(self.rng.uniform(lo, hi) * self.fps))

    def frames(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def flash_in(self, shot_frames: int, margin: int = 10) -> int:
        return self.frames(margin, shot_frames - margin - 2)


def _cuts(d: _Lengths) -> list[Edit]:
    return [Shot(d.seconds(1.5, 1.9), "pan"), Cut(), Shot(d.seconds(1.5, 1.9), "fast"), Cut(),
            Shot(d.seconds(1.5, 1.9), "objects"), Cut(), Shot(d.seconds(1.5, 1.9), "static")]


def _fades(d: _Lengths) -> list[Edit]:
    def fade() -> FadeThroughBlack:
        return FadeThroughBlack(d.frames(5, 9), d.frames(2, 5), d.frames(5, 9))
    return [Shot(d.seconds(1.6, 2.0), "objects"), fade(), Shot(d.seconds(1.6, 2.0), "static"), fade(),
            Shot(d.seconds(1.6, 2.0), "pan")]


def _dissolves(d: _Lengths) -> list[Edit]:
    return [Shot(d.seconds(1.3, 1.6), "pan"), Dissolve(d.frames(8, 20)), Shot(d.seconds(1.3, 1.6), "objects"),
            Dissolve(d.frames(8, 20)), Shot(d.seconds(1.3, 1.6), "fast"), Cut(), Shot(d.seconds(1.3, 1.6), "objects")]


def _mixed(d: _Lengths) -> list[Edit]:
    first = d.seconds(2.0, 2.4)
    return [FadeThroughBlack(0, d.frames(2, 4), d.frames(5, 8)),
            Shot(first, "objects", flash_at=d.flash_in(first)), Cut(), Shot(d.seconds(1.4, 1.8), "pan"),
            Dissolve(d.frames(8, 14)), Shot(d.seconds(1.4, 1.8), "fast"),
            FadeThroughBlack(d.frames(5, 8), d.frames(2, 4), 0)]


def _portrait(d: _Lengths) -> list[Edit]:
    first = d.seconds(1.8, 2.2)
    return [Shot(first, "pan", flash_at=d.flash_in(first), flash_frames=2), Cut(),
            Shot(d.seconds(1.5, 1.8), "objects"), Dissolve(d.frames(8, 12)), Shot(d.seconds(1.5, 1.8), "static")]


def _single(d: _Lengths) -> list[Edit]:
    n = d.seconds(3.0, 4.0)
    return [Shot(n, "objects", flash_at=d.flash_in(n))]


@dataclass(frozen=True)
class SampleSpec:
    name: str
    width: int
    height: int
    fps: str
    codec: str                                  # key of ENCODERS
    edits: Callable[[_Lengths], list[Edit]]


CORPUS: tuple[SampleSpec, ...] = (
    SampleSpec("cuts.mp4", 640, 360, "30", "h264", _cuts),
    SampleSpec("fades.webm", 480, 270, "25", "vp9", _fades),
    SampleSpec("dissolves.mp4", 320, 240, "30000/1001", "h264", _dissolves),
    SampleSpec("mixed.mkv", 512, 288, "24", "mpeg4", _mixed),
    SampleSpec("portrait.mp4", 270, 480, "30", "h264", _portrait),
    SampleSpec("single_shot.webm", 320, 240, "24", "vp9", _single),
)


def _plan(spec: SampleSpec, index: int, seed: int) -> tuple[list[Edit], int, dict]:
    """Edit list, render seed and truth entry of one corpus video (no pixels touched)."""
    rng = np.random.default_rng([seed, index])
    fps = Fraction(spec.fps)
    edits = spec.edits(_Lengths(rng, fps))
    render_seed = int(rng.integers(0, 2**63 - 1))
    _, timeline = plan_frames(edits)
    entry = {
        "fps": f"{fps.numerator}/{fps.denominator}", "fps_float": float(fps),
        "frames": timeline["frames"], "duration_s": round(timeline["frames"] / float(fps), 6),
        "width": spec.width, "height": spec.height, "codec": spec.codec,
        "container": CONTAINERS[Path(spec.name).suffix], "pix_fmt": "yuv420p",
        "transitions": timeline["transitions"], "shots": timeline["shots"], "flashes": timeline["flashes"],
    }
    return edits, render_seed, entry


def corpus_truth(seed: int = 0) -> dict:
    """The corpus's ground truth for a seed, computed without rendering anything."""
    videos = {spec.name: _plan(spec, i, seed)[2] for i, spec in enumerate(CORPUS)}
    return {"version": TRUTH_VERSION, "seed": seed, "videos": videos}


def write_sample_video(out_dir: str | Path, name: str, seed: int = 0) -> dict:
    """Write one corpus video into out_dir (atomically) and return its truth entry."""
    index = next((i for i, spec in enumerate(CORPUS) if spec.name == name), None)
    if index is None:
        raise KeyError(f"no sample named {name!r}; known: {[s.name for s in CORPUS]}")
    spec = CORPUS[index]
    edits, render_seed, entry = _plan(spec, index, seed)
    encoder, options, bit_rate = ENCODERS[spec.codec]
    out = Path(out_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")   # keeps the suffix: it picks the muxer
    n = write_video(partial, render_frames(edits, spec.width, spec.height, render_seed), spec.fps, encoder,
                    options=options, bit_rate=bit_rate, threads=1)
    if n != entry["frames"]:
        raise RuntimeError(f"{name}: wrote {n} frames, planned {entry['frames']}")
    os.replace(partial, out)
    return entry


def write_samples(out_dir: str | Path, seed: int = 0) -> dict:
    """Write the whole corpus and `truth.json` (last, so its presence means the corpus is complete)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = corpus_truth(seed)
    for name in truth["videos"]:
        write_sample_video(out_dir, name, seed)
    tmp = out_dir / f".{TRUTH_FILE}.partial"
    tmp.write_text(json.dumps(truth, indent=1) + "\n")
    os.replace(tmp, out_dir / TRUTH_FILE)
    return truth


def load_truth(corpus_dir: str | Path) -> dict:
    return json.loads((Path(corpus_dir) / TRUTH_FILE).read_text())


def write_benchmark_video(path: str | Path, seconds: float, width: int = 1920, height: int = 1080,
                          fps: int | str = 30, seed: int = 0) -> dict:
    """A web-like H.264 file for the ingest benchmark; returns its truth ({frames, fps, cuts, shots}).

    Textured moving shots (objects, pans, fast whips) with a hard cut every 2-5 s, encoded
    streaming (bounded memory) with x264 veryfast at a web-video rate (CRF 23 capped at about
    0.1 bit per pixel, ~6 Mbit/s at 1080p30) and a 2 s GOP. Uses all encoder threads, so the
    bytes may vary between runs; the frames' content does not.
    """
    rate = Fraction(fps)
    rng = np.random.default_rng([seed, 1080])
    total = int(round(seconds * float(rate)))
    motions = ("objects", "pan", "fast", "objects", "pan")
    edits: list[Edit] = []
    used = 0
    while used < total:
        n = min(int(round(rng.uniform(2.0, 5.0) * float(rate))), total - used)
        if edits:
            edits.append(Cut())
        edits.append(Shot(n, motions[len(edits) // 2 % len(motions)]))
        used += n
    _, timeline = plan_frames(edits)
    maxrate = int(0.1 * width * height * float(rate))
    options = {"preset": "veryfast", "crf": "23", "maxrate": str(maxrate), "bufsize": str(2 * maxrate)}
    write_video(path, render_frames(edits, width, height, int(rng.integers(0, 2**63 - 1))), rate, "libx264",
                options=options, gop=int(round(2 * float(rate))), threads=0)
    return {"frames": timeline["frames"], "fps": f"{rate.numerator}/{rate.denominator}",
            "width": width, "height": height,
            "cuts": [t["start_frame"] for t in timeline["transitions"]], "shots": timeline["shots"]}

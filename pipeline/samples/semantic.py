"""The semantic sample corpus (`recap samples --semantic`): short videos whose content is set by
their caption, for proving that a model trained on the library follows its prompts.

Each video is one shot: a coloured square moving in one direction over a dark background, e.g.
"a red square moving left on a dark background", crossing about 70% of the frame in 1.5 s.
Every colour x direction pair appears `per_pair` times with small draws of size, speed, offset,
shade and background tint; the layout (a fixed diagonal gradient, the square crossing the middle)
is shared, so a tiny CPU-trained model has a frame of reference. Next to the videos,
`captions.jsonl` gives each one's caption in the format `recap caption LIB --from` imports
({"uri", "start_s", "end_s", "caption"}, uri relative to the file), and `truth.json` the colour and
direction of each video (what `tests.support.measure_motion` must read back).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.samples.synth import write_video

# well separated in hue, so a tracker (and a tiny model) can tell them apart
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 40), "green": (40, 200, 70), "blue": (45, 95, 240), "yellow": (235, 215, 45),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
CAPTIONS_FILE = "captions.jsonl"
TRUTH_FILE = "truth.json"
ENCODER_OPTIONS = {"preset": "veryfast", "crf": "16", "x264-params": "asm=0"}   # reproducible (see corpus.py)


def caption_for(colour: str, direction: str) -> str:
    return f"a {colour} square moving {direction} on a dark background"


def semantic_frames(rng: np.random.Generator, colour: str, direction: str, size: int = 64,
                    frames: int = 24) -> np.ndarray:
    """(frames, size, size, 3) uint8: a `colour` square crossing a dark gradient in `direction`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # the same gentle diagonal gradient under every video (a little tint varies): a fixed frame of
    # reference that lets a tiny model place the square, as real scenes have fixed layouts
    background = rng.uniform(46, 56, 3) + 16 * (xx + yy - 1)[..., None] / 2
    side = size * rng.uniform(0.25, 0.27)
    travel = size * rng.uniform(0.7, 0.72)            # distance covered over the whole video
    dx, dy = DIRECTIONS[direction]
    across = rng.uniform(0.46, 0.54) * size           # position on the axis it does not move along
    start = size / 2 - travel / 2
    rgb = np.array(COLOURS[colour], dtype=np.float32) * rng.uniform(0.92, 1.0)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for i in range(frames):
        along = start + travel * i / max(1, frames - 1)
        cx = along if dx > 0 else size - along if dx < 0 else across
        cy = along if dy > 0 else size - along if dy < 0 else across
        # soft edges (one pixel of anti-aliasing) keep sub-pixel motion smooth after encoding
        inside_x = np.clip(side / 2 + 0.5 - np.abs(xx * size + 0.5 - cx), 0, 1)
        inside_y = np.clip(side / 2 + 0.5 - np.abs(yy * size + 0.5 - cy), 0, 1)
        alpha = (inside_x * inside_y)[..., None]
        out[i] = np.clip(background * (1 - alpha) + rgb * alpha, 0, 255).astype(np.uint8)
    return out


def write_semantic_samples(out_dir: str | Path, seed: int = 0, per_pair: int = 2, size: int = 64,
                           fps: int = 16, seconds: float = 1.5, colours: list[str] | None = None,
                           directions: list[str] | None = None) -> dict:
    """Write the videos, captions.jsonl and truth.json into `out_dir`; returns the truth dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = int(round(seconds * fps))
    truth: dict = {"version": 1, "seed": seed, "fps": fps, "frames": frames, "size": size, "videos": {}}
    lines = []
    for colour in colours or list(COLOURS):
        for direction in directions or list(DIRECTIONS):
            for k in range(per_pair):
                name = f"{colour}_{direction}_{k}.mp4"
                video = semantic_frames(rng, colour, direction, size, frames)
                write_video(out / name, video, Fraction(fps), "libx264", options=dict(ENCODER_OPTIONS))
                caption = caption_for(colour, direction)
                truth["videos"][name] = {"colour": colour, "direction": direction, "caption": caption}
                lines.append({"uri": name, "start_s": 0.0, "end_s": frames / fps, "caption": caption})
    (out / CAPTIONS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    return truth


__all__ = ["COLOURS", "DIRECTIONS", "CAPTIONS_FILE", "TRUTH_FILE", "caption_for", "semantic_frames",
           "write_semantic_samples"]

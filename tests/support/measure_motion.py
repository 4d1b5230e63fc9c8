"""Read the colour and motion direction of the one moving object in a short video (a simple tracker
for the prompt-following check; separate from any model code).

Per frame, the object is the set of pixels far from the frame's median colour (the background
covers most of the frame); its colour is the mean of those pixels over the clip, named by the
nearest palette colour in hue, and its direction is the sign of the larger component of the
centroid's displacement (a least-squares line through the per-frame centroids).
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass

import numpy as np

from pipeline.samples.semantic import COLOURS, DIRECTIONS


@dataclass
class Track:
    colour: str | None            # nearest palette colour, None when no object was found
    direction: str | None         # left / right / up / down, None when it hardly moves
    velocity: tuple[float, float]  # centroid motion in frame widths / heights per frame (x, y)
    found: int                    # frames in which an object was found


def _hue(rgb: np.ndarray) -> tuple[float, float, float]:
    return colorsys.rgb_to_hsv(*(np.clip(rgb, 0, 255) / 255.0))


def name_colour(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]] = COLOURS) -> str:
    """The palette colour nearest to `rgb` in hue (circular distance)."""
    h, _, _ = _hue(np.asarray(rgb, dtype=np.float64))
    def dist(ref: tuple[int, int, int]) -> float:
        d = abs(h - _hue(np.asarray(ref, dtype=np.float64))[0])
        return min(d, 1 - d)
    return min(palette, key=lambda name: dist(palette[name]))


def track(frames: np.ndarray, min_contrast: float = 60.0, min_motion: float = 0.02) -> Track:
    """frames: (T, H, W, 3) uint8 RGB. `min_contrast`: how far (RGB distance) from the background
    a pixel must be to count as the object; `min_motion`: the least displacement over the clip, as
    a share of the frame side, that counts as moving."""
    video = frames.astype(np.float32)
    t, h, w, _ = video.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    centroids, times, colours, weights = [], [], [], []
    for i, frame in enumerate(video):
        background = np.median(frame.reshape(-1, 3), axis=0)
        distance = np.linalg.norm(frame - background, axis=-1)
        weight = np.clip(distance - min_contrast, 0, None)
        total = weight.sum()
        if total < 1e-3 * h * w:       # nothing stands out: no object in this frame
            continue
        centroids.append(((weight * xx).sum() / total / w, (weight * yy).sum() / total / h))
        times.append(i)
        colours.append((weight[..., None] * frame).sum(axis=(0, 1)) / total)
        weights.append(total)
    if not centroids:
        return Track(None, None, (0.0, 0.0), 0)
    colour = name_colour(np.average(np.array(colours), axis=0, weights=np.array(weights)))
    if len(centroids) < 2:
        return Track(colour, None, (0.0, 0.0), len(centroids))
    c, tt = np.array(centroids), np.array(times, dtype=np.float64)
    vx, vy = (float(np.polyfit(tt, c[:, k], 1)[0]) for k in (0, 1))
    span = tt[-1] - tt[0]
    direction = None
    if max(abs(vx), abs(vy)) * span >= min_motion:
        direction = ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")
    return Track(colour, direction, (vx, vy), len(centroids))


_WORDS = re.compile(r"[a-z]+")


def parse_caption(text: str) -> tuple[str | None, str | None]:
    """(colour, direction) a caption names, e.g. "a red square moving left ..." -> ("red", "left")."""
    words = _WORDS.findall(text.lower())
    colour = next((w for w in words if w in COLOURS), None)
    direction = next((w for w in words if w in DIRECTIONS), None)
    return colour, direction


def follows(frames: np.ndarray, caption: str) -> bool:
    """Whether the video shows the colour and the direction its caption names."""
    found = track(frames)
    return (found.colour, found.direction) == parse_caption(caption)


__all__ = ["Track", "track", "name_colour", "parse_caption", "follows"]

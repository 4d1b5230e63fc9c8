"""Procedural video with exact ground truth, for samples, tests and benchmarks.

A video is an edit list: `Shot`s joined by `Cut`, `Dissolve` or `FadeThroughBlack`. Each shot is
its own procedural scene (a smooth colour field around one hue, textured noise and structure,
a few shapes; optionally a camera pan done by sliding a crop over a larger texture). Frames are
rendered one at a time, so memory stays bounded for any length. The ground truth (transition,
shot and flash frame ranges) follows from the edit list by arithmetic alone, so it never depends
on the encoder.

Frame ranges are 0-based decode-order indices, end exclusive. A cut is a zero-length transition
at the first frame of the new shot (`start_frame == end_frame`): a clip [a, b) contains it when
a < cut < b.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

MOTIONS = ("static", "objects", "fast", "pan")
FLASH_STRENGTH = 0.75   # a flash frame moves this far towards white
PAN_PAD = 0.5           # a panning shot's texture is this much larger than the frame (per axis)


# --- the edit list -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shot:
    """`frames` clean frames of one scene; the transitions around it add frames of their own."""

    frames: int
    motion: str = "objects"         # static | objects | fast | pan
    flash_at: int | None = None     # offset into the clean range of an in-shot flash
    flash_frames: int = 1


@dataclass(frozen=True)
class Cut:
    """The next shot starts on the next frame."""


@dataclass(frozen=True)
class Dissolve:
    """A linear cross-blend over `frames` frames; both shots keep moving during it."""

    frames: int


@dataclass(frozen=True)
class FadeThroughBlack:
    """Fade the shot out, hold black, fade the next one in. A zero length leaves that part out:
    `fade_out=0` cuts to black (or starts the video black), `fade_in=0` cuts in from black (or
    ends the video)."""

    fade_out: int
    black: int
    fade_in: int


Edit = Shot | Cut | Dissolve | FadeThroughBlack


@dataclass(frozen=True)
class Layer:
    shot: int       # index among the edit list's shots
    t: int          # frame index on that shot's own clock (0 = its first visible frame)
    weight: float


@dataclass(frozen=True)
class FrameRecipe:
    """How to compose one output frame from the shots' scenes."""

    layers: tuple[Layer, ...]   # weights sum to 1 (empty for black)
    gain: float = 1.0           # fade factor towards black
    flash: bool = False


def _check(edits: Sequence[Edit]) -> None:
    for k, e in enumerate(edits):
        last = k == len(edits) - 1
        prev_shot = k > 0 and isinstance(edits[k - 1], Shot)
        next_shot = not last and isinstance(edits[k + 1], Shot)
        if isinstance(e, Shot):
            if e.frames < 1 or e.motion not in MOTIONS:
                raise ValueError(f"bad shot {e}")
            if e.flash_at is not None and not (0 <= e.flash_at and e.flash_at + e.flash_frames <= e.frames):
                raise ValueError(f"flash outside its shot: {e}")
            if prev_shot:
                raise ValueError("two shots need a transition between them")
        elif isinstance(e, FadeThroughBlack):
            if min(e.fade_out, e.black, e.fade_in) < 0:
                raise ValueError(f"negative length: {e}")
            if (e.fade_out and not prev_shot) or (e.fade_in and not next_shot):
                raise ValueError(f"a fade needs a shot on the side it fades: {e}")
            if e.fade_out + e.black + e.fade_in == 0:
                raise ValueError("an empty fade")
        elif isinstance(e, (Cut, Dissolve)):
            if not (prev_shot and next_shot):
                raise ValueError(f"{type(e).__name__} must sit between two shots")
            if isinstance(e, Dissolve) and e.frames < 1:
                raise ValueError(f"bad dissolve {e}")
        else:
            raise TypeError(f"not an edit: {e!r}")
    if not any(isinstance(e, Shot) for e in edits):
        raise ValueError("an edit list needs at least one shot")


def plan_frames(edits: Sequence[Edit]) -> tuple[list[FrameRecipe], dict]:
    """Recipes for every output frame and the ground truth: {frames, transitions, shots, flashes}."""
    _check(edits)
    recipes: list[FrameRecipe] = []
    transitions: list[dict] = []
    shots: list[dict] = []
    flashes: list[dict] = []
    first_visible: dict[int, int] = {}   # shot -> global frame where its clock starts
    current = -1                         # the last shot started

    def layer(shot: int, ahead: int = 0, weight: float = 1.0) -> Layer:
        """`shot` as seen `ahead` frames after the current end of the video."""
        return Layer(shot, len(recipes) + ahead - first_visible[shot], weight)

    def transition(kind: str, frames: list[FrameRecipe]) -> None:
        if frames:
            transitions.append({"kind": kind, "start_frame": len(recipes), "end_frame": len(recipes) + len(frames)})
            recipes.extend(frames)

    for e in edits:
        if isinstance(e, Shot):
            current += 1
            first_visible.setdefault(current, len(recipes))
            start = len(recipes)
            for j in range(e.frames):
                flash = e.flash_at is not None and e.flash_at <= j < e.flash_at + e.flash_frames
                recipes.append(FrameRecipe((layer(current),), flash=flash))
            shots.append({"start_frame": start, "end_frame": len(recipes), "motion": e.motion})
            if e.flash_at is not None:
                flashes.append({"start_frame": start + e.flash_at,
                                "end_frame": start + e.flash_at + e.flash_frames})
        elif isinstance(e, Cut):
            transitions.append({"kind": "cut", "start_frame": len(recipes), "end_frame": len(recipes)})
        elif isinstance(e, Dissolve):
            first_visible[current + 1] = len(recipes)
            w = [(i + 1) / (e.frames + 1) for i in range(e.frames)]   # never 0 or 1
            transition("dissolve", [FrameRecipe((layer(current, i, 1 - w[i]), layer(current + 1, i, w[i])))
                                    for i in range(e.frames)])
        else:
            # ramps never reach 0 or 1: every fade frame differs from black and from the clean shot
            out, into = e.fade_out, e.fade_in
            transition("fade_out", [FrameRecipe((layer(current, i),), gain=(out - i) / (out + 1)) for i in range(out)])
            transition("black", [FrameRecipe((), gain=0.0)] * e.black)
            if into:
                first_visible[current + 1] = len(recipes)
            transition("fade_in", [FrameRecipe((layer(current + 1, i),), gain=(i + 1) / (into + 1))
                                   for i in range(into)])
    truth = {"frames": len(recipes), "transitions": transitions, "shots": shots, "flashes": flashes}
    return recipes, truth


# --- scenes --------------------------------------------------------------------------------------

def _bounce(x: float, lo: float, hi: float) -> float:
    """Triangle wave: x moving freely, reflected back and forth inside [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)


def _texture(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    """A smooth colour field near `hue` (OpenCV units, 0-180) with blotchy texture and some edges."""
    gh, gw = int(rng.integers(2, 5)), int(rng.integers(3, 6))
    hues = hue + rng.uniform(-15, 15, (gh, gw))
    sat = rng.uniform(130, 235, (gh, gw))
    val = rng.uniform(110, 225, (gh, gw))
    field = cv2.resize(np.stack([hues, sat, val], -1).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    field[..., 0] %= 180
    field[..., 1:] = np.clip(field[..., 1:], 0, 255)
    rgb = cv2.cvtColor(field.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    # blotches plus finer grain: real-looking detail for the encoder and for motion
    blotch = cv2.resize(rng.standard_normal((h // 24 + 2, w // 24 + 2)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    grain = cv2.resize(rng.standard_normal((h // 3 + 2, w // 3 + 2)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_LINEAR)
    rgb += (18 * blotch + 7 * grain)[..., None]
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    # a few straight edges (walls, poles, windows) so pans have structure to follow
    for _ in range(int(rng.integers(6, 14))):
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        shade = tuple(int(c) for c in np.clip(out[y0, x0].astype(int) + rng.integers(-60, 60), 0, 255))
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), shade, int(rng.integers(1, 4)))
    return out


class Scene:
    """One shot's procedural content: `frame(t)` is a pure function of the shot-local time t."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, hue: float, motion: str = "objects"):
        if motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
        self.width, self.height, self.motion = width, height, motion
        pans = motion in ("pan", "fast")
        pad_x, pad_y = (int(width * PAN_PAD), int(height * PAN_PAD)) if pans else (0, 0)
        self.texture = _texture(rng, height + pad_y, width + pad_x, hue)
        self.pan_range = (pad_x, pad_y)
        self.pan_start = (rng.uniform(0, pad_x + 1), rng.uniform(0, pad_y + 1))
        # a calm pan moves 0.4-0.9 % of the frame per frame; a fast shot's handheld whip 1.5-2.5 %
        speed = {"pan": rng.uniform(0.004, 0.009), "fast": rng.uniform(0.015, 0.025)}.get(motion, 0.0)
        speed *= max(width, height)
        angle = rng.uniform(0, 2 * math.pi)
        self.pan_velocity = (speed * math.cos(angle), speed * math.sin(angle))

        side = min(width, height)
        self.shapes = []
        for _ in range(int(rng.integers(3, 6))):
            size = rng.uniform(0.05, 0.1) * side * (1.6 if motion == "fast" else 1.0)
            shape_hue = (hue + 90 + rng.uniform(-35, 35)) % 180   # contrasting with the background
            hsv = np.uint8([[[shape_hue, rng.uniform(170, 255), rng.uniform(150, 255)]]])
            color = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
            if motion == "fast":
                speed = rng.uniform(0.035, 0.06) * max(width, height)
            elif motion == "static":
                speed = 0.0
            else:
                speed = rng.uniform(0.002, 0.008) * max(width, height)
            angle = rng.uniform(0, 2 * math.pi)
            self.shapes.append({
                "circle": bool(rng.integers(0, 2)), "size": size, "color": color,
                "start": (rng.uniform(size, width - size), rng.uniform(size, height - size)),
                "velocity": (speed * math.cos(angle), speed * math.sin(angle)),
            })

    def frame(self, t: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB at shot-local frame t."""
        ox = int(round(_bounce(self.pan_start[0] + self.pan_velocity[0] * t, 0, self.pan_range[0])))
        oy = int(round(_bounce(self.pan_start[1] + self.pan_velocity[1] * t, 0, self.pan_range[1])))
        img = self.texture[oy:oy + self.height, ox:ox + self.width].copy()   # never draw on the texture
        for s in self.shapes:
            r = s["size"]
            x = _bounce(s["start"][0] + s["velocity"][0] * t, r, self.width - r)
            y = _bounce(s["start"][1] + s["velocity"][1] * t, r, self.height - r)
            if s["circle"]:
                cv2.circle(img, (int(x), int(y)), int(r), s["color"], -1, lineType=cv2.LINE_AA)
            else:
                cv2.rectangle(img, (int(x - r), int(y - 0.7 * r)), (int(x + r), int(y + 0.7 * r)), s["color"], -1)
        return img


def shot_hues(rng: np.random.Generator, n: int) -> list[float]:
    """Background hues for consecutive shots, each 100-260 degrees away from the previous one."""
    hues = [float(rng.uniform(0, 180))]
    for _ in range(n - 1):
        hues.append((hues[-1] + float(rng.uniform(50, 130))) % 180)
    return hues


def render_frames(edits: Sequence[Edit], width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """RGB frames of the edit list, one at a time; only the scenes on screen are kept in memory."""
    recipes, _ = plan_frames(edits)
    motions = [e.motion for e in edits if isinstance(e, Shot)]
    rng = np.random.default_rng(seed)
    hues = shot_hues(rng, len(motions))
    scene_seeds = rng.integers(0, 2**63 - 1, len(motions))
    live: dict[int, Scene] = {}
    for recipe in recipes:
        needed = {layer.shot for layer in recipe.layers}
        for shot in [s for s in live if needed and s < min(needed)]:
            del live[shot]   # shots only move forward: drop the ones left behind
        for shot in needed - live.keys():
            live[shot] = Scene(np.random.default_rng(int(scene_seeds[shot])), width, height, hues[shot],
                               motions[shot])
        yield compose(recipe, live, width, height)


def compose(recipe: FrameRecipe, scenes: dict[int, Scene], width: int, height: int) -> np.ndarray:
    """One output frame: the recipe's layers blended, faded and flashed."""
    if not recipe.layers:
        return np.zeros((height, width, 3), np.uint8)
    if len(recipe.layers) == 1 and recipe.gain == 1.0 and not recipe.flash:
        layer = recipe.layers[0]
        return scenes[layer.shot].frame(layer.t)
    img = sum(layer.weight * scenes[layer.shot].frame(layer.t).astype(np.float32) for layer in recipe.layers)
    img = img * recipe.gain
    if recipe.flash:
        img = img + (255.0 - img) * FLASH_STRENGTH
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# --- encoding ------------------------------------------------------------------------------------

def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int | str | Fraction,
    codec: str = "libx264",
    *,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    bit_rate: int | None = None,
    gop: int | None = None,
    threads: int = 1,
) -> int:
    """Encode RGB uint8 frames (all the same even size) into `path` with PyAV; returns the count.

    The container follows the file suffix. `options` go to the encoder (e.g. {"crf": "20"}).
    For output that is reproducible byte for byte keep `threads=1`, and for libx264 also pass
    {"x264-params": "asm=0"}: its AVX-512 code gave run-to-run differences.
    """
    rate = Fraction(fps)
    count = 0
    # bitexact: no creation time or random segment id in the header, so equal input gives equal bytes
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = None
        for rgb in frames:
            if stream is None:
                height, width = rgb.shape[:2]
                if width % 2 or height % 2:
                    raise ValueError(f"{pix_fmt} needs even sizes, got {width}x{height}")
                stream = container.add_stream(codec, rate=rate, options=dict(options or {}))
                stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
                stream.codec_context.time_base = 1 / rate
                stream.codec_context.thread_count = threads
                if bit_rate:
                    stream.codec_context.bit_rate = bit_rate
                if gop:
                    stream.codec_context.gop_size = gop
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = count
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
            count += 1
        if stream is None:
            raise ValueError("no frames to write")
        container.mux(stream.encode(None))
    return count



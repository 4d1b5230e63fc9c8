"""Shot-detection dev cases made from real footage with known edits.

    .venv/bin/python bench/shots_dev.py                 # (re)build bench/out/shots_dev if stale
    .venv/bin/python bench/shots_eval.py --dev          # build if needed, then score

Real single shots are cut out of the shared test videos (`../shared/data/shots`, ranges that
lie well inside one shot of the ground truth), scaled to 480x270 at 25 fps, and joined with
edits whose frames are known exactly:

- positives: cross-dissolves of 3-55 frames (both shots keep playing, as ffmpeg's xfade does;
  linear and eased; between shots of one palette, between stills, between sped-up shots, two
  in a row, one right after a cut), fades through black or white, dips to black, plain cuts;
- negatives: long real single shots, and real shots with what a continuous shot can do to a
  detector: sped up 3-6x (fast motion), whip pans and tilts across a moving shot (4-20
  frames, motion-blurred), a speed ramp (8x for 10 frames), fast zooms, focus pulls (blur
  ramps), an exposure change, a light dip, camera shake, a dark shape passing the lens.

The videos and `truth.json` go to bench/out/shots_dev (git-ignored), in the format of a
`recap samples` corpus: {"videos": {name: {"frames", "transitions", "note"}}}, transitions
{"kind": cut | dissolve | fade_out | black | fade_in, "start_frame", "end_frame"} (0-based,
end exclusive; a cut is the first frame of the new shot; dissolve frames are the ones with a
blend weight between 1% and 99%: an eased dissolve's outermost frames, blended less, differ from
the shot by about one grey level).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.samples.synth import write_video  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "shots"
OUT = Path(__file__).resolve().parent / "out" / "shots_dev"
VERSION = 4            # bump when the cases change: a stale build is redone
W, H, FPS = 480, 270, 25
VISIBLE = 0.01         # a blend weight below this (or above 1 - it) leaves the frame as it was

# Clean single-shot ranges [start, end) in decode order, a few frames inside the true cuts.
SHOTS: dict[str, tuple[str, int, int]] = {
    "hands": ("pyscenedetect/issue-195-aspect-ratio.mp4", 2, 67),       # hands turning a die
    "bowl": ("pyscenedetect/issue-195-aspect-ratio.mp4", 73, 167),       # glass bowl, shimmering light
    "women": ("pyscenedetect/issue-195-aspect-ratio.mp4", 173, 298),     # two people at a table
    "cup": ("pyscenedetect/issue-195-aspect-ratio.mp4", 304, 418),       # glass cup, hand moving
    "hands2": ("pyscenedetect/issue-195-aspect-ratio.mp4", 487, 626),    # close-up, hands moving
    "meadow": ("moviepy/big_buck_bunny_0_30.webm", 50, 280),             # slow pan over a meadow
    "stream": ("moviepy/big_buck_bunny_0_30.webm", 286, 373),            # a stream, light motion
    "bird": ("moviepy/big_buck_bunny_0_30.webm", 379, 485),              # a bird flapping (before the title)
    "monitor": ("pyscenedetect/issue-134-rotate.mp4", 2, 88),            # a monitor, slow push-in
    "typing": ("pyscenedetect/issue-134-rotate.mp4", 92, 208),           # a screen, text typed
    "chaplin": ("moviepy/chaplin.mp4", 0, 241),                          # one static-camera shot
    "leaf": ("pyscenedetect/testvideo.mp4", 31, 179),                    # a still photograph
    "deer": ("pyscenedetect/testvideo.mp4", 241, 330),                   # another still
}

@dataclass(frozen=True)
class Take:
    """A clip of a real shot: `take` frames (all: None) from `offset`, every `step`-th (step > 1:
    sped up)."""

    shot: str
    offset: int = 0
    take: int | None = None
    step: int = 1


Frames = list[np.ndarray]   # RGB uint8 (H, W, 3)


def _load(shared: Path, shot: str, cache: dict[str, Frames]) -> Frames:
    """Every frame of one of SHOTS, RGB at W x H (decoded once per cache)."""
    if shot not in cache:
        rel, a, b = SHOTS[shot]
        out: Frames = []
        with av.open(str(shared / rel)) as c:
            c.streams.video[0].thread_type = "AUTO"
            for i, f in enumerate(c.decode(video=0)):
                if i >= b:
                    break
                if i >= a:
                    out.append(f.to_ndarray(width=W, height=H, format="rgb24", interpolation="AREA"))
        cache[shot] = out
    return cache[shot]


def take(shared: Path, t: Take, cache: dict[str, Frames]) -> Frames:
    """The frames of a Take of a real shot from the shared videos in `shared`."""
    frames = _load(shared, t.shot, cache)[t.offset::t.step]
    return frames[:t.take] if t.take else frames


# --- edits ---------------------------------------------------------------------------------------

def ease(x: np.ndarray) -> np.ndarray:
    """Smoothstep: slow in, slow out."""
    return x * x * (3 - 2 * x)


def blend_weights(n: int, eased: bool = False) -> np.ndarray:
    """The incoming shot's weight on each of n dissolve frames (never 0 or 1)."""
    w = np.arange(1, n + 1) / (n + 1)
    return ease(w) if eased else w


def dissolve(a: Frames, b: Frames, n: int, eased: bool = False) -> Frames:
    """The last n frames of `a` blended with the first n of `b`."""
    w = blend_weights(n, eased)
    tail, head = a[len(a) - n:], b[:n]
    return [((1 - wi) * x.astype(np.float32) + wi * y.astype(np.float32)).round().astype(np.uint8)
            for wi, x, y in zip(w, tail, head)]


def fade(frames: Frames, gains: np.ndarray, level: float = 0.0) -> Frames:
    """Each frame mixed with a flat `level`: gain 1 is the frame, 0 the flat field."""
    return [((g * f.astype(np.float32)) + (1 - g) * level).round().astype(np.uint8) for g, f in zip(gains, frames)]


class Builder:
    """Appends shots and transitions, keeping the truth."""

    def __init__(self) -> None:
        self.frames: Frames = []
        self.transitions: list[dict] = []

    def _mark(self, kind: str, n: int) -> None:
        if n:
            self.transitions.append({"kind": kind, "start_frame": len(self.frames), "end_frame": len(self.frames) + n})

    def shot(self, frames: Frames) -> Builder:
        self.frames += frames
        return self

    def cut(self, frames: Frames) -> Builder:
        self.transitions.append({"kind": "cut", "start_frame": len(self.frames), "end_frame": len(self.frames)})
        return self.shot(frames)

    def dissolve(self, frames: Frames, n: int, eased: bool = False) -> Builder:
        """Blend the shot on screen (its last n frames) into `frames`, then play `frames` on.
        An eased blend's first and last frames that take under VISIBLE of the other shot count
        as shot content: they differ from it by about one grey level, less than the encoder's noise."""
        prev = self.frames[len(self.frames) - n:]
        del self.frames[len(self.frames) - n:]
        w = blend_weights(n, eased)
        seen = np.flatnonzero((w >= VISIBLE) & (w <= 1 - VISIBLE))
        self.transitions.append({"kind": "dissolve", "start_frame": len(self.frames) + int(seen[0]),
                                 "end_frame": len(self.frames) + int(seen[-1]) + 1})
        self.frames += dissolve(prev, frames, n, eased)
        self.frames += frames[n:]
        return self

    def fade_through(self, frames: Frames, out: int, hold: int, into: int, level: float = 0.0) -> Builder:
        """Fade the shot on screen out over its last `out` frames to a flat `level`, hold that,
        fade `frames` in over their first `into`; gains never reach 0 or 1."""
        prev = self.frames[len(self.frames) - out:] if out else []
        del self.frames[len(self.frames) - out:]
        self._mark("fade_out", out)
        self.frames += fade(prev, (out - np.arange(out)) / (out + 1), level)
        self._mark("black", hold)
        self.frames += [np.full((H, W, 3), level, np.uint8)] * hold
        self._mark("fade_in", into)
        self.frames += fade(frames[:into], (np.arange(into) + 1) / (into + 1), level)
        self.frames += frames[into:]
        return self


# --- effects on one continuous shot (negatives) --------------------------------------------------

def whip_pan(src: Frames, start: int, length: int, scale: float = 1.6, vertical: bool = False) -> Frames:
    """The shot seen through a `scale`x zoomed window that is still, whips across the frame in
    `length` frames (eased, motion-blurred), then is still again."""
    big = (int(W * scale) // 2 * 2, int(H * scale) // 2 * 2)
    span_x, span_y = big[0] - W, (big[1] - H) // 3
    if vertical:
        span_x, span_y = span_x // 3, big[1] - H
    out = []
    for i, f in enumerate(src):
        fb = cv2.resize(f, big, interpolation=cv2.INTER_LINEAR)
        acc = np.zeros((H, W, 3), np.float32)
        for sub in range(4):   # a camera's shutter blurs the whip
            u = float(ease(np.clip(np.array((i + sub / 4 - start) / length), 0, 1)))
            x, y = int(round(u * span_x)), int(round(u * span_y))
            acc += fb[y:y + H, x:x + W]
        out.append((acc / 4).round().astype(np.uint8))
    return out


def zoom(src: Frames, start: int, length: int, to: float = 1.8) -> Frames:
    """A zoom in to `to`x over `length` frames from `start` (eased)."""
    out = []
    for i, f in enumerate(src):
        z = 1 + (to - 1) * float(ease(np.clip(np.array((i - start) / length), 0, 1)))
        w, h = int(W / z) // 2 * 2, int(H / z) // 2 * 2
        x, y = (W - w) // 2, (H - h) // 2
        out.append(cv2.resize(f[y:y + h, x:x + w], (W, H), interpolation=cv2.INTER_LINEAR))
    return out


def focus_pull(src: Frames, start: int, length: int, hold: int, sigma: float = 5.0) -> Frames:
    """Defocus over `length` frames, stay soft for `hold`, sharpen again over `length`."""
    out = []
    for i, f in enumerate(src):
        j = i - start
        u = j / length if j < length else 1.0 if j < length + hold else 1 - (j - length - hold) / length
        s = sigma * float(np.clip(u, 0, 1))
        out.append(cv2.GaussianBlur(f, (0, 0), s) if s > 0.3 else f)
    return out


def exposure(src: Frames, start: int, length: int, to: float = 0.55) -> Frames:
    """The exposure falls to `to` over `length` frames from `start` and stays there."""
    out = []
    for i, f in enumerate(src):
        g = 1 + (to - 1) * float(np.clip((i - start) / length, 0, 1))
        out.append(np.clip(f.astype(np.float32) * g, 0, 255).astype(np.uint8))
    return out


def speed_ramp(src: Frames, start: int, length: int, speed: int) -> Frames:
    """Normal speed, then `length` frames at `speed`x (the camera races on), then normal again."""
    return src[:start] + src[start:start + length * speed:speed] + src[start + length * speed:]


def occluder(src: Frames, start: int, length: int, seed: int = 0) -> Frames:
    """A dark, out-of-focus shape (someone walking past the lens) crossing the frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    tone = rng.uniform(20, 60, 3).astype(np.float32)
    out = []
    for i, f in enumerate(src):
        u = (i - start) / length
        if not 0 <= u <= 1:
            out.append(f)
            continue
        cx = -0.4 * W + u * 1.8 * W
        alpha = np.clip(1.2 - np.abs(xx - cx) / (0.35 * W), 0, 1)[..., None] * np.clip(1.5 - yy / H, 0, 1)[..., None]
        out.append((f * (1 - alpha) + tone * alpha).round().astype(np.uint8))
    return out


def flicker(src: Frames, start: int, length: int, gain: float = 0.5) -> Frames:
    """The light dips to `gain` for `length` frames and comes back."""
    return [np.clip(f.astype(np.float32) * (gain if start <= i < start + length else 1), 0, 255).astype(np.uint8)
            for i, f in enumerate(src)]


def shake(src: Frames, amp: float = 14.0, seed: int = 0) -> Frames:
    """Handheld shake: a random walk of the framing, several pixels per frame."""
    rng = np.random.default_rng(seed)
    pos = np.cumsum(rng.normal(0, amp / 3, (len(src), 2)), axis=0)
    pos = np.clip(pos, -amp * 2, amp * 2)
    out = []
    for f, (dx, dy) in zip(src, pos):
        m = np.float32([[1.1, 0, -0.05 * W + dx], [0, 1.1, -0.05 * H + dy]])
        out.append(cv2.warpAffine(f, m, (W, H), borderMode=cv2.BORDER_REFLECT))
    return out


# --- the cases -----------------------------------------------------------------------------------

def cases(shared: Path) -> Iterator[tuple[str, str, Builder]]:
    """(name, what it is, the edit) of every dev case."""
    cache: dict[str, Frames] = {}
    t = lambda *a, **k: take(shared, Take(*a, **k), cache)  # noqa: E731

    # dissolves between real shots, 3-55 frames
    yield "dis06_women_cup", "6-frame dissolve", Builder().shot(t("women", 0, 70)).dissolve(t("cup", 0, 80), 6)
    yield "dis12_meadow_bird", "12-frame dissolve, slow pan into a flapping bird", \
        Builder().shot(t("meadow", 0, 80)).dissolve(t("bird", 0, 90), 12)
    yield "dis20_monitor_chaplin", "20-frame dissolve", Builder().shot(t("monitor", 0, 80)).dissolve(t("chaplin", 0, 90), 20)
    yield "dis30_hands2_stream", "30-frame dissolve", Builder().shot(t("hands2", 0, 90)).dissolve(t("stream", 0, 87), 30)
    yield "dis45_bird_women", "45-frame dissolve", Builder().shot(t("bird", 0, 100)).dissolve(t("women", 0, 110), 45)
    yield "dis16_hands_hands2", "16-frame dissolve between two shots of the same palette", \
        Builder().shot(t("hands", 0, 65)).dissolve(t("hands2", 0, 80), 16)
    yield "dis24e_typing_meadow", "24-frame eased dissolve", \
        Builder().shot(t("typing", 0, 90)).dissolve(t("meadow", 60, 90), 24, eased=True)
    yield "dis10_leaf_deer", "10-frame dissolve between two stills", \
        Builder().shot(t("leaf", 0, 60)).dissolve(t("deer", 0, 60), 10)
    yield "dis18_fast", "18-frame dissolve between two sped-up (3x) shots", \
        Builder().shot(t("women", 0, None, 3)).dissolve(t("hands2", 0, None, 3), 18)
    yield "dis36_chaplin_bowl", "36-frame eased dissolve", \
        Builder().shot(t("chaplin", 100, 90)).dissolve(t("bowl", 0, 94), 36, eased=True)
    yield "dis03_cup_women", "3-frame dissolve", Builder().shot(t("cup", 0, 60)).dissolve(t("women", 0, 70), 3)
    yield "dis04_bowl_hands2", "4-frame dissolve, one palette", Builder().shot(t("bowl", 0, 60)).dissolve(t("hands2", 0, 70), 4)
    yield "dis55_women_meadow", "55-frame dissolve", Builder().shot(t("women", 0, 110)).dissolve(t("meadow", 0, 120), 55)
    yield "dis08_bird_fast", "8-frame dissolve into a sped-up shot", \
        Builder().shot(t("bird", 0, 60)).dissolve(t("cup", 0, None, 3), 8)
    yield "dis14_chaplin_typing", "14-frame dissolve", Builder().shot(t("chaplin", 0, 70)).dissolve(t("typing", 0, 80), 14)
    yield "dis12e_stream_cup", "12-frame eased dissolve", \
        Builder().shot(t("stream", 0, 70)).dissolve(t("cup", 0, 80), 12, eased=True)
    yield "dis20_deer_bird", "20-frame dissolve from a still into motion", \
        Builder().shot(t("deer", 0, 60)).dissolve(t("bird", 0, 80), 20)
    yield "dis24_women_bowl", "24-frame dissolve, one palette", Builder().shot(t("women", 0, 80)).dissolve(t("bowl", 0, 90), 24)
    yield "dis10_cup_hands", "10-frame dissolve, one palette", Builder().shot(t("cup", 0, 70)).dissolve(t("hands", 0, 65), 10)
    yield "dis_chain", "two 12-frame dissolves around a 30-frame shot, then a cut", \
        Builder().shot(t("meadow", 0, 60)).dissolve(t("bird", 0, 54), 12).dissolve(t("women", 0, 70), 12) \
        .cut(t("chaplin", 0, 50))
    yield "dis_after_cut", "a cut, then 16 frames later a 16-frame dissolve", \
        Builder().shot(t("monitor", 0, 50)).cut(t("hands2", 0, 32)).dissolve(t("stream", 0, 80), 16)
    # fades
    yield "fade12_6_12", "fade out 12, black 6, fade in 12", \
        Builder().shot(t("cup", 0, 70)).fade_through(t("meadow", 100, 80), 12, 6, 12)
    yield "fade8_0_8", "dip to black (8 out, 8 in, no black frame)", \
        Builder().shot(t("women", 0, 70)).fade_through(t("bowl", 0, 80), 8, 0, 8)
    yield "fade25_0_25", "long dip to black", Builder().shot(t("stream", 0, 85)).fade_through(t("hands2", 0, 90), 25, 0, 25)
    yield "fadew10_4_10", "fade through white", \
        Builder().shot(t("chaplin", 0, 70)).fade_through(t("bird", 0, 80), 10, 4, 10, level=235.0)
    yield "fade_ends", "fade in from black at the start, out to black at the end", \
        Builder().fade_through(t("meadow", 0, 90), 0, 8, 15).fade_through([], 20, 10, 0)
    # cuts between real shots
    yield "cuts", "hard cuts only", Builder().shot(t("women", 0, 50)).cut(t("cup", 0, 50)).cut(t("meadow", 0, 50)) \
        .cut(t("bird", 0, 50)).cut(t("chaplin", 0, 50)).cut(t("hands2", 0, 50))
    # negatives: one continuous shot each
    for shot in ("chaplin", "meadow", "women", "hands2", "bird", "cup"):
        yield f"neg_{shot}", f"one real shot ({shot})", Builder().shot(t(shot))
    yield "neg_fast3_women", "a real shot sped up 3x", Builder().shot(t("women", 0, None, 3))
    fast_bird = t("bird", 0, None, 3)
    yield "neg_fast3_bird", "a real shot sped up 3x, forward then backward", Builder().shot(fast_bird + fast_bird[-2::-1])
    yield "neg_fast3_hands2", "a real shot sped up 3x", Builder().shot(t("hands2", 0, None, 3))
    yield "neg_fast3_cup", "a real shot sped up 3x", Builder().shot(t("cup", 0, None, 3))
    yield "neg_whip_bird", "whip pan across a moving shot", Builder().shot(whip_pan(t("bird"), 40, 10))
    yield "neg_whip_meadow", "slower whip pan", Builder().shot(whip_pan(t("meadow", 0, 120), 40, 20))
    yield "neg_zoom_hands2", "fast zoom in", Builder().shot(zoom(t("hands2", 0, 110), 40, 15))
    yield "neg_focus_bowl", "focus pull out and back", Builder().shot(focus_pull(t("bowl"), 30, 12, 15))
    yield "neg_focus_women", "fast defocus", Builder().shot(focus_pull(t("women", 0, 110), 40, 6, 30, sigma=7.0))
    yield "neg_exposure_cup", "exposure drops to 55%", Builder().shot(exposure(t("cup"), 40, 15))
    yield "neg_shake_hands", "handheld shake", Builder().shot(shake(t("hands2")))
    fast_meadow = t("meadow", 0, None, 6)
    yield "neg_fast6_meadow", "a slow pan sped up 6x, forward then backward", Builder().shot(fast_meadow + fast_meadow[-2::-1])
    yield "neg_whip_chaplin", "6-frame whip pan", Builder().shot(whip_pan(t("chaplin", 0, 120), 50, 6, scale=1.4))
    yield "neg_whip_women", "4-frame whip pan", Builder().shot(whip_pan(t("women"), 60, 4))
    yield "neg_tilt_bird", "8-frame whip tilt", Builder().shot(whip_pan(t("bird"), 50, 8, scale=1.8, vertical=True))
    yield "neg_whip_cup", "14-frame whip pan", Builder().shot(whip_pan(t("cup"), 40, 14, scale=2.0))
    yield "neg_occluder_women", "someone walks past the lens (10 frames)", Builder().shot(occluder(t("women"), 50, 10))
    yield "neg_occluder_meadow", "someone walks past the lens (20 frames)", Builder().shot(occluder(t("meadow", 0, 120), 40, 20, seed=1))
    yield "neg_flicker_cup", "the light dips for 6 frames", Builder().shot(flicker(t("cup"), 50, 6))
    yield "neg_speedramp_meadow", "10 frames at 8x speed mid-shot", Builder().shot(speed_ramp(t("meadow"), 40, 10, 8))
    yield "neg_speedramp_women", "8 frames at 6x speed mid-shot", Builder().shot(speed_ramp(t("women"), 30, 8, 6))
    yield "neg_zoomout_chaplin", "fast zoom (out, reversed)", Builder().shot(zoom(t("chaplin", 0, 100), 40, 10, to=2.2)[::-1])


def build(out: Path = OUT, shared: Path = SHARED, force: bool = False) -> Path:
    """Write every case and truth.json to `out` (skipped when a build of this VERSION is there)."""
    truth_path = out / "truth.json"
    if not force and truth_path.is_file() and json.loads(truth_path.read_text()).get("version") == VERSION:
        return out
    out.mkdir(parents=True, exist_ok=True)
    videos = {}
    for name, note, b in cases(shared):
        path = out / f"{name}.mp4"
        n = write_video(path, b.frames, FPS, "libx264", options={"preset": "veryfast", "crf": "20"})
        videos[path.name] = {"frames": n, "transitions": b.transitions, "note": note}
        print(f"  {path.name:28s} {n:4d} frames  {note}")
    truth_path.write_text(json.dumps({"version": VERSION, "videos": videos}, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    if not (args.shared / "ground_truth.json").is_file():
        print(f"no shared footage at {args.shared}")
        return 1
    print(f"dev cases -> {build(args.out, args.shared, args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


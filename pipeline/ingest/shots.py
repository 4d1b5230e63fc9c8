"""Shot detection: clean shot ranges and the transitions between them, from one decode pass.

`ShotDetector` is a `FrameAnalyzer`: during the decode pass it feeds each small frame to
PySceneDetect's `ContentDetector` (its HSV frame score) and records a few more numbers per frame:
brightness, contrast, how much of the frame is dark, and, against a ring buffer of the last
`max(LAGS)` frames, two distances at every lag in `LAGS`:

- structure `S(a, b)` = 1 - normalised cross-correlation of 32x18 luma thumbnails. Motion-blur,
  exposure and colour changes barely move it; a new shot moves it to ~1.
- colour `H(a, b)` = half the L1 distance of coarse 3-D colour histograms (0..1). Objects moving
  inside a shot barely move it; a dissolve between shots moves it steadily.

It also keeps each frame's 16x9 colour thumbnail, to test a dissolve as a blend of two shots.
`detect_shots` then works on those arrays alone (568 bytes per frame):

1. black / flat frames (mostly dark, or no contrast at all) are transitions;
2. fades: the contrast ramps monotonically into or out of a black / flat run, or down to a
   dark frame and straight up again (a fade out-in with no black frame);
3. hard cuts: ContentDetector's score and a structure jump together, larger than the frames
   on either side (fast motion changes every frame, a cut only one), and not undone within
   `flash_max_frames` (a flash, an explosion, a camera strobe returns to the same picture);
4. dissolves: candidates are windows of k frames over which structure (and colour, or the
   structure clearly more than around) changes like at a cut, spread out, while the k frames
   before and after change clearly less. Fast motion, a focus pull or someone passing the lens
   can do that too, so a candidate must also be a blend: each frame is (1 - w) * the last
   frame before + w * the first frame after, plus little else, with w rising along a straight
   or eased ramp. The ramp fit also gives the dissolve's extent, to a frame or two (widening
   by a share of the length instead, as an earlier version did, made ranges up to 3x too long).

Whatever is not a transition is shot content. Frame indices are 0-based decode order, ends
exclusive; a cut is a zero-length transition at the first frame of the new shot.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.ingest.analysis import MIN_THUMB_STD, THUMB, AnalysisFrame
from pipeline.ingest.config import ShotsConfig

# Lags (in frames) at which each frame is compared with an earlier one: dense for cuts, flashes
# and short dissolves, sparser for long dissolves (dissolve_max_frames must stay below the max).
LAGS = tuple(range(1, 25)) + (28, 32, 40, 48, 56, 64)
LAG_INDEX = {k: i for i, k in enumerate(LAGS)}
COLOR_THUMB_WIDTH = 40   # the colour histogram is taken on a copy about this wide (cheaper; same detections: shots_eval)
HIST_BINS = 4            # per channel: 4x4x4 joint BGR histogram
BLEND_THUMB = (16, 9)    # colour thumbnail kept per frame (432 bytes) to test a dissolve as a blend
# A dissolve's frames are a blend of the frames either side. What the blend leaves unexplained,
# as a share of those two frames' difference (worst frame), is at most BLEND_RESIDUAL (real
# dissolves <= 0.24; a focus pull, a whip pan, someone passing the lens >= 0.37), or
# MOTION_RESIDUAL where both shots move fast and the colours change like at a cut; less what the
# shots' own motion explains, at most BLEND_EXCESS in both cases. bench/shots_eval.py --dev.
BLEND_RESIDUAL = 0.3
MOTION_RESIDUAL = 0.7
BLEND_EXCESS = 0.2
RAMP_ERR = 0.12          # rms distance of the blend weights from a straight or eased ramp
EDGE_STILL = 0.01        # an end frame blended less than this (and than the ramp says) is shot content
EDGE_GROW = 2            # at most this many frames added at an end that steps like the ramp
DRIFT_GAP = 2            # frames next to a fitted blend not trusted to show the shot's own motion
LINEAR_LIGHT = ((np.arange(256) / 255.0) ** 2.2 * 255).astype(np.float32)   # gamma-coded -> linear


@dataclass(frozen=True)
class Transition:
    kind: str          # cut | fade | dissolve | black
    start_frame: int   # first frame of the transition (for a cut: first frame of the new shot)
    end_frame: int     # exclusive; == start_frame for a cut


@dataclass(frozen=True)
class Shot:
    start_frame: int
    end_frame: int     # exclusive
    start_transition: str  # what the shot begins with: start | cut | fade | dissolve | black | resize
    end_transition: str    # what ends it: end | cut | fade | dissolve | black | resize


@dataclass
class ShotResult:
    n_frames: int
    shots: list[Shot]
    transitions: list[Transition]

    @property
    def hard_cuts(self) -> list[int]:
        return [t.start_frame for t in self.transitions if t.kind == "cut"]


def color_thumb(bgr: np.ndarray) -> np.ndarray:
    """`bgr` area-averaged by a whole factor to about COLOR_THUMB_WIDTH px wide (the rows and
    columns the factor does not divide are cropped evenly from both edges): a whole factor takes
    OpenCV's fast block-average path, 2.4x cheaper on 160x90 than resizing to a fixed 40x22."""
    h, w = bgr.shape[:2]
    f = max(1, min(w // COLOR_THUMB_WIDTH, h))
    top, left = h % f // 2, w % f // 2
    block = bgr[top: top + h // f * f, left: left + w // f * f]
    return cv2.resize(block, (w // f, h // f), interpolation=cv2.INTER_AREA) if f > 1 else bgr


class ContentScore:
    """PySceneDetect's ContentDetector frame score (the weighted mean of the mean absolute HSV
    differences from the previous frame; its default weights, edges off), without its cut
    decisions, as AdaptiveDetector uses it. Computed with one `absdiff` and one `sumElems` over the
    three channels instead of its per-channel split and numpy sums, which cost as much as the rest
    of shot detection on 160-px frames; the number is the same to the bit
    (`tests/test_shots.py` compares it with `ContentDetector._calculate_frame_score`).

    Its weights are ContentDetector.DEFAULT_COMPONENT_WEIGHTS (hue, saturation, luma; edges off),
    written here (the same test checks they are equal) because importing `scenedetect` in a worker
    costs 0.16 s and ~0.25 CPU-s: its import runs `ffmpeg` to see whether one is installed."""

    weights = (1.0, 1.0, 1.0)     # hue, saturation, luma

    def __init__(self) -> None:
        self._total = sum(abs(w) for w in self.weights)
        self._previous: np.ndarray | None = None

    def score(self, bgr: np.ndarray) -> float:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        previous, self._previous = self._previous, hsv
        if previous is None:
            return 0.0
        pixels = float(hsv.shape[0] * hsv.shape[1])
        hue, sat, lum, _ = (total / pixels for total in cv2.sumElems(cv2.absdiff(hsv, previous)))  # exact sums
        w_hue, w_sat, w_lum = self.weights
        return (hue * w_hue + sat * w_sat + lum * w_lum) / self._total


@dataclass
class FeatureArrays:
    """Per-frame numbers for `detect_shots` (row t compares frame t with frame t - LAGS[j])."""

    content: np.ndarray     # (n,) ContentDetector score, frame t-1 -> t (0 for t = 0)
    luma_mean: np.ndarray   # (n,)
    luma_std: np.ndarray    # (n,)
    dark_frac: np.ndarray   # (n,) fraction of pixels at or below the black level
    structure: np.ndarray   # (n, len(LAGS)) S(t - k, t); NaN where t - k < 0
    color: np.ndarray       # (n, len(LAGS)) H(t - k, t); NaN where t - k < 0
    thumb: np.ndarray       # (n, BLEND_THUMB w*h*3) uint8 colour thumbnail, for the blend fit

    @property
    def n(self) -> int:
        return len(self.content)

    def s(self, t: int, k: int) -> float:
        return float(self.structure[t, LAG_INDEX[k]])

    def h(self, t: int, k: int) -> float:
        return float(self.color[t, LAG_INDEX[k]])


class ShotDetector:
    """FrameAnalyzer collecting what `detect_shots` needs. Memory: a 64-frame ring of 32x18
    thumbnails and histograms, plus 568 bytes per frame (~61 MB for an hour at 30 fps)."""

    name = "shots"

    def __init__(self, cfg: ShotsConfig):
        self.cfg = cfg
        self._content = ContentScore()
        ring = max(LAGS) + 1
        self._ring = ring
        self._z = np.zeros((ring, THUMB[0] * THUMB[1]), np.float32)   # normalised thumbnails
        self._flat = np.ones(ring, bool)
        self._hist = np.zeros((ring, HIST_BINS ** 3), np.float32)
        self._lags = np.asarray(LAGS)
        self._n = 0
        # per-frame rows, grown by doubling: content, luma mean, luma std, dark share | S | H | thumbnail
        self._scalars = np.zeros((1024, 4), np.float32)
        self._structure = np.zeros((1024, len(LAGS)), np.float16)
        self._color = np.zeros((1024, len(LAGS)), np.float16)
        self._thumbs = np.zeros((1024, BLEND_THUMB[0] * BLEND_THUMB[1] * 3), np.uint8)

    def _grow(self) -> None:
        for name in ("_scalars", "_structure", "_color", "_thumbs"):
            old = getattr(self, name)
            new = np.zeros((2 * len(old), old.shape[1]), old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def update(self, frame: AnalysisFrame) -> None:
        i = frame.index
        if i != self._n:
            raise ValueError(f"frames must arrive in order: got {i}, expected {self._n}")
        if i == len(self._scalars):
            self._grow()
        luma, bgr = frame.luma, frame.bgr
        mean, std = cv2.meanStdDev(luma)
        bright = cv2.countNonZero(cv2.compare(luma, self.cfg.black_luma, cv2.CMP_GT))
        self._scalars[i] = (self._content.score(bgr), mean[0, 0], std[0, 0], 1.0 - bright / luma.size)

        z, tstd = frame.structure
        small = color_thumb(bgr)
        hist = cv2.calcHist([small], [0, 1, 2], None, [HIST_BINS] * 3, [0, 256] * 3).ravel()
        hist /= hist.sum()
        self._thumbs[i] = cv2.resize(small, BLEND_THUMB, interpolation=cv2.INTER_AREA).ravel()

        m = int(np.searchsorted(self._lags, min(i, self._ring - 1), side="right"))  # lags with a frame
        self._structure[i, m:] = np.nan
        self._color[i, m:] = np.nan
        if m:
            prev = (i - self._lags[:m]) % self._ring
            s_row = 1.0 - (self._z[prev] @ z) / z.size
            s_row[self._flat[prev] & (tstd < MIN_THUMB_STD)] = 0.0   # two featureless frames
            self._structure[i, :m] = s_row
            self._color[i, :m] = 0.5 * np.abs(self._hist[prev] - hist).sum(axis=1)
        slot = i % self._ring
        self._z[slot], self._flat[slot], self._hist[slot] = z, tstd < MIN_THUMB_STD, hist
        self._n = i + 1

    def finish(self, decoded: object = None) -> ShotResult:
        """Shots and transitions of everything seen so far (`decoded` is accepted for symmetry
        with other analyzers; the arrays already hold all that is needed)."""
        return detect_shots(self, self.cfg)

    def arrays(self) -> FeatureArrays:
        n, sc = self._n, self._scalars[:self._n].astype(np.float64)
        return FeatureArrays(
            content=sc[:, 0], luma_mean=sc[:, 1], luma_std=sc[:, 2], dark_frac=sc[:, 3],
            structure=self._structure[:n].astype(np.float32),
            color=self._color[:n].astype(np.float32),
            thumb=self._thumbs[:n].copy(),
        )


# --- detection on the feature arrays -----------------------------------------------------------

def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _fade_ramp(f: FeatureArrays, anchor: int, step: int, level: float, cfg: ShotsConfig,
               stop: int) -> tuple[int, int]:
    """The fade ramp next to a black/flat run (at `anchor`, walking by `step` = -1 or +1, never
    to `stop`): the frames whose look moves steadily towards the run's. Returns (steps, frames):
    each step is a frame further from the run's look than its neighbour towards the run; the last
    such frame is where the fade begins, still the clean shot, unless the video ends there."""
    def away(j: int) -> float:   # how far frame j's look is from the flat run's
        return abs(f.luma_mean[j] - level) + f.luma_std[j]

    length, j = 0, anchor + step
    prev = away(anchor)
    while j != stop:
        cur = away(j)
        if cur <= prev * (1 + cfg.fade_min_step) + 0.5:
            return length, max(length - 1, 0)
        length += 1
        prev = cur
        j += step
    return length, length


def _cut_candidates(f: FeatureArrays, cfg: ShotsConfig, flashes: np.ndarray) -> list[int]:
    s1 = np.nan_to_num(f.structure[:, 0].astype(np.float64), nan=0.0)
    n = f.n
    cuts = []
    for t in np.flatnonzero((s1 >= cfg.cut_structure) & (f.content >= cfg.cut_threshold)):
        t = int(t)
        if t == 0 or flashes[t]:
            continue
        neighbours = max(s1[t - 1], s1[t + 1] if t + 1 < n else 0.0)
        if s1[t] - neighbours >= cfg.cut_contrast:   # else the frames around change as much: motion
            cuts.append(t)
    return cuts


def _flash_frames(f: FeatureArrays, cfg: ShotsConfig) -> np.ndarray:
    """Frames [t, t+j) (j <= flash_max_frames) that depart sharply from frame t-1 in colour or
    structure while frame t+j is back close to it: flashes, strobes, a bird across the lens."""
    n = f.n
    mask = np.zeros(n, bool)
    h1 = np.nan_to_num(f.color[:, 0].astype(np.float64))
    s1 = np.nan_to_num(f.structure[:, 0].astype(np.float64))
    for t in np.flatnonzero((h1 >= 0.1) | (s1 >= cfg.cut_structure)):
        for j in range(1, cfg.flash_max_frames + 1):
            if t + j >= n:
                break
            back_h, back_s = f.h(t + j, j + 1), f.s(t + j, j + 1)
            # structure may move on meanwhile as much as it did over as long a span before
            moved = f.s(t - 1, j + 1) if t - 2 - j >= 0 else 0.0
            # back in colour (with no more structural change than motion explains) or in structure
            if (h1[t] >= 3 * back_h and back_h < 0.15 and back_s < max(2 * cfg.cut_structure, 1.5 * moved)) or \
                    (s1[t] >= 3 * back_s and back_h < 0.15):
                mask[t:t + j] = True
                break
    return mask


def _dissolve_candidates(f: FeatureArrays, cfg: ShotsConfig,
                         busy: np.ndarray) -> list[tuple[float, int, int, bool]]:
    """(score, first, end, colour changed) of windows (last frame of one shot .. first frame of
    the next) across which structure changes like at a cut, and colour too or the structure
    clearly more than around, while the equally long windows before and after change clearly
    less. The score (how far the change across stands above the change around) peaks at windows
    just spanning the dissolve: smaller ones miss part of the change, larger ones compare more
    motion around. Motion can pass these tests too: `_blend_fit` decides."""
    n = f.n
    out = []
    for k in LAGS:
        if k - 1 < cfg.dissolve_min_frames or k - 1 > cfg.dissolve_max_frames or 3 * k > n:
            continue
        j = LAG_INDEX[k]
        s = f.structure[:, j].astype(np.float64)
        h = f.color[:, j].astype(np.float64)
        t = np.arange(2 * k, n - k)                     # window (t - k, t], both neighbours exist
        s_gain = (s[t] - np.maximum(s[t - k], s[t + k])) / cfg.dissolve_structure_contrast
        h_gain = (h[t] - np.maximum(h[t - k], h[t + k])) / cfg.dissolve_color_contrast
        coloured = h[t] >= cfg.dissolve_color
        # two shots of one palette: the structure alone must stand out
        hit = (s[t] >= cfg.dissolve_structure) & (coloured | (s_gain >= 1)) & ((s_gain >= 1) | (h_gain >= 1))
        for t_end, score, col in zip(t[hit], (s_gain + h_gain)[hit], coloured[hit]):
            a = int(t_end) - k   # last frame of the outgoing shot
            if not busy[a:t_end + 1].any():
                out.append((float(score), a + 1, int(t_end), bool(col)))
    return out


def _dissolves(f: FeatureArrays, cfg: ShotsConfig, busy: np.ndarray) -> list[tuple[int, int]]:
    """Dissolve frame ranges: the best-scoring candidate windows that do not overlap a better
    one, where the frames are a blend of the shot before and the shot after (`_blend_fit`)."""
    taken = busy.copy()
    found = []
    for _, a, b, coloured in sorted(_dissolve_candidates(f, cfg, busy), reverse=True):
        if taken[a:b].any():
            continue
        taken[a:b] = True
        fit = _blend_fit(f, a, b, busy)
        margin = None if fit is None else fit.margin(coloured)
        if margin is None or _returns(f, fit.p, fit.q, cfg) or _comes_back(f, fit.p, fit.q, busy):
            continue
        p, q = max(fit.p - margin, 0), min(fit.q + margin, f.n)
        found.append((p, q))
        taken[p:q] = True
    return found


@dataclass
class BlendFit:
    """Frames [p, q) as a blend of frame p - 1 (weight 1 - w) and frame q (weight w), w rising
    along a ramp; the numbers that say whether it is one."""

    p: int            # first blend frame
    q: int            # first frame of the new shot (exclusive end)
    ramp_err: float   # rms distance of the weights from the fitted ramp, around [p, q)
    residual: float   # worst frame: what the blend leaves unexplained, as a share of |x_q - x_p-1|
    excess: float     # worst frame: the same, less what the two shots' own motion explains

    def margin(self, coloured: bool) -> int | None:
        """Frames to add at each end of this dissolve, or None when it is not one. `coloured`:
        the candidate window's colours changed like at a cut."""
        if self.ramp_err > RAMP_ERR or self.excess > BLEND_EXCESS:
            return None
        # a long blend's faintest frames (a weight within ~2% of 0 or 1) hide in the shots' motion
        margin = round((self.q - self.p) / 25)
        if self.residual <= BLEND_RESIDUAL:
            return margin          # a clean blend
        if coloured and self.residual <= MOTION_RESIDUAL:
            return margin + 1      # a blend of two fast-moving shots: its ends are less sure
        return None


def _blend_fit(f: FeatureArrays, a: int, b: int, busy: np.ndarray) -> BlendFit | None:
    """Where around candidate window [a, b) one picture blends into another, and how well the
    frames there are explained as that blend. The ramp is fitted at three scales (the thumbnail,
    and averages over blocks of it, which the shots' own motion disturbs less; a blend stays a
    blend at any scale) and the closest fit is kept; the blend is then tested on the thumbnail,
    in gamma-coded values and in linear light (editors blend in either)."""
    span = 2 * (b - a) + 16                       # all the fit may look at: work on that stretch only
    w0, w1 = max(0, a - span), min(f.n, b + span)
    thumb = f.thumb[w0:w1]
    fine = thumb.astype(np.float32)
    near = busy[w0:w1]
    best = None
    for x in (fine, _pooled(fine, 3, 8), _pooled(fine, 3, 4)):
        fit = _ramp_at(x, a - w0, b - w0, near)
        if fit is not None and (best is None or fit[2] < best[2]):
            best = fit
    if best is None:
        return None
    p, q, err = best
    tests = [_unexplained(y, near, p, q) for y in (fine, LINEAR_LIGHT[thumb])]
    return BlendFit(p + w0, q + w0, err, min(r for r, _ in tests), min(e for _, e in tests))


def _pooled(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Thumbnails (m, 9*16*3) averaged over blocks down to rows x cols (which divide 9 x 16)."""
    w, h = BLEND_THUMB
    return x.reshape(len(x), rows, h // rows, cols, w // cols, 3).mean(axis=(2, 4)).reshape(len(x), -1)


def _ramp_at(x: np.ndarray, a: int, b: int, busy: np.ndarray) -> tuple[int, int, float] | None:
    """(p, q, rms error) of the blend ramp around [a, b) in the frames x. Each frame is written
    as (1 - w) * first + w * last (a reference frame on each side) and a ramp is fitted to the
    weights w; the fit is redone with references just clear of the ramp until they agree (a far
    reference drifts with the shot's own motion)."""
    lo, hi = _region(a, b, busy, pad=max(4, (b - a) // 2 + 2))
    first, last = lo - 1, hi
    for _ in range(4):
        if hi - lo < 1 or first < 0 or last >= len(x):
            return None
        w, _ = _weights(x[lo:hi], x[first], x[last])
        p, q, err, ramp = _ramp_fit(w)
        at = lo                                    # w[i] is frame at + i
        p, q = at + p, at + q
        # one frame clear of the ramp, so that the next fit may still move its ends
        lo, hi = _region(p, q, busy, pad=max(3, (q - p) // 3))
        refs = (max(p - 2, lo - 1), min(q + 1, hi))
        if (first, last) == refs:
            break
        first, last = refs
    p0, q0 = _edges(w, ramp, p - at, q - at)
    return at + p0, at + q0, err


def _edges(w: np.ndarray, ramp: np.ndarray, p: int, q: int) -> tuple[int, int]:
    """The fitted ramp's ends [p, q) (indices into the weights w) checked frame by frame: an end
    frame that has not started to change is shot content; a frame just outside that steps like
    the ramp does is a blend frame (the shots' own motion, seen along the blend, can hide the
    ramp's faint ends from the least-squares fit)."""
    while q - p > 2 and w[p] < min(EDGE_STILL, 0.3 * ramp[p]):
        p += 1
    while q - p > 2 and 1 - w[q - 1] < min(EDGE_STILL, 0.3 * (1 - ramp[q - 1])):
        q -= 1
    step = 1 / (q - p + 1)                      # the ramp's mean step
    before, after = np.abs(np.diff(w[:p])), np.abs(np.diff(w[q:]))
    for _ in range(EDGE_GROW):
        if p < 2 or w[p - 1] - w[p - 2] < max(0.3 * step, 3 * np.median(before) if len(before) > 2 else 0):
            break
        p -= 1
    for _ in range(EDGE_GROW):
        if q + 1 >= len(w) or w[q + 1] - w[q] < max(0.3 * step, 3 * np.median(after) if len(after) > 2 else 0):
            break
        q += 1
    return p, q


def _region(a: int, b: int, busy: np.ndarray, pad: int) -> tuple[int, int]:
    """[lo, hi) around [a, b), `pad` frames wider on each side, not into other transitions: the
    reference frames lo - 1 and hi are shot content."""
    n = len(busy)
    lo, hi = a, b
    while lo > 1 and a - lo < pad and not busy[lo - 2]:
        lo -= 1
    while hi < n - 1 and hi - b < pad and not busy[hi + 1]:
        hi += 1
    return lo, hi


def _weights(x: np.ndarray, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of x as (1 - w) * first + w * last + rest: (w, |rest| / |last - first|)."""
    d = last - first
    dd = float(d @ d)
    if dd <= 0:
        return np.zeros(len(x)), np.full(len(x), np.inf)
    rel = x - first
    w = rel @ d / dd
    rest = np.linalg.norm(rel - w[:, None] * d[None, :], axis=1) / np.sqrt(dd)
    return w, rest


def _ramp_fit(w: np.ndarray) -> tuple[int, int, float, np.ndarray]:
    """The ramp closest to the weights w (least squares over every p < q, both shapes): 0 before
    p, shape((t - p + 1) / (q - p + 1)) on [p, q), 1 from q on. Returns p, q, rms error and the
    ramp. Shapes: straight, or eased in and out (3u^2 - 2u^3), the curves editors' dissolves use.

    Every (p, q) is scored at once from prefix sums: with i = t - p + 1 and c = 1 / (q - p + 1),
    the cross term sum(w * ramp) needs sum(w * i^k) (k = 1..3), which expands into prefix sums
    of w * t^j."""
    m = len(w)
    t = np.arange(m, dtype=np.float64)
    pre = [np.concatenate([[0.0], np.cumsum(w * t ** j)]) for j in range(4)]   # sum over [0, k) of w t^j
    w2 = np.concatenate([[0.0], np.cumsum(w * w)])
    tail = np.concatenate([np.cumsum(((1 - w) ** 2)[::-1])[::-1], [0.0]])     # sum over [k, m) of (1-w)^2
    p = np.arange(m)[:, None]
    q = np.arange(m + 1)[None, :]
    n_in = np.maximum(q - p, 1)
    c = 1.0 / (n_in + 1)
    tj = [pj[q] - pj[p] for pj in pre]
    s = (p - 1).astype(np.float64)
    s1 = tj[1] - s * tj[0]                                          # sum of w * i
    s2 = tj[2] - 2 * s * tj[1] + s ** 2 * tj[0]                     # ... * i^2
    s3 = tj[3] - 3 * s * tj[2] + 3 * s ** 2 * tj[1] - s ** 3 * tj[0]
    i = np.arange(1, m + 1, dtype=np.float64)
    pw = [np.concatenate([[0.0], np.cumsum(i ** k)])[n_in] for k in range(7)]   # sum of i^k, i = 1..L
    inside = w2[q] - w2[p]
    linear = inside - 2 * c * s1 + c ** 2 * pw[2]
    eased = inside - 2 * (3 * c ** 2 * s2 - 2 * c ** 3 * s3) + \
        9 * c ** 4 * pw[4] - 12 * c ** 5 * pw[5] + 4 * c ** 6 * pw[6]
    best = None
    for shape, mid in ((_linear, linear), (_eased, eased)):
        sse = np.where(q > p, w2[p] + mid + tail[q], np.inf)
        k = int(np.argmin(sse))
        if best is None or sse.flat[k] < best[0]:
            best = (float(sse.flat[k]), k // (m + 1), k % (m + 1), shape)
    sse, p0, q0, shape = best
    ramp = shape(np.clip((t - p0 + 1) / (q0 - p0 + 1), 0, 1))
    return p0, q0, float(np.sqrt(max(sse, 0.0) / m)), ramp


def _linear(u: np.ndarray) -> np.ndarray:
    return u


def _eased(u: np.ndarray) -> np.ndarray:
    return u * u * (3 - 2 * u)


def _unexplained(x: np.ndarray, busy: np.ndarray, p: int, q: int) -> tuple[float, float]:
    """How far frames [p, q) stray from a blend of frames p - 1 and q, as a share of those two
    frames' difference (the worst frame): as it is, and less what the two shots' own motion
    would carry each of them over as many frames (a dissolve between moving shots)."""
    w, rest = _weights(x[p:q], x[p - 1], x[q])
    d = float(np.linalg.norm(x[q] - x[p - 1]))
    if d == 0:
        return np.inf, np.inf
    own = (1 - w) * _drift(x, busy, p - 1, -1, q - p) + w * _drift(x, busy, q, +1, q - p)[::-1]
    return float(rest.max()), float(((rest * d - own) / d).max())


def _drift(x: np.ndarray, busy: np.ndarray, ref: int, step: int, m: int) -> np.ndarray:
    """How far the shot's own motion carries it in 1..m frames, measured on its clean frames
    beyond `ref` (walking by `step` away from the transition). The DRIFT_GAP frames next to the
    transition are skipped: where a fit ends early they may still be part of it."""
    for _ in range(DRIFT_GAP):
        if 0 <= ref + step < len(x) and not busy[ref + step]:
            ref += step
    out = np.zeros(m)
    last = ref
    for j in range(1, m + 1):
        t = ref + step * j
        if 0 <= t < len(x) and not busy[t]:
            last = t
        out[j - 1] = np.linalg.norm(x[last] - x[ref])
    return out


def _returns(f: FeatureArrays, p: int, q: int, cfg: ShotsConfig) -> bool:
    """The picture after [p, q) is the one before it: a flash or a passing object, not a
    transition between two shots."""
    if p < 1 or q >= f.n:
        return False
    lag = next((k for k in LAGS if k >= q - p + 1 and q - k >= 0), None)
    if lag is None:
        return False
    return f.s(q, lag) < cfg.dissolve_structure / 2 and f.h(q, lag) < cfg.dissolve_color / 2


def _comes_back(f: FeatureArrays, p: int, q: int, busy: np.ndarray) -> bool:
    """The picture some frames before [p, q) is back as many frames after it: something passed
    in front of the camera (or the camera swung away and back), no new shot began."""
    x = f.thumb
    d = float(np.linalg.norm(x[q].astype(np.float32) - x[p - 1]))
    for k in range(1, 4 * (q - p) + 9):
        i, j = p - 1 - k, q + k
        if i < 0 or j >= f.n or busy[i] or busy[j]:
            break
        if np.linalg.norm(x[j].astype(np.float32) - x[i]) < 0.5 * d:
            return True
    return False


def detect_shots(features: ShotDetector | FeatureArrays, cfg: ShotsConfig) -> ShotResult:
    """Shots and transitions from the decode pass's features."""
    f = features.arrays() if isinstance(features, ShotDetector) else features
    n = f.n
    if n == 0:
        return ShotResult(0, [], [])
    kind = np.full(n, "", dtype=object)     # per-frame transition kind ("" = shot content)

    # 1-2. black and flat runs, and the fades into / out of them
    black = f.dark_frac >= cfg.black_fraction
    flat = f.luma_std < cfg.flat_std
    ramps: list[tuple[int, int]] = []
    for a, b in _runs(black | flat):
        run_kind = "black" if black[a:b].mean() >= 0.5 else "fade"   # a solid colour: a fade through it
        kind[a:b] = run_kind
        level = float(np.median(f.luma_mean[a:b]))
        if a > 0:
            steps, r = _fade_ramp(f, a, -1, level, cfg, stop=-1)
            if steps >= cfg.fade_min_frames:
                ramps.append((a - r, a))
        if b < n:
            steps, r = _fade_ramp(f, b - 1, +1, level, cfg, stop=n)
            if steps >= cfg.fade_min_frames:
                ramps.append((b, b + r))
    # a fade out straight into a fade in dips to dark without a black frame: the darkest
    # frame, with steady ramps on both sides, anchors the fade
    energy = f.luma_mean + f.luma_std
    for t in range(1, n - 1):
        if (kind[t] == "" and energy[t] < energy[t - 1] and energy[t] <= energy[t + 1]
                and f.luma_mean[t] <= 1.5 * cfg.black_luma):
            before = _fade_ramp(f, t, -1, float(f.luma_mean[t]), cfg, stop=-1)
            after = _fade_ramp(f, t, +1, float(f.luma_mean[t]), cfg, stop=n)
            if min(before[0], after[0]) >= cfg.fade_min_frames:
                ramps.append((t - before[1], t + 1 + after[1]))
    for a, b in ramps:
        kind[a:b] = np.where(kind[a:b] == "", "fade", kind[a:b])

    # 3. hard cuts: not inside a fade ramp (a fade from black starts with a big relative
    # change) nor between two transition frames (noise in the black)
    flashes = _flash_frames(f, cfg)
    cuts = [t for t in _cut_candidates(f, cfg, flashes)
            if kind[t] != "fade" and kind[t - 1] != "fade" and not (kind[t] and kind[t - 1])]

    # 4. dissolves, strongest first, away from everything already found
    busy = kind != ""
    for t in cuts:
        busy[t - 1:t + 1] = True
    for start, end in _dissolves(f, cfg, busy | flashes):
        kind[start:end] = np.where(kind[start:end] == "", "dissolve", kind[start:end])

    return _assemble(n, kind, cuts, cfg)


def _assemble(n: int, kind: np.ndarray, cuts: list[int], cfg: ShotsConfig) -> ShotResult:
    # a sliver of "content" squeezed between two gradual transitions is transition residue
    for a, b in _runs(kind == ""):
        if 0 < a and b < n and b - a < cfg.min_shot_frames and not any(a <= c <= b for c in cuts):
            kind[a:b] = kind[a - 1]
    transitions = [Transition("cut", t, t) for t in cuts]
    for k in ("black", "fade", "dissolve"):
        transitions += [Transition(k, a, b) for a, b in _runs(kind == k)]
    transitions.sort(key=lambda t: (t.start_frame, t.end_frame))

    boundaries = sorted(set(cuts))
    shots = []
    for a, b in _runs(kind == ""):
        edges = [a] + [c for c in boundaries if a < c < b] + [b]
        for s, e in zip(edges[:-1], edges[1:]):
            shots.append(Shot(s, e, _kind_before(s, kind, cuts), _kind_after(e, kind, cuts, n)))
    return ShotResult(n, shots, transitions)


def split_at(shots: list[Shot], frames: list[int], transition: str = "resize") -> list[Shot]:
    """`shots` split at each of `frames` (the first frame of a new part) that falls inside one,
    the two parts meeting at `transition`: where a stream switches picture size, a clip (one
    file, one width and height) must not hold both sizes."""
    out = []
    for shot in shots:
        inside = [f for f in sorted(set(frames)) if shot.start_frame < f < shot.end_frame]
        edges = [shot.start_frame, *inside, shot.end_frame]
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            out.append(Shot(a, b, shot.start_transition if i == 0 else transition,
                            shot.end_transition if i == len(edges) - 2 else transition))
    return out


def _kind_before(s: int, kind: np.ndarray, cuts: list[int]) -> str:
    if s in cuts:
        return "cut"
    return "start" if s == 0 else str(kind[s - 1])


def _kind_after(e: int, kind: np.ndarray, cuts: list[int], n: int) -> str:
    if e in cuts:
        return "cut"
    return "end" if e == n else str(kind[e])

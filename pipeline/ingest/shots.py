"""Shot detection: clean shot ranges and the transitions between them, from one decode pass.

`ShotDetector` is a `FrameAnalyzer`: during the decode pass it feeds each small frame to
PySceneDetect's `ContentDetector` (its HSV frame score) and records a few more numbers per frame:
brightness, contrast, how much of the frame is dark, and, against a ring buffer of the last
`max(LAGS)` frames, two distances at every lag in `LAGS`:

- structure `S(a, b)` = 1 - normalised cross-correlation of 32x18 luma thumbnails. Motion-blur,
  exposure and colour changes barely move it; a new shot moves it to ~1.
- colour `H(a, b)` = half the L1 distance of coarse 3-D colour histograms (0..1). Objects moving
  inside a shot barely move it; a dissolve between shots moves it steadily.

`detect_shots` then works on those arrays alone (264 bytes per frame):

1. black / flat frames (mostly dark, or no contrast at all) are transitions;
2. fades: the contrast ramps monotonically into or out of a black / flat run, or down to a
   dark frame and straight up again (a fade out-in with no black frame);
3. hard cuts: ContentDetector's score and a structure jump together, larger than the frames
   on either side (fast motion changes every frame, a cut only one), and not undone within
   `flash_max_frames` (a flash, an explosion, a camera strobe returns to the same picture);
4. dissolves: over a window of k frames structure and colour both change like at a cut, spread
   out, while the k frames before and after the window change clearly less. Requiring the
   colour change keeps fast or bouncing motion (structure changes at a varying pace, colours
   stay) from looking like a dissolve; a dissolve between two shots of the same palette is
   the price.

Whatever is not a transition is shot content. Frame indices are 0-based decode order, ends
exclusive; a cut is a zero-length transition at the first frame of the new shot.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode

from pipeline.ingest.analysis import MIN_THUMB_STD, THUMB, AnalysisFrame
from pipeline.ingest.config import ShotsConfig

# Lags (in frames) at which each frame is compared with an earlier one: dense for cuts, flashes
# and short dissolves, sparser for long dissolves (dissolve_max_frames must stay below the max).
LAGS = tuple(range(1, 25)) + (28, 32, 40, 48, 56, 64)
LAG_INDEX = {k: i for i, k in enumerate(LAGS)}
COLOR_THUMB = (40, 22)   # the colour histogram is taken on this small copy (cheaper, same result)
HIST_BINS = 4            # per channel: 4x4x4 joint BGR histogram
BLEND_EDGE = 0.15        # a dissolve frame differs in colour from both shots by this share of
                         # the shots' own difference (the rest is added back as a margin)


@dataclass(frozen=True)
class Transition:
    kind: str          # cut | fade | dissolve | black
    start_frame: int   # first frame of the transition (for a cut: first frame of the new shot)
    end_frame: int     # exclusive; == start_frame for a cut


@dataclass(frozen=True)
class Shot:
    start_frame: int
    end_frame: int     # exclusive
    start_transition: str  # what the shot begins with: start | cut | fade | dissolve | black
    end_transition: str    # what ends it: end | cut | fade | dissolve | black


@dataclass
class ShotResult:
    n_frames: int
    shots: list[Shot]
    transitions: list[Transition]

    @property
    def hard_cuts(self) -> list[int]:
        return [t.start_frame for t in self.transitions if t.kind == "cut"]


class _ScoredContentDetector(ContentDetector):
    """PySceneDetect's ContentDetector, keeping its per-frame score (as AdaptiveDetector does)
    instead of its own cut decisions."""

    def __init__(self) -> None:
        super().__init__(min_scene_len=0)   # its own cut filter is unused: skip that bookkeeping
        # With the filter off and no StatsManager the timecode is never read: one will do.
        self._timecode = FrameTimecode(0, Fraction(30))

    def score(self, bgr: np.ndarray) -> float:
        self.process_frame(self._timecode, bgr)
        return float(self._frame_score or 0.0)


@dataclass
class FeatureArrays:
    """Per-frame numbers for `detect_shots` (row t compares frame t with frame t - LAGS[j])."""

    content: np.ndarray     # (n,) ContentDetector score, frame t-1 -> t (0 for t = 0)
    luma_mean: np.ndarray   # (n,)
    luma_std: np.ndarray    # (n,)
    dark_frac: np.ndarray   # (n,) fraction of pixels at or below the black level
    structure: np.ndarray   # (n, len(LAGS)) S(t - k, t); NaN where t - k < 0
    color: np.ndarray       # (n, len(LAGS)) H(t - k, t); NaN where t - k < 0
    hist: np.ndarray        # (n, HIST_BINS**3) float16 colour histogram, for H between any two frames

    @property
    def n(self) -> int:
        return len(self.content)

    def s(self, t: int, k: int) -> float:
        return float(self.structure[t, LAG_INDEX[k]])

    def h(self, t: int, k: int) -> float:
        return float(self.color[t, LAG_INDEX[k]])

    def h_pair(self, a: int, b: int) -> float:
        return 0.5 * float(np.abs(self.hist[a].astype(np.float32) - self.hist[b].astype(np.float32)).sum())


class ShotDetector:
    """FrameAnalyzer collecting what `detect_shots` needs. Memory: a 64-frame ring of 32x18
    thumbnails and histograms, plus 264 bytes per frame (~30 MB for an hour at 30 fps)."""

    name = "shots"

    def __init__(self, cfg: ShotsConfig):
        self.cfg = cfg
        self._content = _ScoredContentDetector()
        ring = max(LAGS) + 1
        self._ring = ring
        self._z = np.zeros((ring, THUMB[0] * THUMB[1]), np.float32)   # normalised thumbnails
        self._flat = np.ones(ring, bool)
        self._hist = np.zeros((ring, HIST_BINS ** 3), np.float32)
        self._lags = np.asarray(LAGS)
        self._n = 0
        # per-frame rows, grown by doubling: content, luma mean, luma std, dark share | S | H | hist
        self._scalars = np.zeros((1024, 4), np.float32)
        self._structure = np.zeros((1024, len(LAGS)), np.float16)
        self._color = np.zeros((1024, len(LAGS)), np.float16)
        self._hists = np.zeros((1024, HIST_BINS ** 3), np.float16)

    def _grow(self) -> None:
        for name in ("_scalars", "_structure", "_color", "_hists"):
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
        small = cv2.resize(bgr, COLOR_THUMB, interpolation=cv2.INTER_AREA)
        hist = cv2.calcHist([small], [0, 1, 2], None, [HIST_BINS] * 3, [0, 256] * 3).ravel()
        hist /= hist.sum()

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
        self._hists[i] = hist
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
            hist=self._hists[:n].copy(),
        )


# --- detection on the feature arrays -----------------------------------------------------------

def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _fade_ramp(f: FeatureArrays, anchor: int, step: int, level: float, cfg: ShotsConfig,
               stop: int) -> int:
    """Frames next to a black/flat run (at `anchor`, walking by `step` = -1 or +1, never to
    `stop`) whose look moves steadily towards the run's: the fade ramp. Returns its length."""
    def away(j: int) -> float:   # how far frame j's look is from the flat run's
        return abs(f.luma_mean[j] - level) + f.luma_std[j]

    length, j = 0, anchor + step
    prev = away(anchor)
    while j != stop:
        cur = away(j)
        if cur <= prev * (1 + cfg.fade_min_step) + 0.5:
            break
        length += 1
        prev = cur
        j += step
    return length


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


def _dissolve_candidates(f: FeatureArrays, cfg: ShotsConfig, busy: np.ndarray) -> list[tuple[float, int, int]]:
    """(score, first, end) of windows (last frame of one shot .. first frame of the next)
    across which structure and colour change like at a cut, while the equally long windows
    before and after change clearly less. The score (how far the change across stands above
    the change around) peaks at windows just spanning the dissolve: smaller ones miss part of
    the change, larger ones compare more motion around."""
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
        hit = (s[t] >= cfg.dissolve_structure) & (h[t] >= cfg.dissolve_color) & ((s_gain >= 1) | (h_gain >= 1))
        for t_end, score in zip(t[hit], (s_gain + h_gain)[hit]):
            a = int(t_end) - k   # last frame of the outgoing shot
            if not busy[a:t_end + 1].any():
                out.append((float(score), a + 1, int(t_end)))
    return out


def _dissolves(f: FeatureArrays, cfg: ShotsConfig, busy: np.ndarray) -> list[tuple[int, int]]:
    """Dissolve frame ranges: the best-scoring candidate windows that do not overlap a better
    one, each narrowed to the frames that look like neither shot."""
    taken = busy.copy()
    found = []
    for _, a, b in sorted(_dissolve_candidates(f, cfg, busy), reverse=True):
        if taken[a:b].any():
            continue
        p, q = _blend_extent(f, a, b, busy)
        if not _returns(f, p, q, cfg):
            found.append((p, q))
        taken[min(a, p):max(b, q)] = True
    return found


def _blend_extent(f: FeatureArrays, a: int, b: int, busy: np.ndarray) -> tuple[int, int]:
    """The frames around window [a, b) that are noticeably unlike both shots' frames. The
    window is padded first (by a quarter, not into other transitions): with the sparse long
    lags the best window can be a little shorter than the dissolve."""
    pad = max(2, (b - a) // 4)
    lo, hi = a, b
    while lo > 1 and a - lo < pad and not busy[lo - 2]:
        lo -= 1
    while hi < f.n - 1 and hi - b < pad and not busy[hi + 1]:
        hi += 1
    first, last = lo - 1, hi                     # reference frames, one in each shot
    whole = f.h_pair(first, last)
    hist = f.hist[lo:hi].astype(np.float32)
    to_first = 0.5 * np.abs(hist - f.hist[first].astype(np.float32)).sum(axis=1)
    to_last = 0.5 * np.abs(hist - f.hist[last].astype(np.float32)).sum(axis=1)
    between = np.flatnonzero((to_first > BLEND_EDGE * whole) & (to_last > BLEND_EDGE * whole))
    if whole <= 0 or len(between) == 0:
        return a, b
    p, q = lo + int(between[0]), lo + int(between[-1]) + 1
    # frames within BLEND_EDGE of either end are still blends: widen by that share (+2)
    margin = int(np.ceil(BLEND_EDGE * (q - p))) + 2
    for _ in range(margin):
        if p > 1 and not busy[p - 2]:
            p -= 1
        if q < f.n - 1 and not busy[q + 1]:
            q += 1
    return p, q


def _returns(f: FeatureArrays, p: int, q: int, cfg: ShotsConfig) -> bool:
    """The picture after [p, q) is the one before it: a flash or a passing object, not a
    transition between two shots."""
    if p < 1 or q >= f.n:
        return False
    lag = next((k for k in LAGS if k >= q - p + 1 and q - k >= 0), None)
    if lag is None:
        return False
    return f.s(q, lag) < cfg.dissolve_structure / 2 and f.h(q, lag) < cfg.dissolve_color / 2


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
            r = _fade_ramp(f, a, -1, level, cfg, stop=-1)
            if r >= cfg.fade_min_frames:
                ramps.append((a - r, a))
        if b < n:
            r = _fade_ramp(f, b - 1, +1, level, cfg, stop=n)
            if r >= cfg.fade_min_frames:
                ramps.append((b, b + r))
    # a fade out straight into a fade in dips to dark without a black frame: the darkest
    # frame, with steady ramps on both sides, anchors the fade
    energy = f.luma_mean + f.luma_std
    for t in range(1, n - 1):
        if (kind[t] == "" and energy[t] < energy[t - 1] and energy[t] <= energy[t + 1]
                and f.luma_mean[t] <= 1.5 * cfg.black_luma):
            before = _fade_ramp(f, t, -1, float(f.luma_mean[t]), cfg, stop=-1)
            after = _fade_ramp(f, t, +1, float(f.luma_mean[t]), cfg, stop=n)
            if min(before, after) >= cfg.fade_min_frames:
                ramps.append((t - before, t + 1 + after))
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


def _kind_before(s: int, kind: np.ndarray, cuts: list[int]) -> str:
    if s in cuts:
        return "cut"
    return "start" if s == 0 else str(kind[s - 1])


def _kind_after(e: int, kind: np.ndarray, cuts: list[int], n: int) -> str:
    if e in cuts:
        return "cut"
    return "end" if e == n else str(kind[e])

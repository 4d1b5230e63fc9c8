"""Shot-detection quality: decode + detect every video with ground truth, score cuts, fades,
dissolves, purity and coverage.

    .venv/bin/python bench/shots_eval.py                      # ../shared/data/shots
    .venv/bin/python bench/shots_eval.py --dev                # + real-footage dev cases (bench/shots_dev.py)
    .venv/bin/python bench/shots_eval.py --samples DIR        # + a `recap samples DIR` corpus
    .venv/bin/python bench/shots_eval.py --stress 20          # + 20 random synthetic edits
    git show HEAD:pipeline/ingest/shots.py > bench/out/shots_head.py
    .venv/bin/python bench/shots_eval.py --dev --detector bench/out/shots_head.py   # another version

Scores, per file and per set:
- cuts: precision / recall / F1, found within +-2 frames of the truth (one-to-one);
- fades and dissolves, separately: a gradual transition (consecutive fade / black / dissolve
  frames, found or true) is matched one-to-one to the one it overlaps most; a match counts for
  a kind's precision and recall only when the kinds agree (a fade through black or white is a
  "fade", a cross-blend a "dissolve"). `len` is the found / true length of matched dissolves;
- purity: detected shots holding no true transition (no cut more than 2 frames inside, no frame
  of a gradual transition), and the shots that do are printed;
- coverage: the share of the true shots' frames that lie in a detected shot (where the truth
  lists every transition: the shared videos with the annotations below, the dev cases and the
  synthetic ones).

The shared ground truth lists cuts and black segments; `SHARED_GRADUAL` completes it with the
gradual transitions measured here frame by frame (per-frame luma, and for the dissolve a
blend fit: frames 529-557 of testvideo.mp4 are (1-a)*frame 528 + a*frame 558 with a rising
0.07 -> 0.94; 528 and 558 are unchanged stills). Exit status 1 when a set's cut F1 < 0.95 or any
detected shot holds a transition.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.shots_dev import build  # noqa: E402
from pipeline.ingest import shots as shots_module  # noqa: E402
from pipeline.ingest.config import DecodeConfig, ShotsConfig, load_ingest_config  # noqa: E402
from pipeline.ingest.decode import decode_pass  # noqa: E402
from pipeline.ingest.shots import ShotResult  # noqa: E402
from pipeline.samples.synth import (  # noqa: E402
    MOTIONS,
    Cut,
    Dissolve,
    FadeThroughBlack,
    Shot,
    plan_frames,
    render_frames,
    write_video,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "shots"
TOLERANCE = 2
KINDS = ("fade", "dissolve")

# Gradual transitions of the shared videos [start, end) that ground_truth.json does not list
# frame-exactly; a file named here (or with no gradual transition at all) has a complete truth.
SHARED_GRADUAL: dict[str, list[tuple[int, int, str]]] = {
    "pyscenedetect/testvideo.mp4": [
        (0, 30, "fade"),         # black (the copyright line fades in on it), cut to the leaf at 30
        (180, 240, "fade"),      # cut to black, fade in 211-239
        (331, 423, "fade"),      # fade out 331-359, black, fade in 394-422
        (529, 558, "dissolve"),  # leaf on a rock -> metal grating (two stills)
        (664, 720, "fade"),      # fade out 664-692, black to the end
    ],
    "moviepy/big_buck_bunny_0_30.webm": [(0, 48, "fade")],   # from black; frame 48 is the first at full level
    "pyscenedetect/fades.mp4": [(0, 250, "fade")],           # a flat field fading (no picture at all)
    "pyscenedetect/delayed_start.mp4": [(0, 24, "fade")],    # likewise
}
# issue-195-aspect-ratio.mp4 458-469: a continuous shot per ground_truth.json ("not_a_cut: focus pull").


@dataclass
class Truth:
    path: Path
    cuts: list[int]
    gradual: list[tuple[int, int, str]]                # [start, end) and fade | dissolve
    forbidden: list[tuple[int, int, str]] = field(default_factory=list)   # more ranges no shot may touch
    complete: bool = True                             # every transition is listed


def match(found: list[int], truth: list[int], tol: int = TOLERANCE) -> int:
    """True positives: greedy one-to-one matching, closest pairs first."""
    pairs = sorted((abs(f - t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth) if abs(f - t) <= tol)
    used_f, used_t, tp = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_f and j not in used_t:
            used_f.add(i), used_t.add(j)
            tp += 1
    return tp


def prf(tp: int, n_found: int, n_truth: int) -> tuple[float, float, float]:
    p = tp / n_found if n_found else 1.0
    r = tp / n_truth if n_truth else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f1


def detect(path: Path, decode_cfg: DecodeConfig, shots_cfg: ShotsConfig,
           detector: ModuleType = shots_module) -> tuple[ShotResult, float]:
    t0 = time.perf_counter()
    features = detector.ShotDetector(shots_cfg)
    decode_pass(path, decode_cfg, [features])
    return detector.detect_shots(features, shots_cfg), time.perf_counter() - t0


def load_detector(path: Path) -> ModuleType:
    """Another version of pipeline/ingest/shots.py, to score it on the same cases."""
    spec = importlib.util.spec_from_file_location("shots_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


# --- truth readers -------------------------------------------------------------------------------

def merge_gradual(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Touching gradual spans as one transition (fade out + black + fade in is one fade); a
    transition with a dissolve in it is a dissolve."""
    out: list[list] = []
    for a, b, kind in sorted(spans):
        kind = "dissolve" if kind == "dissolve" else "fade"
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
            out[-1][2] = "dissolve" if "dissolve" in (kind, out[-1][2]) else "fade"
        else:
            out.append([a, b, kind])
    return [(a, b, k) for a, b, k in out]


def shared_truth(root: Path) -> list[Truth]:
    gt = json.loads((root / "ground_truth.json").read_text())
    out = []
    for rel, entry in gt.items():
        if rel.startswith("_"):
            continue
        cuts = entry.get("hard_cuts_decode_idx", entry.get("hard_cuts", []))
        forbidden = [(a, b + 1, "black") for a, b in entry.get("segments_visual", {}).get("black", [])]
        if "fade_in_from_black" in entry:
            a, b = entry["fade_in_from_black"]
            forbidden.append((a, b + 1, "fade_in_from_black"))
        # fades.mp4: ThresholdDetector's fade points sit in the middle of black / white holds
        for label, starts in entry.get("test_asserted", {}).items():
            if label.startswith("ThresholdDetector"):
                forbidden += [(s, s + 1, f"fade point ({label.split('(')[0]})") for s in starts if s > 0]
        gradual = merge_gradual(SHARED_GRADUAL.get(rel, []))
        complete = rel in SHARED_GRADUAL or not forbidden
        out.append(Truth(root / rel, cuts, gradual, forbidden, complete))
    return out


def transitions_truth(path: Path, transitions: list[dict]) -> Truth:
    """A synth / dev-case truth list (kinds cut, dissolve, fade_out, black, fade_in)."""
    cuts = [t["start_frame"] for t in transitions if t["kind"] == "cut"]
    gradual = merge_gradual([(t["start_frame"], t["end_frame"], t["kind"]) for t in transitions if t["kind"] != "cut"])
    return Truth(path, cuts, gradual)


def samples_truth(root: Path) -> list[Truth]:
    truth = json.loads((root / "truth.json").read_text())
    return [transitions_truth(root / name, v["transitions"]) for name, v in truth["videos"].items()]


def stress_truth(root: Path, count: int, seed: int) -> list[Truth]:
    """Random edit lists (pipeline.samples.synth): cuts, dissolves of 6-45 frames, fades through black,
    flashes of 1-3 frames, every kind of motion; encoded small with x264 and decoded for real."""
    rng = np.random.default_rng(seed)
    out = []
    for v in range(count):
        edits: list = []
        for i in range(int(rng.integers(3, 6))):
            if i:
                r = rng.random()
                if r < 0.5:
                    edits.append(Cut())
                elif r < 0.75:
                    edits.append(Dissolve(int(rng.integers(6, 46))))
                else:
                    edits.append(FadeThroughBlack(int(rng.integers(3, 16)), int(rng.integers(0, 9)), int(rng.integers(3, 16))))
            n = int(rng.integers(30, 80))
            flash = int(rng.integers(5, n - 8)) if rng.random() < 0.3 else None
            edits.append(Shot(n, str(rng.choice(MOTIONS)), flash_at=flash, flash_frames=int(rng.integers(1, 4))))
        _, truth = plan_frames(edits)
        path = root / f"stress{v:02d}.mp4"
        write_video(path, render_frames(edits, 320, 180, seed=seed * 1000 + v), 25, "libx264",
                    options={"preset": "veryfast", "crf": "20"})
        out.append(transitions_truth(path, truth["transitions"]))
    return out


# --- scoring -------------------------------------------------------------------------------------

def found_gradual(result: ShotResult) -> list[tuple[int, int, str]]:
    return merge_gradual([(t.start_frame, t.end_frame, t.kind) for t in result.transitions if t.kind != "cut"])


def match_gradual(found: list[tuple[int, int, str]], truth: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """(found index, truth index) pairs: one-to-one, largest overlap first."""
    pairs = sorted(((min(fb, tb) - max(fa, ta), i, j) for i, (fa, fb, _) in enumerate(found)
                    for j, (ta, tb, _) in enumerate(truth) if min(fb, tb) > max(fa, ta)), reverse=True)
    used_f, used_t, out = set(), set(), []
    for _, i, j in pairs:
        if i not in used_f and j not in used_t:
            used_f.add(i), used_t.add(j)
            out.append((i, j))
    return out


def impure(result: ShotResult, truth: Truth) -> list[str]:
    bad = []
    ranges = [(a, b, k) for a, b, k in truth.gradual] + truth.forbidden
    for s in result.shots:
        for a, b, label in ranges:
            if s.start_frame < b and a < s.end_frame:
                bad.append(f"shot [{s.start_frame},{s.end_frame}) overlaps {label} [{a},{b})")
                break
        else:
            for c in truth.cuts:
                if s.start_frame + TOLERANCE < c < s.end_frame - TOLERANCE:
                    bad.append(f"shot [{s.start_frame},{s.end_frame}) contains hard cut {c}")
                    break
    return bad


def coverage(result: ShotResult, truth: Truth) -> tuple[int, int]:
    """(true shot frames inside a detected shot, true shot frames)."""
    n = result.n_frames
    clean = np.ones(n, bool)
    for a, b, _ in truth.gradual + truth.forbidden:
        clean[a:b] = False
    kept = np.zeros(n, bool)
    for s in result.shots:
        kept[s.start_frame:s.end_frame] = True
    return int((clean & kept).sum()), int(clean.sum())


@dataclass
class Tally:
    cut_tp: int = 0
    cut_found: int = 0
    cut_truth: int = 0
    kind_tp: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    kind_found: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    kind_truth: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    any_tp: int = 0
    any_found: int = 0
    any_truth: int = 0
    dissolve_len: list = field(default_factory=list)   # found / true length of matched dissolves
    shots: int = 0
    impure: int = 0
    kept: int = 0
    clean: int = 0

    def add(self, result: ShotResult, truth: Truth) -> tuple[list[str], str]:
        """Add one video; returns (impure shots, a short per-file summary)."""
        self.cut_tp += match(result.hard_cuts, truth.cuts)
        self.cut_found += len(result.hard_cuts)
        self.cut_truth += len(truth.cuts)
        found = found_gradual(result)
        pairs = match_gradual(found, truth.gradual)
        if truth.complete:   # without a full truth a found transition cannot be called false
            self.any_found += len(found)
            for k in KINDS:
                self.kind_found[k] += sum(f[2] == k for f in found)
        self.any_truth += len(truth.gradual)
        self.any_tp += len(pairs)
        for k in KINDS:
            self.kind_truth[k] += sum(t[2] == k for t in truth.gradual)
        lens = []
        for i, j in pairs:
            if found[i][2] == truth.gradual[j][2]:
                self.kind_tp[found[i][2]] += 1
                if found[i][2] == "dissolve":
                    lens.append((found[i][1] - found[i][0]) / (truth.gradual[j][1] - truth.gradual[j][0]))
        self.dissolve_len += lens
        bad = impure(result, truth)
        self.shots += len(result.shots)
        self.impure += len(bad)
        kept, clean = coverage(result, truth) if truth.complete else (0, 0)
        self.kept += kept
        self.clean += clean
        unmatched = len(found) - len(pairs)
        summary = (f"grad {len(pairs)}/{len(truth.gradual)} found {len(found)}"
                   + (f" false {unmatched}" if truth.complete and unmatched else "")
                   + (f" dis-len {','.join(f'{x:.2f}' for x in lens)}" if lens else "")
                   + (f" cov {kept / clean:.3f}" if clean else ""))
        return bad, summary

    def lines(self) -> list[str]:
        cp, cr, cf = prf(self.cut_tp, self.cut_found, self.cut_truth)
        out = [f"cuts      P {cp:.3f}  R {cr:.3f}  F1 {cf:.3f}   ({self.cut_tp} of {self.cut_truth} true, {self.cut_found} found)"]
        for k in KINDS:
            p, r, _ = prf(self.kind_tp[k], self.kind_found[k], self.kind_truth[k])
            out.append(f"{k + 's':9s} P {p:.3f}  R {r:.3f}            ({self.kind_tp[k]} of {self.kind_truth[k]} true, "
                       f"{self.kind_found[k]} found where the truth is complete)")
        p, r, _ = prf(self.any_tp, self.any_found, self.any_truth)
        out.append(f"gradual   P {p:.3f}  R {r:.3f}            (any kind: {self.any_tp} of {self.any_truth}, {self.any_found} found)")
        if self.dissolve_len:
            d = np.array(self.dissolve_len)
            out.append(f"dissolve length found/true: median {np.median(d):.2f}, max {d.max():.2f}")
        out.append(f"purity    {1 - self.impure / max(self.shots, 1):.3f}   ({self.impure} of {self.shots} shots hold a transition)")
        if self.clean:
            out.append(f"coverage  {self.kept / self.clean:.3f}   ({self.kept} of {self.clean} true shot frames kept)")
        return out


def evaluate(title: str, items: list[Truth], decode_cfg: DecodeConfig, shots_cfg: ShotsConfig,
             verbose: bool, detector: ModuleType = shots_module) -> Tally:
    print(f"\n== {title}")
    tally = Tally()
    for truth in items:
        result, secs = detect(truth.path, decode_cfg, shots_cfg, detector)
        bad, summary = tally.add(result, truth)
        tp = match(result.hard_cuts, truth.cuts)
        print(f"{truth.path.name:34s} cuts {tp}/{len(truth.cuts)} found {len(result.hard_cuts)}  {summary}  "
              f"shots {len(result.shots)}  {secs:.2f}s")
        for line in bad:
            print(f"    ! {line}")
        if verbose or result.hard_cuts != sorted(truth.cuts):
            print(f"    truth cuts {truth.cuts}  found {result.hard_cuts}")
        if verbose:
            print(f"    truth gradual {truth.gradual}")
            print(f"    found {[(t.kind, t.start_frame, t.end_frame) for t in result.transitions]}")
    for line in tally.lines():
        print("  " + line)
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED, help="folder with ground_truth.json")
    ap.add_argument("--dev", action="store_true", help="also score the real-footage dev cases (built if needed)")
    ap.add_argument("--samples", type=Path, help="also score a `recap samples` corpus (truth.json)")
    ap.add_argument("--stress", type=int, default=0, metavar="N", help="also score N random synthetic edits")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --stress edits")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="ingest config override, e.g. shots.cut_structure=0.4")
    ap.add_argument("--detector", type=Path, metavar="SHOTS_PY",
                    help="score this version of pipeline/ingest/shots.py instead (e.g. one from git show)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every transition")
    args = ap.parse_args(argv)
    cfg = load_ingest_config(overrides=args.set)
    detector = load_detector(args.detector) if args.detector else shots_module
    sets: list[tuple[str, Tally]] = []
    run = lambda title, items: sets.append(  # noqa: E731
        (title, evaluate(title, items, cfg.decode, cfg.shots, args.verbose, detector)))
    if (args.shared / "ground_truth.json").is_file():
        run(f"shared ground truth ({args.shared})", shared_truth(args.shared))
        if args.dev:
            run("real-footage dev cases (bench/shots_dev.py)", samples_truth(build(shared=args.shared)))
    else:
        print(f"skipping shared data (and the dev cases made from it): {args.shared} is absent")
    if args.samples:
        run(f"synthetic samples ({args.samples})", samples_truth(args.samples))
    if args.stress:
        with tempfile.TemporaryDirectory() as tmp:
            run(f"random synthetic edits (seed {args.seed})", stress_truth(Path(tmp), args.stress, args.seed))
    ok = all(prf(t.cut_tp, t.cut_found, t.cut_truth)[2] >= 0.95 and t.impure == 0 for _, t in sets)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

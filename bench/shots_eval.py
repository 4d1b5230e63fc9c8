"""Shot-detection quality: decode + detect every video with ground truth, score the hard cuts.

    .venv/bin/python bench/shots_eval.py                      # ../shared/data/shots
    .venv/bin/python bench/shots_eval.py --samples DIR        # a `recap samples DIR` corpus too
    .venv/bin/python bench/shots_eval.py --stress 20          # 20 random synthetic edits too

Hard cuts match the truth within +-2 frames (one-to-one); prints per-file and overall
precision / recall / F1, and every shot that overlaps a listed transition (black segment, fade,
dissolve) or contains a hard cut. Exit status 1 when overall F1 < 0.95 or any shot overlaps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ingest.config import DecodeConfig, ShotsConfig, load_ingest_config  # noqa: E402
from pipeline.ingest.decode import decode_pass  # noqa: E402
from pipeline.ingest.shots import ShotDetector, ShotResult, detect_shots  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "shots"
TOLERANCE = 2


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


def detect(path: Path, decode_cfg: DecodeConfig, shots_cfg: ShotsConfig) -> tuple[ShotResult, float]:
    t0 = time.perf_counter()
    features = ShotDetector(shots_cfg)
    decode_pass(path, decode_cfg, [features])
    return detect_shots(features, shots_cfg), time.perf_counter() - t0


def shared_truth(root: Path) -> list[tuple[Path, list[int], list[tuple[int, int, str]]]]:
    """(video, hard cuts, forbidden ranges [a, b) with a label) from ground_truth.json."""
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
        out.append((root / rel, cuts, forbidden))
    return out


def samples_truth(root: Path) -> list[tuple[Path, list[int], list[tuple[int, int, str]]]]:
    truth = json.loads((root / "truth.json").read_text())
    out = []
    for name, v in truth["videos"].items():
        cuts = [t["start_frame"] for t in v["transitions"] if t["kind"] == "cut"]
        forbidden = [(t["start_frame"], t["end_frame"], t["kind"]) for t in v["transitions"] if t["kind"] != "cut"]
        out.append((root / name, cuts, forbidden))
    return out


def stress_truth(root: Path, count: int, seed: int) -> list[tuple[Path, list[int], list[tuple[int, int, str]]]]:
    """Random edit lists (pipeline.samples.synth): cuts, dissolves of 6-45 frames, fades through black,
    flashes of 1-3 frames, every kind of motion; encoded small with x264 and decoded for real."""
    import numpy as np

    from pipeline.samples.synth import (
        MOTIONS,
        Cut,
        Dissolve,
        FadeThroughBlack,
        Shot,
        plan_frames,
        render_frames,
        write_video,
    )

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
        cuts = [t["start_frame"] for t in truth["transitions"] if t["kind"] == "cut"]
        forbidden = [(t["start_frame"], t["end_frame"], t["kind"]) for t in truth["transitions"] if t["kind"] != "cut"]
        out.append((path, cuts, forbidden))
    return out


def overlaps(result: ShotResult, cuts: list[int], forbidden: list[tuple[int, int, str]]) -> list[str]:
    bad = []
    for s in result.shots:
        for a, b, label in forbidden:
            if s.start_frame < b and a < s.end_frame:
                bad.append(f"shot [{s.start_frame},{s.end_frame}) overlaps {label} [{a},{b})")
        for c in cuts:
            if s.start_frame + TOLERANCE < c < s.end_frame - TOLERANCE:
                bad.append(f"shot [{s.start_frame},{s.end_frame}) contains hard cut {c}")
    return bad


def content_kept(result: ShotResult, cuts: list[int], forbidden: list[tuple[int, int, str]]) -> tuple[float, int]:
    """(share of the true clean frames that ended up in a detected shot, false splits: extra
    detected shots inside one true shot)."""
    clean = [True] * result.n_frames
    for a, b, _ in forbidden:
        clean[a:b] = [False] * (min(b, result.n_frames) - a)
    kept = [False] * result.n_frames
    for sh in result.shots:
        kept[sh.start_frame:sh.end_frame] = [True] * (sh.end_frame - sh.start_frame)
    n_clean = sum(clean)
    share = sum(c and k for c, k in zip(clean, kept)) / n_clean if n_clean else 1.0
    splits = 0   # extra pieces (of 5+ frames) that a true clean stretch was cut into
    runs, start = [], None
    for i, c in enumerate(clean + [False]):
        if c and start is None:
            start = i
        elif not c and start is not None:
            runs.append((start, i))
            start = None
    cut_set = sorted(cuts)
    for a, b in runs:
        edges = [a] + [c for c in cut_set if a < c < b] + [b]
        for lo, hi in zip(edges[:-1], edges[1:]):
            pieces = sum(1 for sh in result.shots if min(hi, sh.end_frame) - max(lo, sh.start_frame) >= 5)
            splits += max(0, pieces - 1)
    return share, splits


def evaluate(title: str, items, decode_cfg: DecodeConfig, shots_cfg: ShotsConfig, verbose: bool,
             complete: bool = True) -> tuple[float, int]:
    """`complete`: the truth lists every transition, so kept content and false splits mean something."""
    print(f"\n== {title}")
    print(f"{'file':34s} {'truth':>5s} {'found':>5s} {'tp':>3s} {'P':>5s} {'R':>5s} {'F1':>5s} {'shots':>5s} {'overlap':>7s} {'kept':>5s} {'split':>5s} {'sec':>5s}")
    tot_tp = tot_found = tot_truth = tot_bad = tot_splits = 0
    for path, cuts, forbidden in items:
        result, secs = detect(path, decode_cfg, shots_cfg)
        found = result.hard_cuts
        tp = match(found, cuts)
        p, r, f1 = prf(tp, len(found), len(cuts))
        bad = overlaps(result, cuts, forbidden)
        kept, splits = content_kept(result, cuts, forbidden)
        tot_splits += splits
        tot_tp, tot_found, tot_truth, tot_bad = tot_tp + tp, tot_found + len(found), tot_truth + len(cuts), tot_bad + len(bad)
        print(f"{path.name:34s} {len(cuts):5d} {len(found):5d} {tp:3d} {p:5.2f} {r:5.2f} {f1:5.2f} "
              f"{len(result.shots):5d} {len(bad):7d} " + (f"{kept:5.2f} {splits:5d}" if complete else f"{'-':>5s} {'-':>5s}")
              + f" {secs:5.2f}")
        for line in bad:
            print(f"    ! {line}")
        if verbose or found != sorted(cuts):
            print(f"    truth cuts {cuts}  found {found}")
        if verbose:
            print("    transitions", [(t.kind, t.start_frame, t.end_frame) for t in result.transitions])
    p, r, f1 = prf(tot_tp, tot_found, tot_truth)
    print(f"{'OVERALL':34s} {tot_truth:5d} {tot_found:5d} {tot_tp:3d} {p:5.2f} {r:5.2f} {f1:5.2f} {'':5s} {tot_bad:7d} {'':5s} {tot_splits if complete else '-':>5}")
    return f1, tot_bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED, help="folder with ground_truth.json")
    ap.add_argument("--samples", type=Path, help="also score a `recap samples` corpus (truth.json)")
    ap.add_argument("--stress", type=int, default=0, metavar="N", help="also score N random synthetic edits")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --stress edits")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="ingest config override, e.g. shots.cut_structure=0.4")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every transition")
    args = ap.parse_args(argv)
    cfg = load_ingest_config(overrides=args.set)
    ok = True
    if args.shared.is_dir():
        f1, bad = evaluate(f"shared ground truth ({args.shared})", shared_truth(args.shared), cfg.decode, cfg.shots, args.verbose,
                           complete=False)
        ok &= f1 >= 0.95 and bad == 0
    else:
        print(f"skipping shared data: {args.shared} is absent")
    if args.samples:
        f1, bad = evaluate(f"synthetic samples ({args.samples})", samples_truth(args.samples), cfg.decode, cfg.shots, args.verbose)
        ok &= f1 >= 0.95 and bad == 0
    if args.stress:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            items = stress_truth(Path(tmp), args.stress, args.seed)
            f1, bad = evaluate(f"random synthetic edits (seed {args.seed})", items, cfg.decode, cfg.shots, args.verbose)
        ok &= f1 >= 0.95 and bad == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

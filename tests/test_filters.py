"""Filters are views over stored columns: reasons, overrides, dedup, and never a decode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.filters.config import load_filter_config
from pipeline.filters.evaluate import evaluate, run_filters
from pipeline.library import Library
from pipeline.library.schema import SIGNAL_COLUMNS
from pipeline.library.views import VIEW_PATH, read_view

ROOT = Path(__file__).resolve().parents[1]


def synthetic_clips(n: int, seed: int = 0, first: int = 0) -> pa.Table:
    """A clips table with plausible signal values (and a few near-duplicate hashes)."""
    rng = np.random.default_rng(seed)
    ids = [f"clip{first + i:06d}" for i in range(n)]
    video = [f"video{(first + i) // 8:05d}" for i in range(n)]
    start = rng.integers(0, 3000, n)
    length = rng.integers(24, 300, n)
    # a few slideshow-like clips (a generator of their own: the other columns stay as they were)
    fps = np.where(np.random.default_rng(seed + 1000).random(n) < 0.05, 2.0, 30.0)
    hashes = rng.integers(0, 2**63, (n, 3), dtype=np.uint64)
    hashes[1::10] = hashes[0::10][: len(hashes[1::10])] ^ np.uint64(0b101)  # every 10th clip has a near copy
    camera = rng.choice(["static", "pan_left", "pan_right", "tilt_up", "zoom_in", "shaky"], n, p=[.4, .15, .15, .1, .1, .1])
    cols = {
        "clip_id": ids, "video_id": video, "start_frame": start, "end_frame": start + length,
        "start_s": start / fps, "end_s": (start + length) / fps, "duration_s": length / fps, "fps": fps,
        "width": np.full(n, 1920, np.int32), "height": np.full(n, 1080, np.int32),
        "path": [f"media/{i}.mp4" for i in ids],  # never written: filtering must not need them
        "motion_score": rng.lognormal(1.0, 1.2, n).astype(np.float32),
        "camera_motion": camera,
        "camera_dx": rng.normal(0, 5, n).astype(np.float32), "camera_dy": rng.normal(0, 2, n).astype(np.float32),
        "camera_zoom": rng.normal(0, 2, n).astype(np.float32), "camera_shake": rng.gamma(1, 2, n).astype(np.float32),
        "brightness": rng.normal(110, 40, n).clip(0, 255).astype(np.float32),
        "contrast": rng.normal(50, 15, n).clip(0).astype(np.float32),
        "colorfulness": rng.gamma(3, 12, n).astype(np.float32),
        "black_share": (rng.random(n) < 0.05).astype(np.float32),
        "blank_share": (rng.random(n) < 0.05).astype(np.float32),
        "frozen_share": rng.beta(0.3, 3, n).astype(np.float32),
        "bars": rng.choice(["none", "letterbox", "pillarbox"], n, p=[.8, .15, .05]),
        "crop_x": np.zeros(n, np.int32), "crop_y": np.zeros(n, np.int32),
        "crop_w": np.full(n, 1920, np.int32), "crop_h": np.full(n, 1080, np.int32),
        "sharpness": rng.lognormal(4, 1, n).astype(np.float32),
        "text_area": np.where(rng.random(n) < 0.2, rng.random(n) * 0.2, 0).astype(np.float32),
        "ocr_text": np.where(rng.random(n) < 0.2, "SUBSCRIBE", ""),
        "aesthetic_score": pa.array(rng.normal(5, 0.8, n).astype(np.float32), mask=rng.random(n) < 0.1),
        "phash": pa.array([[int(x) for x in row] for row in hashes], pa.list_(pa.uint64())),
    }
    types = {name: t for name, t, _ in SIGNAL_COLUMNS}
    return pa.table({k: pa.array(v, type=types.get(k)) if not isinstance(v, pa.Array) else v
                     for k, v in cols.items()})


def write_library(root: Path, n: int = 400, parts: int = 2, seed: int = 0) -> Path:
    """A library folder as ingest leaves it: library.json, committed clip parts (and no media)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "library.json").write_text(json.dumps({"schema_version": 1, "runs": []}))
    for folder in ("clips", "_commits"):
        (root / folder).mkdir(exist_ok=True)
    per = n // parts
    for k in range(parts):
        batch = f"20260101T00000{k}-fixture{k}"
        pq.write_table(synthetic_clips(per, seed + k, first=k * per), root / "clips" / f"part-{batch}.parquet")
        (root / "_commits" / f"{batch}.json").write_text(json.dumps({"clips": per}))
    return root


def test_reasons_match_thresholds(tmp_path):
    lib = write_library(tmp_path / "lib")
    cfg = load_filter_config()
    view, missing = run_filters(lib, cfg)
    clips = Library(lib).read("clips").to_pandas().set_index("clip_id")
    v = view.to_pandas().set_index("clip_id").loc[clips.index]
    assert not missing and len(v) == 400
    assert (v.passed == (v.reject_reasons.map(len) == 0)).all()
    has = lambda reason: v.reject_reasons.map(lambda r: reason in r)  # noqa: E731
    assert (has("motion.min") == (clips.motion_score < cfg.filters["motion"].min)).all()
    assert (has("camera.reject") == (clips.camera_motion == "shaky")).all()
    assert (has("text.max") == (clips.text_area > cfg.filters["text"].max)).all()
    assert has("frame_rate.min").any() and (has("frame_rate.min") == (clips.fps < cfg.filters["frame_rate"].min)).all()
    # an unmeasured aesthetic score is not a rejection
    assert not has("aesthetic.min")[clips.aesthetic_score.isna()].any()
    assert has("aesthetic.min")[clips.aesthetic_score < 4.5].all()


def test_near_copies_point_at_their_best_member(tmp_path):
    lib = write_library(tmp_path / "lib", n=200, parts=1)
    view = run_filters(lib, load_filter_config())[0].to_pandas()
    dups = view[view.duplicate_of.notna()]
    assert len(dups) == 20  # the 20 planted pairs (clip 10k and 10k+1)
    for _, row in dups.iterrows():
        k = int(row.clip_id[4:])
        assert {k, int(row.duplicate_of[4:])} == {k - k % 10, k - k % 10 + 1}
        assert "duplicate" in row.reject_reasons and not row.passed
    by_id = view.set_index("clip_id")
    for _, row in dups.iterrows():  # keep-best: a member failing a threshold never wins over one passing
        if not by_id.loc[row.duplicate_of].passed:
            assert set(row.reject_reasons) - {"duplicate"}


def test_keep_best_rank_order():
    from pipeline.library.views import keep_best_rank

    clips = pa.table({
        "clip_id": ["a", "b", "c", "d", "e"],
        "aesthetic_score": pa.array([5.0, 6.0, None, 6.0, 6.0], pa.float32()),
        "width": [1920, 1920, 3840, 1280, 1920], "height": [1080, 1080, 2160, 720, 1080],
        "sharpness": [10.0, 10.0, 10.0, 10.0, 20.0], "duration_s": [5.0] * 5,
    })
    passed = np.array([True, False, True, True, True])
    rank = keep_best_rank(clips, passed)
    # passes first; then aesthetic (null last); then pixels; then sharpness
    assert [clips["clip_id"][int(i)].as_py() for i in np.argsort(rank)] == ["e", "d", "a", "c", "b"]


def test_set_override_rewrites_the_view(tmp_path):
    lib = write_library(tmp_path / "lib")
    strict = run_filters(lib, load_filter_config(overrides=["filters.motion.min=5.0"]))[0]
    loose = run_filters(lib, load_filter_config(overrides=["filters.motion.min=0.0", "filters.camera.enabled=false"]))[0]
    n_strict = sum(strict.column("passed").to_pylist())
    n_loose = sum(loose.column("passed").to_pylist())
    assert n_loose > n_strict
    view, used = read_view(lib)
    assert used["filters"]["motion"]["min"] == 0.0 and not used["filters"]["camera"]["enabled"]
    assert sum(view.column("passed").to_pylist()) == n_loose
    assert not list((lib / "views").glob("*.tmp"))


def test_uncommitted_part_is_not_read(tmp_path):
    lib = write_library(tmp_path / "lib", n=100, parts=1)
    pq.write_table(synthetic_clips(10, seed=9, first=5000), lib / "clips" / "part-crashed.parquet")
    assert Library(lib).read("clips", ["clip_id"]).num_rows == 100


def test_missing_signal_columns_skip_their_rules():
    clips = synthetic_clips(50).select(["clip_id", "video_id", "duration_s", "motion_score"])
    view = evaluate(clips, load_filter_config())
    reasons = {r for rs in view.column("reject_reasons").to_pylist() for r in rs}
    assert reasons <= {"duration.min", "motion.min", "motion.max"}


# Run the CLI in a fresh interpreter where importing any decoder fails: if filtering ever
# decoded (or even imported PyAV, decord or OpenCV), this test would fail.
NO_DECODE = """
import sys
for name in ("av", "decord", "cv2"):
    sys.modules[name] = None  # import of a blocked module raises ImportError
import argparse
from pipeline.cli import filter as filter_cli
p = argparse.ArgumentParser()
filter_cli.add_arguments(p)
sys.exit(filter_cli.run(p.parse_args(sys.argv[1:])))
"""


def test_filter_cli_never_decodes(tmp_path):
    lib = write_library(tmp_path / "lib", n=2000, parts=4)
    proc = subprocess.run([sys.executable, "-c", NO_DECODE, str(lib), "--set", "filters.motion.min=2.5"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "of 2000 clips pass" in proc.stdout and "motion.min" in proc.stdout
    assert (lib / VIEW_PATH).exists()


def test_bad_override_is_reported(tmp_path):
    lib = write_library(tmp_path / "lib", n=20, parts=1)
    proc = subprocess.run([sys.executable, "-c", NO_DECODE, str(lib), "--set", "filters.motion.mni=1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "mni" in proc.stderr


def test_a_slideshow_is_rejected_for_its_frame_rate(tmp_path):
    """A video at 2 frames per second (its picture moving from frame to frame, so no other rule
    rejects it) fails `frame_rate.min`; the same frames at 25 fps do not."""
    from pipeline.ingest.config import load_ingest_config
    from pipeline.ingest.job import run_ingest
    from tests.avfiles import write_video

    reasons = {}
    for fps in (2, 25):
        video = write_video(tmp_path / f"v{fps}.mp4", n_frames=5 * fps, fps=fps, gop=fps)
        lib = tmp_path / f"lib{fps}"
        run_ingest([str(video)], lib, load_ingest_config(), progress=False)
        (view, _) = read_view(lib)
        reasons[fps] = [r for rs in view.column("reject_reasons").to_pylist() for r in rs]
        assert view.num_rows >= 1
    assert "frame_rate.min" in reasons[2]
    assert "frame_rate.min" not in reasons[25]

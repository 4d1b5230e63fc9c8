"""The synthetic sample corpus: deterministic, decodes as declared, and its truth is exact."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.cli import main as recap
from pipeline.samples.corpus import (
    CORPUS,
    TRUTH_FILE,
    corpus_truth,
    load_truth,
    write_benchmark_video,
    write_sample_video,
)
from pipeline.samples.synth import Cut, Dissolve, FadeThroughBlack, Shot, plan_frames

SEED = 0
NAMES = [spec.name for spec in CORPUS]


@dataclass
class Decoded:
    codec: str
    format_name: str
    width: int
    height: int
    pix_fmt: str
    rate: Fraction
    pts_s: list[float]
    frame_md5: list[str]
    luma: np.ndarray    # (frames,) mean luma
    small: np.ndarray   # (frames, h, 128, 3) uint8 RGB, downscaled like a shot detector's input

    def distance(self, a: int, b: int) -> float:
        """PySceneDetect's content score between two frames: mean |dH|, |dS|, |dV|."""
        ha, hb = (cv2.cvtColor(self.small[i], cv2.COLOR_RGB2HSV).astype(np.int16) for i in (a, b))
        return float(np.abs(ha - hb).mean())

    def rgb_distance(self, a: int, b: int) -> float:
        return float(np.abs(self.small[a].astype(np.int16) - self.small[b]).mean())

    @cached_property
    def change(self) -> np.ndarray:
        """Content score of each frame against the previous one (0 for the first)."""
        return np.array([0.0] + [self.distance(i - 1, i) for i in range(1, len(self.small))])


def decode(path: Path) -> Decoded:
    md5s, luma, small, pts = [], [], [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            md5s.append(hashlib.md5(rgb.tobytes()).hexdigest())
            luma.append(float(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).mean()))
            small.append(cv2.resize(rgb, (128, round(128 * rgb.shape[0] / rgb.shape[1])), interpolation=cv2.INTER_AREA))
            pts.append(float(frame.time))
        return Decoded(stream.codec_context.name, container.format.name, stream.codec_context.width,
                       stream.codec_context.height, stream.codec_context.pix_fmt, Fraction(stream.average_rate),
                       pts, md5s, np.array(luma), np.stack(small))


@pytest.fixture(scope="module")
def corpus(sample_corpus) -> Path:
    """conftest writes the corpus once per session, with seed 0."""
    return sample_corpus


@pytest.fixture(scope="module")
def truth(corpus) -> dict:
    return load_truth(corpus)


@pytest.fixture(scope="module")
def decoded(corpus) -> dict[str, Decoded]:
    return {name: decode(corpus / name) for name in NAMES}


# --- determinism --------------------------------------------------------------------------------

def test_truth_depends_only_on_the_seed(truth):
    assert truth == corpus_truth(SEED) == json.loads(json.dumps(corpus_truth(SEED)))
    other = corpus_truth(SEED + 1)
    assert other != truth
    assert [v["frames"] for v in other["videos"].values()] != [v["frames"] for v in truth["videos"].values()]


def test_cli_writes_the_same_frames_for_the_same_seed(corpus, decoded, tmp_path, capsys):
    out = tmp_path / "again"
    assert recap(["samples", str(out), "--seed", str(SEED)]) == 0
    printed = capsys.readouterr().out
    assert all(str(out / name) in printed for name in NAMES) and str(out / TRUTH_FILE) in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES + [TRUTH_FILE])   # no partial files left
    assert load_truth(out) == load_truth(corpus)
    for name in NAMES:   # x264's AVX-512 code made portrait.mp4 irreproducible before asm=0
        assert decode(out / name).frame_md5 == decoded[name].frame_md5, name


def test_another_seed_gives_other_frames(decoded, tmp_path):
    write_sample_video(tmp_path, "single_shot.webm", SEED + 1)
    assert decode(tmp_path / "single_shot.webm").frame_md5[0] != decoded["single_shot.webm"].frame_md5[0]


# --- the files are what truth.json declares ------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_file_decodes_as_declared(name, truth, decoded):
    want, got = truth["videos"][name], decoded[name]
    assert got.codec == want["codec"]
    assert want["container"] in got.format_name.split(",")
    assert (got.width, got.height, got.pix_fmt) == (want["width"], want["height"], want["pix_fmt"])
    assert got.rate == Fraction(want["fps"])
    assert abs(float(Fraction(want["fps"])) - want["fps_float"]) < 1e-9
    assert len(got.frame_md5) == want["frames"]
    assert all(b > a for a, b in zip(got.pts_s, got.pts_s[1:])), "PTS must increase in decode order"
    assert got.pts_s[0] == pytest.approx(0, abs=1e-3)
    assert got.pts_s[-1] == pytest.approx((want["frames"] - 1) / want["fps_float"], abs=2e-3)


def test_ffprobe_agrees(corpus, truth):
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe CLI not installed (apt-get install ffmpeg): the independent oracle is unavailable")
    for name, want in truth["videos"].items():
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
             "stream=codec_name,width,height,pix_fmt,avg_frame_rate,nb_read_frames", "-of", "json",
             str(corpus / name)], check=True, capture_output=True, text=True).stdout
        stream = json.loads(out)["streams"][0]
        assert stream["codec_name"] == want["codec"], name
        assert int(stream["nb_read_frames"]) == want["frames"], name
        assert (stream["width"], stream["height"], stream["pix_fmt"]) == (want["width"], want["height"], "yuv420p")
        assert Fraction(stream["avg_frame_rate"]) == Fraction(want["fps"]), name


# --- truth.json is self-consistent and covers what the detectors must handle ---------------------

def test_truth_tiles_each_video(truth):
    for name, v in truth["videos"].items():
        assert 3.0 <= v["duration_s"] <= 8.0, name
        starts = [(t["start_frame"], t["end_frame"]) for t in v["transitions"]]
        assert starts == sorted(starts), name
        for t in v["transitions"]:
            assert t["kind"] in {"cut", "fade_out", "black", "fade_in", "dissolve"}
            assert 0 <= t["start_frame"] <= t["end_frame"] <= v["frames"]
            assert (t["start_frame"] == t["end_frame"]) == (t["kind"] == "cut"), t
        # shots and frame-taking transitions cover [0, frames) exactly once
        pieces = sorted([(s["start_frame"], s["end_frame"]) for s in v["shots"]]
                        + [(t["start_frame"], t["end_frame"]) for t in v["transitions"] if t["kind"] != "cut"])
        assert pieces[0][0] == 0 and pieces[-1][1] == v["frames"], name
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:])), name
        # every cut sits between two shots
        shot_edges = {s["start_frame"] for s in v["shots"]} & {s["end_frame"] for s in v["shots"]}
        assert {t["start_frame"] for t in v["transitions"] if t["kind"] == "cut"} <= shot_edges, name
        for f in v["flashes"]:
            assert any(s["start_frame"] + 5 <= f["start_frame"] < f["end_frame"] <= s["end_frame"] - 5
                       for s in v["shots"]), (name, f)


def test_corpus_covers_every_case(truth):
    videos = truth["videos"].values()
    assert {t["kind"] for v in videos for t in v["transitions"]} == {"cut", "fade_out", "black", "fade_in", "dissolve"}
    assert {s["motion"] for v in videos for s in v["shots"]} == {"static", "objects", "fast", "pan"}
    assert {f["end_frame"] - f["start_frame"] for v in videos for f in v["flashes"]} == {1, 2}
    assert {v["codec"] for v in videos} == {"h264", "vp9", "mpeg4"}
    assert {v["container"] for v in videos} == {"mp4", "webm", "matroska"}
    assert {"30000/1001", "24/1", "25/1", "30/1"} <= {v["fps"] for v in videos}
    assert any(v["height"] > v["width"] for v in videos)
    assert any(not v["transitions"] for v in videos)
    assert any(v["transitions"][0]["kind"] == "black" and v["transitions"][0]["start_frame"] == 0 for v in videos)
    dissolves = [t["end_frame"] - t["start_frame"] for v in videos for t in v["transitions"] if t["kind"] == "dissolve"]
    assert all(8 <= n <= 20 for n in dissolves)


# --- the pixels show what the truth says ---------------------------------------------------------

def test_cuts_are_large_changes_and_shots_are_calm(truth, decoded):
    cut_scores, shot_scores = [], {}
    for name, v in truth["videos"].items():
        change = decoded[name].change
        cut_scores += [change[t["start_frame"]] for t in v["transitions"] if t["kind"] == "cut"]
        flashed = {i for f in v["flashes"] for i in range(f["start_frame"], f["end_frame"] + 1)}
        for s in v["shots"]:
            inside = [change[i] for i in range(s["start_frame"] + 1, s["end_frame"]) if i not in flashed]
            shot_scores.setdefault(s["motion"], []).append(max(inside))
    # PySceneDetect's ContentDetector cuts at 27 by default
    assert min(cut_scores) > 35, cut_scores
    assert max(max(s) for s in shot_scores.values()) < 25, shot_scores
    assert max(shot_scores["static"]) < 3 and max(shot_scores["fast"]) > 2 * max(shot_scores["objects"])


def test_fades_blacks_dissolves_and_flashes_look_right(truth, decoded):
    for name, v in truth["videos"].items():
        video = decoded[name]
        luma = video.luma
        for t in v["transitions"]:
            a, b = t["start_frame"], t["end_frame"]
            if t["kind"] == "black":
                assert luma[a:b].max() < 3, (name, t)
            elif t["kind"] in ("fade_out", "fade_in"):
                ramp = luma[max(a - 1, 0):b + 1]   # from the clean frame before to the one after
                steps = np.diff(ramp) * (1 if t["kind"] == "fade_in" else -1)
                assert (steps > 0).all(), (name, t, ramp)
            elif t["kind"] == "dissolve":
                # a big change from the shot before to the shot after, made in small linear steps
                # (in RGB: the hue of a blend jumps near its middle, so HSV steps are uneven)
                assert video.distance(a - 1, b) > 35, (name, t)
                whole = video.rgb_distance(a - 1, b)
                steps = [video.rgb_distance(i - 1, i) for i in range(a, b + 1)]
                assert max(steps) < 3 * whole / (b - a + 1), (name, t, whole, steps)
        for f in v["flashes"]:
            a, b = f["start_frame"], f["end_frame"]
            assert luma[a:b].min() > luma[a - 1] + 60 and luma[a:b].min() > luma[b] + 60, (name, f)


# --- the building blocks other tests reuse -------------------------------------------------------

def test_plan_frames_counts_every_frame():
    edits = [FadeThroughBlack(0, 2, 3), Shot(10, "pan", flash_at=4, flash_frames=2), Dissolve(5),
             Shot(8, "static"), Cut(), Shot(6), FadeThroughBlack(4, 1, 0)]
    recipes, t = plan_frames(edits)
    assert t["frames"] == len(recipes) == 2 + 3 + 10 + 5 + 8 + 6 + 4 + 1
    assert [(x["kind"], x["start_frame"], x["end_frame"]) for x in t["transitions"]] == [
        ("black", 0, 2), ("fade_in", 2, 5), ("dissolve", 15, 20), ("cut", 28, 28), ("fade_out", 34, 38),
        ("black", 38, 39)]
    assert [(s["start_frame"], s["end_frame"]) for s in t["shots"]] == [(5, 15), (20, 28), (28, 34)]
    assert t["flashes"] == [{"start_frame": 9, "end_frame": 11}]
    # the incoming shot's clock starts with the dissolve, and both shots move during it
    assert [(layer.shot, layer.t) for layer in recipes[15].layers] == [(0, 13), (1, 0)]
    assert recipes[20].layers[0].t == 5


@pytest.mark.parametrize("edits", [
    [Shot(5), Shot(5)],                          # no transition between shots
    [Cut(), Shot(5)],                            # a cut needs a shot on each side
    [Shot(5), Dissolve(4)],
    [FadeThroughBlack(3, 2, 3), Shot(5)],        # nothing to fade out of
    [Shot(5), FadeThroughBlack(0, 0, 0), Shot(5)],
    [Shot(5, flash_at=4, flash_frames=2)],       # flash runs past the shot
    [Shot(5, "spinning")],
    [],
])
def test_plan_frames_rejects_broken_edit_lists(edits):
    with pytest.raises(ValueError):
        plan_frames(edits)


def test_benchmark_video_has_cuts_and_short_gops(tmp_path):
    path = tmp_path / "bench.mp4"
    info = write_benchmark_video(path, 6, width=320, height=180, fps=30, seed=1)
    assert info["frames"] == 180 and info["cuts"] and info["cuts"] == [s["start_frame"] for s in info["shots"][1:]]
    video = decode(path)
    assert video.codec == "h264" and len(video.frame_md5) == 180 and video.rate == 30
    assert min(video.change[c] for c in info["cuts"]) > 35
    with av.open(str(path)) as container:
        keyframes = [i for i, p in enumerate(p for p in container.demux(video=0) if p.size) if p.is_keyframe]
    assert max(np.diff(keyframes + [180])) <= 60   # a GOP of at most 2 s

"""Frame sampling: which frames, frame-exact reads with decord in every clip mode, the pixel budget."""

from __future__ import annotations

import pytest

from captioner.config import CaptionConfig, FramesConfig
from captioner.frames import clip_source, fit_to_budget, read_frames, sample_indices
from captioner.prompts import load_prompt
from tests.captioner_lib import make_library, nearest_index


def test_uniform_sampling_takes_segment_middles():
    assert sample_indices(30, 25.0, num_frames=3) == [5, 15, 25]
    assert sample_indices(5, 25.0, num_frames=8) == [0, 1, 2, 3, 4]      # never the same frame twice
    assert sample_indices(0, 25.0) == []


def test_rate_sampling_follows_duration_and_is_capped():
    idx = sample_indices(100, 25.0, target_fps=2.0)                       # 4 s at 2 fps
    assert len(idx) == 8 and idx == sorted(set(idx)) and idx[-1] < 100
    assert len(sample_indices(2500, 25.0, target_fps=2.0, max_frames=32)) == 32
    assert len(sample_indices(10, 25.0, target_fps=1.0)) == 1            # shorter than a second: one frame


def test_pixel_budget_keeps_aspect_and_patch_multiples():
    w, h = fit_to_budget(1920, 1080, 448 * 448)
    assert w * h <= 448 * 448 and w % 28 == 0 and h % 28 == 0
    assert abs(w / h - 16 / 9) < 0.1
    assert fit_to_budget(160, 96, 448 * 448) == (140, 84)                 # never upscaled
    assert fit_to_budget(1080, 1920, 200_000)[1] > fit_to_budget(1080, 1920, 200_000)[0]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return make_library(tmp_path_factory.mktemp("caplib"))


def test_reads_are_frame_exact_in_every_clip_mode(library):
    """encode (own file), remux (file starts 5 frames early at a keyframe), reference (source video)."""
    lib, clips = library
    from pipeline.caption.job import select_clips

    rows = {r["clip_mode"]: r for r in select_clips(lib)}
    assert set(rows) == {"encode", "remux", "reference"}
    for mode, row in rows.items():
        source = clip_source(row, lib, row["source"])
        indices = sample_indices(source.end - source.start, source.fps, num_frames=6)
        frames = read_frames(source, indices, max_pixels=448 * 448)
        assert frames.shape[0] == 6 and frames.dtype.name == "uint8"
        seen = [nearest_index(f, range(100)) for f in frames]
        assert seen == [row["start_frame"] + i for i in indices], mode


def test_budget_downscales_frames(library):
    lib, _ = library
    from pipeline.caption.job import select_clips

    row = select_clips(lib)[0]
    frames = read_frames(clip_source(row, lib, row["source"]), [0, 1], max_pixels=56 * 56)
    assert frames.shape[1] * frames.shape[2] <= 56 * 56 and frames.shape[1:3] == (28, 56)


def test_prepare_clip_combines_frames_and_hints(library):
    lib, _ = library
    from captioner.captioner import prepare_clip
    from pipeline.caption.job import select_clips

    cfg = CaptionConfig(frames=FramesConfig(num_frames=4))
    rows = select_clips(lib)
    prompt = load_prompt("dense")
    first = prepare_clip(rows[0], lib, rows[0]["source"], cfg, prompt)
    assert first.frames.shape[0] == 4 and first.clip_frames == 30 and first.fps == pytest.approx(25 * 3 / 22, rel=0.1)
    assert "pans left" in first.prompt and "OPEN DAILY" in first.prompt
    unmeasured = prepare_clip(rows[2], lib, rows[2]["source"], cfg, prompt)
    assert "Measured facts" not in unmeasured.prompt


def test_missing_clip_file_is_an_error(library, tmp_path):
    lib, _ = library
    from pipeline.caption.job import select_clips
    from pipeline.caption.stages import FramePrepStage

    row = dict(select_clips(lib)[0], path="media/gone.mp4")
    stage = FramePrepStage(CaptionConfig(), str(lib))
    stage.setup()
    out = stage.process([row])
    assert out[0]["request"] is None and out[0]["error"].startswith("frames: ")
    with pytest.raises(FileNotFoundError):
        clip_source(dict(row, path=None), lib, None)

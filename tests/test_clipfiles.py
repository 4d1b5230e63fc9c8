"""Clip files: what each file holds must be exactly what its result says (ffprobe as the oracle)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.ingest.clipfiles import ClipFileError, ClipRange, write_clips
from pipeline.ingest.config import ClipsConfig
from tests.avfiles import (
    decode_rgb,
    decode_some,
    ffprobe_frame_count,
    ffprobe_rotation,
    ffprobe_streams,
    frame_times,
    psnr,
    write_video,
)

REMUX = ClipsConfig(mode="remux")
ENCODE = ClipsConfig(mode="encode", encode_crf=18)


@pytest.fixture(scope="module")
def bframes_mp4(tmp_path_factory) -> Path:
    """H.264 + AAC, GOP 25, 3 B-frames: clips start mid-GOP and end inside B-frame runs."""
    return write_video(tmp_path_factory.mktemp("src") / "src.mp4", n_frames=200, gop=25, bframes=3, audio=True)


@pytest.fixture(scope="module")
def vp9_webm(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("src") / "src.webm", n_frames=80, codec="libvpx-vp9", gop=30,
                       audio=True)


def _check_remux(src: Path, ranges: list[tuple[int, int]], out: Path):
    """Write the clips, then check each file against ffprobe and against the source frames."""
    probes = {(a, b): (a, (a + b) // 2, b - 1) for a, b in ranges}   # first, middle, last frame
    # frame times up to the last clip's end are all write_clips needs
    times, source = decode_some(src, {i for ks in probes.values() for i in ks}, upto=max(b for _, b in ranges) + 1)
    results = write_clips(src, [(a, b, out / f"clip_{a}_{b}") for a, b in ranges], times, REMUX)
    for (a, b), r in zip(ranges, results):
        assert Path(r.path).stat().st_size == r.bytes > 0
        assert ffprobe_frame_count(r.path) == r.n_frames
        trailing = r.n_frames - r.file_start_frame - (b - a)
        if r.path.endswith(".mp4"):                 # the edit list hides pre-roll and trailing frames
            assert (r.file_start_frame, trailing) == (0, 0), (a, b, r)
        else:                                       # reference frames kept for the last B-frames
            assert 0 <= trailing <= 3, (a, b, r)
        clip_times, clip = decode_some(r.path, {r.file_start_frame + k - a for k in probes[a, b]})
        assert len(clip_times) == r.n_frames
        for k in probes[a, b]:                      # a stream copy decodes to the source's pixels
            assert np.array_equal(clip[r.file_start_frame + k - a], source[k]), (a, b, k)
    return results


def test_remux_mp4_is_exact_through_the_edit_list(bframes_mp4: Path, tmp_path: Path):
    ranges = [(37, 80), (10, 30), (100, 101), (0, 200), (190, 200), (80, 150), (26, 49), (30, 62),
              (31, 33)]
    results = _check_remux(bframes_mp4, ranges, tmp_path)
    assert all(r.path.endswith(".mp4") and r.n_frames == b - a for r, (a, b) in zip(results, ranges))
    assert all((r.width, r.height) == (160, 96) for r in results)
    # without the edit list the pre-roll from the keyframe shows: 37 -> keyframe 25
    assert ffprobe_frame_count(results[0].path, ignore_editlist=True) >= 12 + 43
    # some of these end inside a B-frame run: a reference frame is in the file, hidden
    assert any(ffprobe_frame_count(r.path, ignore_editlist=True) > r.n_frames + (a - a // 25 * 25)
               for r, (a, b) in zip(results, ranges))


def test_remux_keeps_audio_for_the_same_span(bframes_mp4: Path, tmp_path: Path):
    (r,) = write_clips(bframes_mp4, [(50, 100, tmp_path / "c")], frame_times(bframes_mp4), REMUX)
    video, audio, _ = ffprobe_streams(r.path)
    assert audio is not None and audio["codec_name"] == "aac"
    assert float(audio["duration"]) == pytest.approx(50 / 25, abs=0.05)
    assert float(audio.get("start_time", 0)) == pytest.approx(0, abs=0.03)


def test_remux_webm_shows_the_preroll_and_says_so(vp9_webm: Path, tmp_path: Path):
    results = _check_remux(vp9_webm, [(40, 70), (5, 20), (0, 80)], tmp_path)
    assert all(r.path.endswith(".webm") for r in results)
    assert [r.file_start_frame for r in results] == [10, 5, 0]   # keyframes at 0, 30, 60
    _, audio, _ = ffprobe_streams(results[0].path)
    assert audio["codec_name"] == "opus"


def test_remux_av1_and_hevc(tmp_path: Path):
    """Codecs without an encoder here (AV1 decodes with libdav1d) are copied all the same."""
    for codec in ("libsvtav1", "libx265"):
        src = write_video(tmp_path / f"{codec}.mp4", n_frames=60, codec=codec, gop=20)
        times, source = decode_some(src, {33})
        (r,) = write_clips(src, [(33, 50, tmp_path / f"{codec}_clip")], times, REMUX)
        clip_times, clip = decode_some(r.path, {r.file_start_frame})
        # PyAV's FFmpeg is the reference here: FFmpeg 5's libdav1d wrapper ignores the edit list
        assert len(clip_times) == r.n_frames == 17 and r.file_start_frame == 0, codec
        assert np.array_equal(clip[0], source[33]), codec


def test_remux_without_frame_times_scans_packets(bframes_mp4: Path, tmp_path: Path):
    with_times = write_clips(bframes_mp4, [(37, 80, tmp_path / "a")], frame_times(bframes_mp4), REMUX)
    scanned = write_clips(bframes_mp4, [ClipRange(37, 80, tmp_path / "b")], None, REMUX)
    assert [dataclasses.replace(r, path="") for r in with_times] == \
           [dataclasses.replace(r, path="", bytes=with_times[0].bytes) for r in scanned]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_far_apart_clips_are_reached_by_seeking(tmp_path: Path, suffix: str):
    """MP4 and Matroska seek between far-apart clips; MPEG-TS (no index) is read straight through."""
    src = write_video(tmp_path / f"long{suffix}", n_frames=1000, size=(64, 48), gop=50, bframes=2, audio=True)
    ranges = [(20, 60), (900, 960), (430, 470), (60, 90)]
    results = _check_remux(src, ranges, tmp_path / "out")
    assert [Path(r.path).name for r in results] == [f"clip_{a}_{b}.mp4" for a, b in ranges]


def test_files_appear_only_when_complete(bframes_mp4: Path, tmp_path: Path):
    blocker = tmp_path / "b.mp4"
    blocker.mkdir()                 # the second clip's final name is taken: its rename fails
    (blocker / "keep").touch()
    with pytest.raises(OSError):
        write_clips(bframes_mp4, [(0, 20, tmp_path / "a"), (150, 170, tmp_path / "b")],
                    frame_times(bframes_mp4), REMUX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]   # no temp file left
    assert ffprobe_frame_count(tmp_path / "a.mp4") == 20       # the complete first clip


def test_bad_ranges_are_refused_before_writing(bframes_mp4: Path, tmp_path: Path):
    for a, b in [(10, 10), (-1, 5), (190, 201)]:
        with pytest.raises(ClipFileError, match=r"frame range"):
            write_clips(bframes_mp4, [(a, b, tmp_path / "c")], frame_times(bframes_mp4), REMUX)
    assert list(tmp_path.iterdir()) == []


# --- encode ------------------------------------------------------------------------------------


def test_encode_is_frame_exact(bframes_mp4: Path, tmp_path: Path):
    ranges = [(37, 80), (100, 101), (190, 200)]
    results = write_clips(bframes_mp4, [(a, b, tmp_path / f"e{a}") for a, b in ranges],
                          frame_times(bframes_mp4), ENCODE)
    source = decode_rgb(bframes_mp4)
    for (a, b), r in zip(ranges, results):
        assert (r.n_frames, r.file_start_frame) == (b - a, 0)
        assert ffprobe_frame_count(r.path) == b - a
        video, audio, _ = ffprobe_streams(r.path)
        assert (video["codec_name"], video["pix_fmt"], audio) == ("h264", "yuv420p", None)
        frames = decode_rgb(r.path)
        assert psnr(frames[0], source[a]) > 30 and psnr(frames[-1], source[b - 1]) > 30
        assert psnr(frames[0], source[a + 1 if a + 1 < b else a - 1]) < psnr(frames[0], source[a])


def test_encode_resizes_and_resamples(bframes_mp4: Path, tmp_path: Path):
    cfg = dataclasses.replace(ENCODE, encode_width=83, encode_fps=12.5)    # half the source rate
    (r,) = write_clips(bframes_mp4, [(40, 100, tmp_path / "small")], frame_times(bframes_mp4), cfg)
    assert (r.width, r.height) == (84, 50)                                  # even, 160x96 aspect kept
    assert r.n_frames == ffprobe_frame_count(r.path) == 30
    video, _, _ = ffprobe_streams(r.path)
    assert (video["width"], video["height"], video["avg_frame_rate"]) == (84, 50, "25/2")
    source, frames = decode_rgb(bframes_mp4), decode_rgb(r.path)
    for k in (0, 7, 29):                                                    # output k shows source 40 + 2k
        small = av.VideoFrame.from_ndarray(source[40 + 2 * k], format="rgb24").reformat(84, 50).to_ndarray(format="rgb24")
        assert psnr(frames[k], small) > 30, k


def test_encode_width_never_enlarges_a_smaller_source(bframes_mp4: Path, tmp_path: Path):
    """encode_width=640 on a 160x96 source wrote 640x384 clip files: four times the pixels of
    nothing, and an export then bucketed them as if the source had them."""
    (r,) = write_clips(bframes_mp4, [(0, 20, tmp_path / "big")], frame_times(bframes_mp4),
                       dataclasses.replace(ENCODE, encode_width=640))
    assert (r.width, r.height) == (160, 96) == (ffprobe_streams(r.path)[0]["width"], ffprobe_streams(r.path)[0]["height"])


# --- real files ------------------------------------------------------------------------------


def test_real_files_remux(shared_shots: Path, tmp_path: Path):
    cases = {
        "pyscenedetect/issue-134-rotate.mp4": [(5, 90), (92, 210)],
        "pyscenedetect/issue-195-aspect-ratio.mp4": [(72, 170), (303, 421)],
        "pyscenedetect/goldeneye-vfr-drop3.mp4": [(5, 60), (62, 140)],
        "moviepy/big_buck_bunny_0_30.webm": [(290, 376), (600, 720)],
        "pyscenedetect/delayed_start.mp4": [(3, 20)],
        "pyscenedetect/issue-236-split-copy.mkv": [(21, 30)],
    }
    for name, ranges in cases.items():
        src = shared_shots / name
        results = _check_remux(src, ranges, tmp_path / Path(name).stem)
        src_video, _, _ = ffprobe_streams(src)
        for r in results:
            clip_video, _, _ = ffprobe_streams(r.path)
            assert ffprobe_rotation(clip_video) == ffprobe_rotation(src_video), name
            assert clip_video.get("sample_aspect_ratio") == src_video.get("sample_aspect_ratio"), name
    assert results[0].path.endswith(".mp4")          # H.264 from Matroska goes into MP4


def test_real_vfr_encode_keeps_timing(shared_shots: Path, tmp_path: Path):
    src = shared_shots / "pyscenedetect/goldeneye-vfr-drop3.mp4"
    times = frame_times(src)
    (r,) = write_clips(src, [(5, 60, tmp_path / "vfr")], times, dataclasses.replace(ENCODE, encode_width=320))
    assert r.n_frames == ffprobe_frame_count(r.path) == 55
    out_times = frame_times(r.path)
    assert np.allclose(np.diff(out_times), np.diff(times[5:60]), atol=2e-3)


def test_real_encode_keeps_rotation_and_pixel_aspect(shared_shots: Path, tmp_path: Path):
    for name in ("pyscenedetect/issue-134-rotate.mp4", "pyscenedetect/issue-195-aspect-ratio.mp4"):
        src = shared_shots / name
        times, source = decode_some(src, {72}, upto=90)
        (r,) = write_clips(src, [(72, 82, tmp_path / Path(name).stem)], times, ENCODE)
        src_video, _, _ = ffprobe_streams(src)
        clip_video, _, _ = ffprobe_streams(r.path)
        assert ffprobe_frame_count(r.path) == r.n_frames == 10
        assert ffprobe_rotation(clip_video) == ffprobe_rotation(src_video), name
        assert clip_video.get("sample_aspect_ratio", "1:1") == src_video.get("sample_aspect_ratio", "1:1"), name
        assert psnr(decode_some(r.path, {0})[1][0], source[72]) > 30, name

"""probe(): facts about good files (checked against ffprobe) and a clear kind for each bad file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.ingest.probe import ProbeError, probe
from tests.avfiles import (
    ffprobe_frame_count,
    ffprobe_rotation,
    ffprobe_streams,
    write_audio_only,
    write_video,
    write_with_cover_art,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def h264_aac(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("probe") / "ok.mp4", n_frames=50, audio=True)


def test_good_file_matches_ffprobe(h264_aac: Path):
    info = probe(h264_aac)
    video, audio, fmt = ffprobe_streams(h264_aac)
    assert info.container == fmt["format_name"]
    assert info.video_codec == video["codec_name"] == "h264"
    assert info.audio_codec == audio["codec_name"] == "aac" and info.has_audio
    assert (info.width, info.height) == (video["width"], video["height"]) == (160, 96)
    assert (info.display_width, info.display_height) == (160, 96)
    assert info.n_frames == int(video["nb_frames"]) == 50
    assert info.avg_fps == pytest.approx(25.0) and info.nominal_fps == pytest.approx(25.0)
    assert not info.is_vfr
    assert info.duration_s == pytest.approx(float(video["duration"]), abs=1e-3)
    assert info.start_time_s == pytest.approx(float(video["start_time"]), abs=1e-3)
    assert info.pix_fmt == video["pix_fmt"] == "yuv420p"
    assert info.rotation == 0 and info.sample_aspect_ratio == 1.0
    assert info.size_bytes == h264_aac.stat().st_size
    assert info.bit_rate == pytest.approx(int(fmt["bit_rate"]), rel=0.02)


def test_vp9_webm_without_audio(tmp_path: Path):
    path = write_video(tmp_path / "v.webm", n_frames=20, codec="libvpx-vp9")
    info = probe(path)
    assert (info.container, info.video_codec, info.audio_codec, info.has_audio) == \
        ("matroska,webm", "vp9", None, False)
    assert info.n_frames is None          # WebM does not state a frame count
    assert info.avg_fps == pytest.approx(25.0)


def test_cover_art_is_not_the_video(tmp_path: Path):
    info = probe(write_with_cover_art(tmp_path / "cover.mp4", n_frames=30))
    assert (info.video_codec, info.width, info.height, info.n_frames) == ("h264", 160, 96, 30)


# --- bad input: one kind each ------------------------------------------------------------------


def _kind(path: Path) -> tuple[str, str]:
    with pytest.raises(ProbeError) as err:
        probe(path)
    assert str(path) in err.value.message
    return err.value.kind, err.value.message


def test_empty_file(tmp_path: Path):
    (tmp_path / "empty.mp4").touch()
    kind, message = _kind(tmp_path / "empty.mp4")
    assert kind == "empty_file" and "0 bytes" in message


def test_not_found(tmp_path: Path):
    kind, message = _kind(tmp_path / "missing.mp4")
    assert kind == "not_found" and "no such file" in message


@pytest.mark.parametrize("faststart", [False, True], ids=["index-at-end", "index-at-front"])
def test_truncated_mp4(tmp_path: Path, faststart: bool):
    whole = write_video(tmp_path / "whole.mp4", n_frames=100, faststart=faststart).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: int(len(whole) * 0.3)])
    kind, message = _kind(cut)
    assert kind == "truncated" and "truncated" in message


def test_truncated_webm_decodes_what_is_there(tmp_path: Path):
    """Matroska has no index up front: a cut WebM still probes (the decode pass ends early)."""
    whole = write_video(tmp_path / "whole.webm", n_frames=60, codec="libvpx-vp9").read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(whole[: int(len(whole) * 0.5)])
    assert probe(cut).video_codec == "vp9"
    cut.write_bytes(whole[:200])          # header only: nothing to decode
    assert _kind(cut)[0] == "truncated"


def test_random_bytes_are_not_a_video(tmp_path: Path):
    path = tmp_path / "random.mp4"
    for _ in range(5):                    # FFmpeg guesses a format for some random files; still no video
        path.write_bytes(os.urandom(64_000))
        kind, message = _kind(path)
        assert kind == "not_a_video", message


@pytest.mark.parametrize("name,codec", [("speech.m4a", "aac"), ("song.mp3", "libmp3lame"),
                                        ("take.wav", "pcm_s16le")])
def test_audio_only(tmp_path: Path, name: str, codec: str):
    kind, message = _kind(write_audio_only(tmp_path / name, codec))
    assert kind == "no_video_stream" and "audio only" in message


def test_unsupported_codec(tmp_path: Path):
    """A Matroska track whose codec id no FFmpeg decoder knows (the id is patched in place)."""
    data = write_video(tmp_path / "ok.mkv", n_frames=10).read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    path = tmp_path / "alien.mkv"
    path.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_NOSUCH/CODEC!"))
    kind, message = _kind(path)
    assert kind == "unsupported_codec" and "not supported" in message


def test_permission_denied(tmp_path: Path):
    if os.geteuid() != 0:
        path = write_video(tmp_path / "locked.mp4", n_frames=5)
        path.chmod(0)
        try:
            assert _kind(path)[0] == "permission_denied"
        finally:
            path.chmod(0o644)
        return
    # root reads a chmod-000 file anyway: probe it from a child that drops to user 'nobody'
    # (after its imports, so it needs no access to the interpreter or the venv)
    folder = Path(tempfile.mkdtemp(prefix="recap-perm-"))   # reachable by 'nobody', unlike tmp_path
    folder.chmod(0o755)
    path = write_video(folder / "locked.mp4", n_frames=5)
    path.chmod(0)
    code = ("import os, sys; from pipeline.ingest.probe import probe, ProbeError\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try: probe(sys.argv[1])\n"
            "except ProbeError as e: print(e.kind); print(e.message)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
    finally:
        shutil.rmtree(folder)
    assert proc.stdout.splitlines()[:2] == ["permission_denied", f"{path}: permission denied (cannot read the file)"], \
        proc.stdout + proc.stderr


# --- real files (../shared/data/shots), ffprobe as the oracle -----------------------------------


REAL = ["pyscenedetect/issue-134-rotate.mp4", "pyscenedetect/issue-195-aspect-ratio.mp4",
        "pyscenedetect/goldeneye-vfr-drop3.mp4", "moviepy/big_buck_bunny_0_30.webm",
        "pyscenedetect/delayed_start.mp4", "pyscenedetect/testvideo.mp4",
        "pyscenedetect/issue-236-split-copy.mkv"]


@pytest.mark.parametrize("name", REAL)
def test_real_files_match_ffprobe(shared_shots: Path, name: str):
    path = shared_shots / name
    info = probe(path)
    video, audio, fmt = ffprobe_streams(path)
    assert info.container == fmt["format_name"]
    assert info.video_codec == video["codec_name"]
    assert info.audio_codec == (audio["codec_name"] if audio else None)
    assert (info.width, info.height) == (video["width"], video["height"])
    assert info.pix_fmt == video["pix_fmt"]
    assert info.rotation == ffprobe_rotation(video)
    sar = video.get("sample_aspect_ratio", "1:1")
    num, den = (int(x) for x in sar.split(":")) if sar not in ("N/A", "0:1") else (1, 1)
    assert info.sample_aspect_ratio == pytest.approx(num / den)
    avg_num, avg_den = (int(x) for x in video["avg_frame_rate"].split("/"))
    assert info.avg_fps == pytest.approx(avg_num / avg_den, rel=1e-3)
    assert info.start_time_s == pytest.approx(float(video["start_time"]), abs=2e-3)
    assert info.n_frames == (int(video["nb_frames"]) if "nb_frames" in video else None)
    assert info.duration_s == pytest.approx(float(video.get("duration", fmt["duration"]))
                                            - (0 if "duration" in video else float(video["start_time"])), abs=0.05)


def test_real_file_traps(shared_shots: Path):
    rotated = probe(shared_shots / "pyscenedetect/issue-134-rotate.mp4")
    assert rotated.rotation == 270                        # FFmpeg says -90
    assert (rotated.display_width, rotated.display_height) == (544, 1280)
    assert rotated.has_audio

    anamorphic = probe(shared_shots / "pyscenedetect/issue-195-aspect-ratio.mp4")
    assert anamorphic.sample_aspect_ratio == pytest.approx(16 / 11)
    assert (anamorphic.width, anamorphic.height) == (704, 576)
    assert (anamorphic.display_width, anamorphic.display_height) == (1024, 576)

    vfr = probe(shared_shots / "pyscenedetect/goldeneye-vfr-drop3.mp4")
    assert vfr.is_vfr and vfr.avg_fps < 0.8 * vfr.nominal_fps

    webm = probe(shared_shots / "moviepy/big_buck_bunny_0_30.webm")
    assert (webm.video_codec, webm.audio_codec, webm.is_vfr) == ("vp8", "vorbis", False)  # 41/42 ms steps

    delayed = probe(shared_shots / "pyscenedetect/delayed_start.mp4")
    assert delayed.start_time_s == pytest.approx(1.075) and delayed.n_frames == 24

    for name in ("pyscenedetect/testvideo.mp4", "moviepy/chaplin.mp4", "pyscenedetect/counter.mp4",
                 "pyscenedetect/issue-236-split-copy.mkv"):
        assert not probe(shared_shots / name).is_vfr, name


def test_real_frame_counts_match_decoding(shared_shots: Path):
    """Where the container states a frame count, it is the count a decoder gets."""
    for name in ("pyscenedetect/goldeneye-vfr-drop3.mp4", "pyscenedetect/delayed_start.mp4"):
        path = shared_shots / name
        assert probe(path).n_frames == ffprobe_frame_count(path)

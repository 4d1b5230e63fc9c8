"""probe(): facts about good files (checked against ffprobe) and a clear kind for each bad file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
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
    # FFmpeg guesses a format for some random files; still no video. Seeded: about 1 random file in
    # 200 passes FFmpeg's raw H.263 probe and reads as a cut-off video (a known limit, not this test's)
    for seed in range(5):
        path.write_bytes(np.random.default_rng(seed).bytes(64_000))
        kind, message = _kind(path)
        assert kind == "not_a_video", message


@pytest.mark.parametrize("name,codec", [("speech.m4a", "aac"), ("song.mp3", "libmp3lame"),
                                        ("take.wav", "pcm_s16le")])
def test_audio_only(tmp_path: Path, name: str, codec: str):
    kind, message = _kind(write_audio_only(tmp_path / name, codec))
    assert kind == "no_video_stream" and "audio only" in message


def test_a_video_track_without_frames(tmp_path: Path):
    """A Matroska file whose video track holds no frame (a recorder that wrote only the sound):
    FFmpeg reads it without a complaint; it said "truncated or damaged (End of file)"."""
    path = tmp_path / "silent-picture.mkv"
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = 160, 96, "yuv420p"
        a = out.add_stream("pcm_s16le", rate=48000, layout="mono")
        for k in range(25):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 48000, k * 960
            for packet in a.encode(af):
                out.mux(packet)
    kind, message = _kind(path)
    assert kind == "no_video_stream" and "holds no frames" in message and "pcm_s16le" in message


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


# --- hostile input: refused before it costs anything ------------------------------------------


def _bits(data: bytes) -> list[int]:
    return [(b >> (7 - i)) & 1 for b in data for i in range(8)]


def _ue(bits: list[int], pos: int) -> tuple[int, int]:
    """Exp-Golomb unsigned value at `pos`: (value, next position)."""
    zeros = 0
    while bits[pos + zeros] == 0:
        zeros += 1
    value = int("".join(map(str, bits[pos + zeros: pos + 2 * zeros + 1])), 2) - 1
    return value, pos + 2 * zeros + 1


def _put_ue(value: int) -> list[int]:
    code = bin(value + 1)[2:]
    return [0] * (len(code) - 1) + [int(c) for c in code]


def _emulation(rbsp: bytes, escape: bool) -> bytes:
    """Add (or strip) H.264 emulation-prevention bytes (00 00 03)."""
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and ((escape and b <= 3) or (not escape and b == 3)):
            if escape:
                out.append(3)
            zeros = 0
            if not escape:
                continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _sps_with_size(sps: bytes, width: int, height: int) -> bytes:
    """The SPS NAL with pic_width_in_mbs / pic_height_in_map_units rewritten (libx264's High
    profile SPS: no scaling matrices, POC type 0 or 2, frame_mbs_only)."""
    bits = _bits(_emulation(sps, escape=False))
    pos = 8 + 24                                   # NAL header, profile, constraints, level
    _, pos = _ue(bits, pos)                        # seq_parameter_set_id
    if sps[1] in (100, 110, 122, 244, 44, 83, 86, 118, 128):
        chroma, pos = _ue(bits, pos)
        pos += chroma == 3
        _, pos = _ue(bits, pos)
        _, pos = _ue(bits, pos)
        assert bits[pos + 1] == 0, "scaling matrices are not handled"
        pos += 2
    _, pos = _ue(bits, pos)                        # log2_max_frame_num_minus4
    poc, pos = _ue(bits, pos)
    assert poc in (0, 2)
    if poc == 0:
        _, pos = _ue(bits, pos)
    _, pos = _ue(bits, pos)                        # max_num_ref_frames
    pos += 1                                       # gaps_in_frame_num_allowed
    start = pos
    _, pos = _ue(bits, pos)
    _, pos = _ue(bits, pos)
    new = bits[:start] + _put_ue(width // 16 - 1) + _put_ue(height // 16 - 1) + bits[pos:]
    new += [0] * (-len(new) % 8)
    rbsp = bytes(int("".join(map(str, new[i:i + 8])), 2) for i in range(0, len(new), 8))
    return _emulation(rbsp.rstrip(b"\0"), escape=True)


_BOX_HEADER = {b"moov": 8, b"trak": 8, b"mdia": 8, b"minf": 8, b"stbl": 8, b"stsd": 16, b"avc1": 86}


def write_oversized_h264(path: Path, width: int, height: int) -> Path:
    """A tiny valid-looking MP4 (64x64 H.264, 10 frames) whose SPS claims `width`x`height`: what a
    hostile upload looks like. The container's own size fields still say 64x64."""
    data = bytearray(write_video(path.with_suffix(".src.mp4"), n_frames=10, size=(64, 64)).read_bytes())
    path.with_suffix(".src.mp4").unlink()
    avcc = data.index(b"avcC") - 4
    sps_len = int.from_bytes(data[avcc + 14: avcc + 16], "big")
    sps = _sps_with_size(bytes(data[avcc + 16: avcc + 16 + sps_len]), width, height)
    delta = len(sps) - sps_len
    assert data.index(b"mdat") < avcc           # moov after mdat: no chunk offset moves
    data[avcc + 14: avcc + 16 + sps_len] = len(sps).to_bytes(2, "big") + sps

    def grow(start: int, end: int) -> None:    # the sizes of the boxes that hold avcC
        pos = start
        while pos + 8 <= end:
            size, kind = int.from_bytes(data[pos: pos + 4], "big"), bytes(data[pos + 4: pos + 8])
            if pos <= avcc < pos + size:
                data[pos: pos + 4] = (size + delta).to_bytes(4, "big")
                if kind in _BOX_HEADER:
                    grow(pos + _BOX_HEADER[kind], pos + size)
                return
            pos += size

    grow(0, len(data))
    path.write_bytes(bytes(data))
    return path


def test_picture_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path):
    """A 2 KB MP4 whose SPS claims 16000x16000 cost seconds and gigabytes before it was refused
    (or ingested as a 16000x16000 video); 100000x100000 was called 'truncated'."""
    big = write_oversized_h264(tmp_path / "big.mp4", 16000, 16000)
    assert ffprobe_streams(big)[0]["width"] == 16000                 # the oracle reads the claim too
    kind, message = _kind(big)
    assert kind == "too_large" and "16000x16000" in message and "decode.max_pixels" in message
    huge = write_oversized_h264(tmp_path / "huge.mp4", 100000, 100000)
    kind, message = _kind(huge)
    assert kind == "too_large" and "Picture size 100000x100000" in message   # FFmpeg's own words
    # the limit is a setting: a normal file over a small limit is refused the same way
    with pytest.raises(ProbeError) as err:
        probe(write_video(tmp_path / "ok.mp4", n_frames=5), max_pixels=100 * 90)
    assert err.value.kind == "too_large" and "160x96" in err.value.message


def test_still_images_renamed_mp4_are_not_videos(tmp_path: Path):
    import cv2
    import numpy as np

    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for ext in ("png", "jpg"):
        cv2.imwrite(str(tmp_path / f"pic.{ext}"), img)
        (tmp_path / f"pic.{ext}").rename(tmp_path / f"{ext}.mp4")
        kind, message = _kind(tmp_path / f"{ext}.mp4")
        assert kind == "not_a_video" and "still image" in message, message


def test_playlists_are_never_opened(tmp_path: Path):
    """ffconcat with a relative name made FFmpeg read another file as this 'video'; HLS fetches URLs."""
    write_video(tmp_path / "other.mp4", n_frames=5)
    cases = {"concat_rel.mp4": "ffconcat version 1.0\nfile other.mp4\n",
             "concat_abs.mp4": f"ffconcat version 1.0\nfile {tmp_path / 'other.mp4'}\n",
             "hls.mp4": "#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        kind, message = _kind(tmp_path / name)
        assert kind == "unsafe_input" and "playlist" in message, (name, message)


def test_non_regular_files_are_classified_without_reading(tmp_path: Path):
    os.mkfifo(tmp_path / "fifo.mp4")
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "loop.mp4")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    expected = {"fifo.mp4": ("unsafe_input", "FIFO"), "dir.mp4": ("not_a_video", "directory"),
                "loop.mp4": ("not_found", "link loop"), "dangling.mp4": ("not_found", "broken symbolic link")}
    for name, (kind, words) in expected.items():
        got, message = _kind(tmp_path / name)
        assert got == kind and words in message, (name, message)
    with pytest.raises(ProbeError) as err:
        probe("/dev/zero")
    assert err.value.kind == "unsafe_input" and "character device" in err.value.message


def test_messages_name_the_source_as_given(tmp_path: Path):
    """A staged copy of a URL is probed under the URL's name: the error names what the user gave."""
    path = tmp_path / "0123abcd.mp4"
    path.write_bytes(b"not a video at all " * 100)
    with pytest.raises(ProbeError) as err:
        probe(path, name="https://example.org/clip.mp4")
    assert "https://example.org/clip.mp4" in err.value.message and str(path) not in err.value.message

"""The single decode pass: frame count and PTS against ffprobe, analysis frames, bad input."""

from __future__ import annotations

import dataclasses
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.ingest import decode
from pipeline.ingest.analysis import AnalysisFrame
from pipeline.ingest.config import DecodeConfig, load_ingest_config
from pipeline.ingest.decode import DecodeError, analysis_size, decode_pass, decode_threads
from pipeline.ingest.worker import ingest_source
from pipeline.stages.execution import available_cpus
from tests.avfiles import ffprobe, ffprobe_frame_count, frame_image, require_ffmpeg, write_video
from trainer.typedconfig import ConfigError

CFG = DecodeConfig(threads=2)


class Recorder:
    """Keeps what every frame looked like (small runs only)."""

    name = "recorder"

    def __init__(self) -> None:
        self.frames: list[AnalysisFrame] = []

    def update(self, frame: AnalysisFrame) -> None:
        self.frames.append(frame)


def write(path: Path, frames: list[np.ndarray], fps: int = 25, codec: str = "libx264", pix_fmt: str = "yuv420p",
          pts: list[int] | None = None, time_base: Fraction | None = None) -> Path:
    """Encode RGB frames; `pts` with `time_base` gives arbitrary (variable) frame timing."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def gradient_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    """Frame i: horizontal colour gradient whose brightness encodes i."""
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    frames = []
    for i in range(n):
        level = 40 + (i * 150) // max(n - 1, 1)
        img = np.empty((height, width, 3), np.float32)
        img[...] = level
        img[..., 0] += 60 * x[..., 0]
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def ffprobe_pts(path: Path) -> np.ndarray:
    info = ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=best_effort_timestamp_time")
    return np.array([float(f["best_effort_timestamp_time"]) for f in info["frames"]])


def test_frames_pts_and_analysis_size(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", gradient_frames(40, 320, 180), fps=25)
    rec = Recorder()
    result = decode_pass(path, CFG, [rec])
    assert result.n_frames == len(rec.frames) == 40
    assert [f.index for f in rec.frames] == list(range(40))
    np.testing.assert_allclose(result.pts_s, np.arange(40) / 25.0, atol=1e-6)
    assert result.fps == pytest.approx(25.0) and not result.is_vfr
    assert result.analysis_size == (160, 90) and result.codec == "h264"
    f = rec.frames[20]
    assert f.bgr.shape == (90, 160, 3) and f.luma.shape == (90, 160) and f.bgr.dtype == np.uint8
    # brightness follows the source; BGR and luma agree (red rises left to right in BGR's last channel)
    means = [float(fr.luma.mean()) for fr in rec.frames]
    assert all(b > a for a, b in zip(means[::5], means[5::5]))
    assert f.bgr[:, -10:, 2].mean() > f.bgr[:, :10, 2].mean() + 30
    assert abs(float(f.bgr.mean(axis=2).mean()) - float(f.luma.mean())) < 25


def test_small_frames_decode_on_one_thread(tmp_path: Path) -> None:
    """720p and smaller decode on one thread whatever `threads` says (unless single_thread_pixels
    is 0); larger frames use `threads`, 0 meaning one per CPU this process may use."""
    many = DecodeConfig(threads=4)
    assert decode_threads(many, 640, 360) == decode_threads(many, 1280, 720) == 1
    assert decode_threads(many, 1920, 1080) == 4
    assert decode_threads(DecodeConfig(threads=4, single_thread_pixels=0), 640, 360) == 4
    assert decode_threads(DecodeConfig(), 1920, 1080) == available_cpus()
    path = write(tmp_path / "small.mp4", gradient_frames(10, 320, 180), fps=25)
    assert decode_pass(path, many, []).threads == 1
    assert decode_pass(path, DecodeConfig(threads=3, single_thread_pixels=0), []).threads == 3


def test_cuda_decoding_falls_back_to_the_cpu_with_the_same_frames(tmp_path: Path, capfd) -> None:
    """`decode.device: cuda` decodes with NVDEC where there is one; elsewhere (these machines) the
    file opens for the CPU decoder, the frames are the same, and one warning per process says so."""
    path = write(tmp_path / "a.mp4", gradient_frames(20, 320, 180), fps=25)
    decode._said_no_cuda.clear()
    cpu, cpu_rec = decode_pass(path, CFG, [rec := Recorder()]), rec
    cuda_cfg = dataclasses.replace(CFG, device="cuda")
    cuda, cuda_rec = decode_pass(path, cuda_cfg, [rec := Recorder()]), rec
    np.testing.assert_array_equal(cuda.pts_s, cpu.pts_s)
    if cuda.device == "cpu":     # no CUDA decoder here: the CPU path, said once
        assert all(np.array_equal(a.bgr, b.bgr) for a, b in zip(cpu_rec.frames, cuda_rec.frames))
        decode_pass(path, cuda_cfg, [])
        assert capfd.readouterr().err.count("decode.device=cuda") == 1
    else:                        # NVDEC ignores skip_loop_filter: pictures agree closely, not bit for bit
        assert all(np.abs(a.luma.astype(int) - b.luma).mean() < 3 for a, b in zip(cpu_rec.frames, cuda_rec.frames))
    with pytest.raises(ConfigError, match="decode.device"):
        DecodeConfig(device="gpu")


def test_variable_frame_rate_pts(tmp_path: Path) -> None:
    tb = Fraction(1, 1000)
    pts = [0, 40, 80, 200, 240, 400, 440, 480, 520, 700]   # gaps: dropped / held frames
    path = write(tmp_path / "vfr.mkv", gradient_frames(len(pts), 128, 72), pts=pts, time_base=tb)
    result = decode_pass(path, CFG, [])
    assert result.n_frames == len(pts)
    np.testing.assert_allclose(result.pts_s, np.array(pts) / 1000.0, atol=1e-3)
    assert result.is_vfr


def test_other_pixel_formats_go_through_swscale(tmp_path: Path) -> None:
    frames = gradient_frames(6, 96, 64)
    path = write(tmp_path / "rgb.mov", frames, codec="png", pix_fmt="rgb24")
    rec = Recorder()
    result = decode_pass(path, DecodeConfig(threads=1, analysis_width=48), [rec])
    assert result.pix_fmt == "rgb24" and result.n_frames == 6
    assert rec.frames[0].bgr.shape == (32, 48, 3)
    # bgr from the fallback matches the source (swapped to BGR) within conversion error
    src = frames[3][:, :, ::-1].reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))
    assert np.abs(rec.frames[3].bgr.astype(float) - src).mean() < 6


def test_analysis_size_aspect_cap_and_no_upscale() -> None:
    cfg = DecodeConfig(analysis_width=160, max_analysis_height=160)
    assert analysis_size(1920, 1080, None, cfg) == (160, 90)
    assert analysis_size(1080, 1920, None, cfg) == (90, 160)          # portrait: capped height
    assert analysis_size(704, 576, Fraction(16, 11), cfg) == (160, 90)  # anamorphic: display aspect
    assert analysis_size(96, 64, None, cfg) == (96, 64)                # never upscaled
    assert available_cpus() >= 1


def test_bad_inputs_raise_decode_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(DecodeError):
        decode_pass(junk, CFG, [])
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as out:
        s = out.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        for i in range(20):
            frame.pts = i * 1024
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    with pytest.raises(DecodeError, match="no video stream"):
        decode_pass(audio, CFG, [])


def test_corrupt_packets_are_skipped_not_fatal(tmp_path: Path) -> None:
    path = write(tmp_path / "c.mkv", gradient_frames(60, 320, 180), fps=25)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for pos in rng.integers(len(data) // 3, 2 * len(data) // 3, 40):   # scribble over the middle
        data[pos:pos + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    result = decode_pass(bad, CFG, [])
    assert 10 <= result.n_frames <= 60
    assert np.all(np.diff(result.pts_s) > 0)
    assert result.warnings is not None


def test_frames_out_of_time_order_are_left_out(tmp_path: Path) -> None:
    # Intra-only MJPEG muxed with one presentation time going backwards (as a damaged stream can
    # make a decoder emit): the frame at 4 arrives after the one at 5.
    pts = [0, 1, 2, 5, 4, 6, 7]
    path = tmp_path / "ooo.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        packets = []
        for i in range(len(pts)):
            packets += stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24"))
        packets += stream.encode(None)
        for i, packet in enumerate(packets):
            packet.dts, packet.pts, packet.time_base = i, pts[i], Fraction(1, 25)
            out.mux(packet)
    rec = Recorder()
    result = decode_pass(path, DecodeConfig(threads=1), [rec])
    np.testing.assert_allclose(result.pts_s, [0, 0.04, 0.08, 0.2, 0.24, 0.28])
    assert [f.index for f in rec.frames] == list(range(6)) and result.dropped_frames == 1
    assert result.warnings == "1 frames out of time order left out"


def test_truncated_file_keeps_decoded_frames(tmp_path: Path) -> None:
    path = write(tmp_path / "t.mkv", gradient_frames(100, 320, 180), fps=25)
    assert decode_pass(path, CFG, []).warnings is None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = decode_pass(path, CFG, [])
    assert 10 <= result.n_frames < 75
    # Matroska demuxes quietly up to the cut: only the declared duration gives it away
    assert "the 4.0 s the container declares" in result.warnings


@pytest.mark.parametrize("name", ["goldeneye-vfr-drop3.mp4", "issue-134-rotate.mp4", "delayed_start.mp4"])
def test_shared_files_match_ffprobe(shared_shots: Path, name: str) -> None:
    path = shared_shots / "pyscenedetect" / name
    result = decode_pass(path, CFG, [])
    assert result.n_frames == ffprobe_frame_count(path)
    np.testing.assert_allclose(result.pts_s, ffprobe_pts(path), atol=1e-3)
    if name.startswith("goldeneye-vfr"):
        assert result.is_vfr
        assert result.pts_s[60] == pytest.approx(3.754, abs=1e-3)   # the cut's documented time
    if name == "delayed_start.mp4":
        assert result.pts_s[0] == pytest.approx(1.075, abs=1e-3)


def _shown_index(frame_rgb: np.ndarray, candidates: range) -> int:
    """Which `frame_image(i)` a decoded frame (any size) shows: its colour encodes i."""
    from tests.captioner_lib import frame_code

    code = np.array(frame_code(frame_rgb))
    return candidates[int(np.argmin([np.abs(np.array(frame_code(frame_image(i, 160, 96))) - code).sum()
                                     for i in candidates]))]


@pytest.mark.parametrize("suffix, bsf", [(".avi", "h264_mp4toannexb"), (".mkv", "setts=pts=DTS")])
def test_b_frames_labelled_in_decode_order_keep_every_frame(tmp_path: Path, suffix: str, bsf: str) -> None:
    # H.264 with B-frames in AVI (which stores no PTS: the demuxer's guesses follow decode order) and
    # in an MKV whose PTS were written as DTS. The decoder hands frames out in presentation order,
    # labelled with a permutation of the right times; every frame must be kept, in order.
    src = write_video(tmp_path / "src.mp4", n_frames=72, fps=24, bframes=3)
    path = tmp_path / f"b{suffix}"
    subprocess.run([require_ffmpeg(), "-v", "error", "-i", str(src), "-c", "copy", "-bsf:v", bsf, str(path)], check=True)
    rec = Recorder()
    result = decode_pass(path, CFG, [rec])
    assert result.n_frames == ffprobe_frame_count(path) == 72
    assert result.dropped_frames == 0 and result.warnings is None and abs(result.fps - 24) < 0.5
    shown = [_shown_index(f.bgr[..., ::-1], range(72)) for f in rec.frames]
    assert shown == list(range(72))

    # the clips cut from it hold exactly their frames (ffprobe counts the files)
    cfg = load_ingest_config(None, ["clips.mode=remux", "signals.enabled=false", "clips.min_seconds=0.5",
                                    "clips.max_seconds=1.2", "shots.cut_threshold=1000"])
    out = ingest_source(str(path), cfg, tmp_path / "lib")
    assert out.outcome == "ingested" and out.rows["videos"][0]["decode_warnings"] is None
    clips = out.rows["clips"]
    assert len(clips) >= 2
    for clip in clips:
        file = tmp_path / "lib" / clip["path"]
        assert ffprobe_frame_count(file) == clip["file_n_frames"] >= clip["file_start_frame"] + clip["n_frames"]
        with av.open(str(file)) as container:
            first = next(f for i, f in enumerate(container.decode(video=0)) if i == clip["file_start_frame"])
        assert _shown_index(first.to_ndarray(format="rgb24"), range(72)) == clip["start_frame"]

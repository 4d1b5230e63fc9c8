"""Small synthetic media files for the ingest tests, and ffprobe as an independent oracle."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """A frame that differs visibly from its neighbours: a moving bar and a changing colour."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (i * 37) % 200 + 20
    img[..., 1] = np.linspace(30, 220, width, dtype=np.uint8)[None, :]
    img[..., 2] = (i * 11) % 180 + 40
    x = (i * 7) % max(1, width - 12)
    img[height // 4: 3 * height // 4, x:x + 12] = 255
    return img


def write_video(path: Path, n_frames: int = 100, fps: int = 25, size: tuple[int, int] = (160, 96),
                codec: str = "libx264", gop: int = 25, bframes: int = 3, audio: bool = False,
                faststart: bool = False) -> Path:
    """H.264 (or `codec`) video with a fixed GOP; optional AAC/Opus audio tone."""
    width, height = size
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        v = out.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            v.options = {"g": str(gop), "bf": str(bframes), "sc_threshold": "0", "preset": "ultrafast" if bframes == 0 else "veryfast"}
        else:
            v.codec_context.gop_size = gop
        a = None
        if audio:
            a_codec = "libopus" if path.suffix in (".webm", ".mkv") else "aac"
            a = out.add_stream(a_codec, rate=48000, layout="mono")
        samples_done = 0
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            for packet in v.encode(frame):
                out.mux(packet)
            while a is not None and samples_done < (i + 1) * 48000 // fps:
                tone = np.sin(2 * np.pi * 440 * np.arange(samples_done, samples_done + 960) / 48000)
                af = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None], format="flt", layout="mono")
                af.sample_rate, af.pts = 48000, samples_done
                samples_done += 960
                for packet in a.encode(af):
                    out.mux(packet)
        flush(out, v, a)
    return path


def flush(out, *streams) -> None:
    """Mux what each encoder still holds (None entries: streams a file does not have)."""
    for stream in streams:
        for packet in stream.encode() if stream is not None else ():
            out.mux(packet)


def write_with_cover_art(path: Path, n_frames: int = 30) -> Path:
    """MP4 with a JPEG cover (an 'attached picture' video stream) added before the real video."""
    with av.open(str(path), "w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 160, 96, "yuv420p"
        for packet in cover.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
            out.mux(packet)
        for i in range(n_frames):
            for packet in v.encode(av.VideoFrame.from_ndarray(frame_image(i, 160, 96), format="rgb24")):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    return path


def write_audio_only(path: Path, codec: str = "aac", seconds: float = 1.0) -> Path:
    """An audio file (container from the suffix: .m4a, .mp3, .wav, ...) with silence."""
    with av.open(str(path), "w") as out:
        a = out.add_stream(codec, rate=48000, layout="mono")
        for k in range(int(seconds * 48000 / 960)):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 48000, k * 960
            for packet in a.encode(af):
                out.mux(packet)
        for packet in a.encode():
            out.mux(packet)
    return path


def decode_rgb(path: str | Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def decode_some(path: str | Path, keep: set[int], upto: int | None = None
                ) -> tuple[list[float], dict[int, np.ndarray]]:
    """(PTS in seconds of each frame, {index: rgb} for the indices in `keep`): memory stays small.

    With `upto`, decoding stops after that many frames."""
    times, out = [], {}
    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "AUTO"
        for f in c.decode(video=0):
            if len(times) in keep:
                out[len(times)] = f.to_ndarray(format="rgb24")
            times.append(float(f.pts * f.time_base))
            if upto is not None and len(times) >= upto:
                break
    return times, out


def frame_times(path: str | Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.pts * f.time_base) for f in c.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ------------------------------------------------------------------------------------------
# ffprobe oracle


def require_ffprobe() -> str:
    return _require("ffprobe")


def require_ffmpeg() -> str:
    return _require("ffmpeg")


def _require(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} CLI not installed (the oracle and remuxer for these checks; apt-get install ffmpeg)")
    return exe


def ffprobe(path: str | Path, *args: str) -> dict:
    exe = require_ffprobe()
    out = subprocess.run([exe, "-v", "error", "-of", "json", *args, str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def ffprobe_streams(path: str | Path) -> tuple[dict, dict | None, dict]:
    """(first video stream, first audio stream or None, format) as ffprobe reports them."""
    info = ffprobe(path, "-show_streams", "-show_format")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = next((s for s in info["streams"] if s["codec_type"] == "audio"), None)
    return video, audio, info["format"]


def ffprobe_frame_count(path: str | Path, ignore_editlist: bool = False) -> int:
    """Frames ffprobe decodes from the first video stream (edit lists applied, as any player does,
    unless `ignore_editlist`: then every coded frame in the file)."""
    extra = ["-ignore_editlist", "1"] if ignore_editlist else []
    info = ffprobe(path, *extra, "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames")
    return int(info["streams"][0]["nb_read_frames"])


def ffprobe_rotation(video_stream: dict) -> int:
    for side in video_stream.get("side_data_list", []):
        if "rotation" in side:
            return int(side["rotation"]) % 360
    return int(video_stream.get("tags", {}).get("rotate", 0)) * -1 % 360

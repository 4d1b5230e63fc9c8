"""What a video file is, read with PyAV before any real work: container, codecs, timing, geometry.

`probe` also decodes the first frame, because a header can look fine on a file that cannot be
decoded; and it tells the user what is wrong with a bad file through `ProbeError.kind`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ERROR_KINDS = ("empty_file", "truncated", "not_a_video", "no_video_stream", "unsupported_codec",
               "permission_denied", "not_found")

# Leading bytes of containers FFmpeg reads; a file that starts like one of them but will not open
# is a damaged or truncated video, not "some other file".
_SIGNATURES: list[tuple[int, bytes, str]] = [
    (4, b"ftyp", "MP4/MOV"), (4, b"moov", "MP4/MOV"), (4, b"mdat", "MP4/MOV"), (4, b"free", "MP4/MOV"),
    (4, b"wide", "MP4/MOV"), (4, b"skip", "MP4/MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (0, b"RIFF", "RIFF (AVI/WAV)"), (0, b"FLV\x01", "FLV"),
    (0, b"OggS", "Ogg"), (0, b"\x00\x00\x01\xba", "MPEG-PS"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMV"),
]
_VFR_PACKETS = 300       # packets read to tell constant from variable frame rate
_FIRST_FRAME_PACKETS = 500


class ProbeError(Exception):
    """A file that cannot be ingested; `kind` is one of ERROR_KINDS, the message says why."""

    def __init__(self, kind: str, message: str) -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ProbeInfo:
    path: str
    size_bytes: int
    container: str               # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"
    video_codec: str             # e.g. "h264", "hevc", "vp9"
    audio_codec: str | None      # first audio stream's codec, None without audio
    duration_s: float            # video stream: first PTS to end (0.0 if the file does not say)
    start_time_s: float          # PTS of the first video frame (non-zero for a delayed start)
    avg_fps: float               # frames / duration (FFmpeg avg_frame_rate)
    nominal_fps: float           # the stream's base rate (FFmpeg r_frame_rate): the frame grid
    is_vfr: bool                 # frame durations vary (dropped frames, phone video, ...)
    n_frames: int | None         # frame count the container states, None if it does not say
    width: int                   # decoded frame size, before sample aspect ratio and rotation
    height: int
    rotation: int                # display rotation, degrees counter-clockwise: 0, 90, 180 or 270
    sample_aspect_ratio: float   # pixel width / height (1.0 = square; 16/11 for PAL 16:9)
    display_width: int           # what a player shows: SAR applied to the width, then rotation
    display_height: int
    pix_fmt: str
    bit_rate: int | None         # container bit rate, bits/s

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    def to_dict(self) -> dict:
        return asdict(self)


def probe(path: str | os.PathLike) -> ProbeInfo:
    """Probe a local video file; raise `ProbeError` if it cannot be ingested."""
    path = Path(path)
    size = _check_readable(path)
    try:
        container = av.open(str(path), metadata_errors="replace")
    except PermissionError as exc:
        raise ProbeError("permission_denied", f"{path}: permission denied") from exc
    except av.FFmpegError as exc:
        raise _unopenable(path, size, exc) from exc
    with container:
        return _probe_open(path, size, container)


def _check_readable(path: Path) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ProbeError("not_found", f"{path}: no such file") from None
    except PermissionError:
        raise ProbeError("permission_denied", f"{path}: permission denied (cannot reach the file)") from None
    if not path.is_file():
        raise ProbeError("not_a_video", f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        raise ProbeError("permission_denied", f"{path}: permission denied (cannot read the file)") from None
    if size == 0:
        raise ProbeError("empty_file", f"{path}: file is empty (0 bytes)")
    return size


def _unopenable(path: Path, size: int, exc: Exception) -> ProbeError:
    looks_like = _container_signature(path)
    if looks_like:
        return ProbeError("truncated", f"{path}: starts like a {looks_like} file but cannot be read: "
                                       f"truncated or damaged ({size} bytes; FFmpeg: {_ffmpeg_text(exc)})")
    return ProbeError("not_a_video", f"{path}: not a video file FFmpeg can read ({_ffmpeg_text(exc)})")


def _container_signature(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(400)
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "MPEG-TS"
    return None


def _audio_signature(path: Path) -> bool:
    """Starts like an MP3 (ID3 tag or frame sync), AAC (ADTS), FLAC or WAV file."""
    with open(path, "rb") as f:
        head = f.read(12)
    return (head[:3] == b"ID3" or head[:4] == b"fLaC" or head[8:12] == b"WAVE"
            or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0))


def _ffmpeg_text(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _probe_open(path: Path, size: int, container: av.container.InputContainer) -> ProbeInfo:
    if not container.streams.video:
        audio = [_codec_name(s) for s in container.streams.audio if s.codec_context]
        # FFmpeg reads some random files as raw audio: believe it only for a real audio file
        if audio and (_container_signature(path) or _audio_signature(path)):
            raise ProbeError("no_video_stream",
                             f"{path}: audio only ({', '.join(audio)}), no video stream")
        raise ProbeError("not_a_video", f"{path}: no video or audio stream "
                                        f"(FFmpeg read it as '{container.format.name}')")
    stream = main_video_stream(container)
    cc = stream.codec_context
    if cc is None:
        raise ProbeError("unsupported_codec", f"{path}: the video codec is not supported "
                                              f"(no decoder for it in this FFmpeg build)")
    _check_index_within_file(path, size, stream)
    first, deltas = _scan_start(path, container, stream)

    tb = stream.time_base
    start_pts = stream.start_time if stream.start_time is not None else (first.pts or 0)
    start_time_s = float(start_pts * tb) if tb else 0.0
    if stream.duration is not None and tb:
        duration_s = float(stream.duration * tb)
    elif container.duration is not None:
        container_start = (container.start_time or 0) / av.time_base
        duration_s = max(0.0, container.duration / av.time_base - (start_time_s - container_start))
    else:
        duration_s = 0.0
    n_frames = stream.frames or None
    nominal = stream.base_rate or stream.guessed_rate or stream.average_rate
    avg = stream.average_rate or nominal
    if (not avg) and n_frames and duration_s > 0:
        avg = Fraction(n_frames) / Fraction(duration_s)

    rotation = _rotation(first, stream)
    sar = _sar(stream)
    width, height = first.width, first.height
    dw, dh = (round(width * sar), height) if sar != 1 else (width, height)
    if rotation in (90, 270):
        dw, dh = dh, dw
    audio = next((_codec_name(s) for s in container.streams.audio if s.codec_context), None)
    if audio is None and container.streams.audio:
        audio = "unknown"
    return ProbeInfo(
        path=str(path), size_bytes=size, container=container.format.name, video_codec=_codec_name(stream),
        audio_codec=audio, duration_s=duration_s, start_time_s=start_time_s,
        avg_fps=float(avg or 0.0), nominal_fps=float(nominal or 0.0),
        is_vfr=_is_vfr(deltas), n_frames=n_frames, width=width, height=height, rotation=rotation,
        sample_aspect_ratio=float(sar), display_width=dw, display_height=dh,
        pix_fmt=first.format.name, bit_rate=container.bit_rate or None,
    )


def main_video_stream(container) -> av.video.stream.VideoStream:
    """The video track: the first video stream that is not cover art (an attached picture)."""
    videos = container.streams.video
    return next((s for s in videos if not s.disposition & av.stream.Disposition.attached_pic), videos[0])


def _check_index_within_file(path: Path, size: int, stream: av.video.stream.VideoStream) -> None:
    """A sample table that points past the end of the file means the file was cut short.

    (MP4 with the index at the front opens fine when truncated; only this shows it.)"""
    entries = stream.index_entries
    n = len(entries)
    if n == 0:
        return
    last = max((entries[i] for i in range(max(0, n - 64), n)), key=lambda e: e.pos)
    end = last.pos + last.size
    if last.pos >= 0 and end > size:
        raise ProbeError("truncated", f"{path}: file is truncated: its index needs {end} bytes, "
                                      f"the file has {size} ({100 * size / end:.0f}%)")


def _scan_start(path: Path, container, stream) -> tuple[av.VideoFrame, np.ndarray]:
    """Decode the first frame, and collect the PTS of the first few hundred packets on the way.

    Returns the frame and the PTS steps between consecutive frames in presentation order."""
    stream.codec_context.thread_type = "AUTO"
    first = None
    pts: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                pts.append(packet.pts)
            if first is None:
                first = next(iter(packet.decode()), None)
            if (first is not None and len(pts) >= _VFR_PACKETS) or len(pts) > _FIRST_FRAME_PACKETS:
                break
        if first is None:  # drain the decoder: a tiny file may hold a single frame
            first = next(iter(stream.codec_context.decode(None)), None)
    except av.error.DecoderNotFoundError as exc:
        raise ProbeError("unsupported_codec", f"{path}: the video codec is not supported "
                                              f"({_ffmpeg_text(exc)})") from exc
    except av.FFmpegError as exc:
        if first is None:
            raise ProbeError("truncated", f"{path}: the video data cannot be decoded: truncated or "
                                          f"damaged ({_ffmpeg_text(exc)})") from exc
        # damaged later on: the decode pass will find out where; judge the rate from what was read
    if first is None:
        raise ProbeError("truncated", f"{path}: no video frame could be decoded: truncated or damaged")
    ordered = np.unique(np.asarray(pts, dtype=np.int64))
    # B-frame reordering can leave the last few PTS of the window missing: drop that tail
    return first, np.diff(ordered[: max(0, len(ordered) - 8)])


def _is_vfr(deltas: np.ndarray) -> bool:
    """Variable if more than 1% of steps differ from the typical step by more than rounding.

    Millisecond time bases (Matroska, WebM) store 1/24 s as 41 or 42 ticks: that is rounding,
    not variation, hence the tolerance of a tick and a half (and at least 5%)."""
    if len(deltas) < 2:
        return False
    typical = float(np.median(deltas))
    tolerance = max(1.5, 0.05 * typical)
    irregular = np.abs(deltas - typical) > tolerance
    return bool(irregular.mean() > 0.01)


def _rotation(frame: av.VideoFrame, stream) -> int:
    """Display-matrix rotation in [0, 360): FFmpeg's -90 (turn the picture clockwise) is 270."""
    degrees = float(getattr(frame, "rotation", 0) or 0)
    if degrees == 0 and "rotate" in stream.metadata:   # old FFmpeg exported it as a tag,
        try:                                           # with the opposite sign
            degrees = -float(stream.metadata["rotate"])
        except ValueError:
            pass
    return int(round(degrees)) % 360


def _sar(stream) -> Fraction:
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return Fraction(sar) if sar and sar > 0 else Fraction(1)


def _codec_name(stream) -> str:
    """The codec's name ("mp3", "av1"), not the decoder's ("mp3float", "libdav1d")."""
    return stream.codec_context.codec.canonical_name

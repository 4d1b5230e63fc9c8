"""What a video file is, read with PyAV before any real work: container, codecs, timing, geometry.

`probe` also decodes the first frame, because a header can look fine on a file that cannot be
decoded; and it tells the user what is wrong with a bad file through `ProbeError.kind`.

Hostile files are refused before they cost anything: only regular files are opened (a FIFO or a
device could block forever), playlists that make FFmpeg open other files or URLs (ffconcat, HLS,
DASH) are not opened at all, still images are not videos, and a picture larger than
`max_pixels` (a 20 KB file whose SPS claims 16000x16000 would cost minutes and gigabytes) is
refused from the stream header, with FFmpeg's own words when the decoder refuses it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import numpy as np

from pipeline.ingest.sources import local_file_problem

ERROR_KINDS = ("empty_file", "truncated", "not_a_video", "no_video_stream", "unsupported_codec",
               "permission_denied", "not_found", "too_large", "unsafe_input")
DEFAULT_MAX_PIXELS = 8192 * 8192   # DCI 8K (8192x4320) and 360-degree 8K (7680x7680) fit

# Text files FFmpeg would follow to other files or URLs: never opened (ffconcat with a relative
# name reads any file it names; HLS/DASH fetch URLs).
_PLAYLISTS: list[tuple[bytes, str]] = [(b"ffconcat", "an ffconcat playlist"), (b"#EXTM3U", "an HLS playlist"),
                                       (b"#EXT-X-", "an HLS playlist")]
_PLAYLIST_FORMATS = {"concat": "an ffconcat playlist", "hls": "an HLS playlist", "dash": "a DASH manifest",
                     "ffmetadata": "an FFmpeg metadata file", "sdp": "an SDP session description"}
_PICTURE_SIZE = re.compile(r"Picture size (\d+)x(\d+)")

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


def display_size(width: int, height: int, sar: float, rotation: int) -> tuple[int, int]:
    """What a player shows of a (width, height) coded picture: the sample aspect ratio applied to
    the width, then the rotation."""
    dw, dh = (round(width * sar), height) if sar != 1 else (width, height)
    return (dh, dw) if rotation in (90, 270) else (dw, dh)


def probe(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> ProbeInfo:
    """Probe a local video file; raise `ProbeError` if it cannot be ingested.

    `max_pixels`: larger pictures are refused (`too_large`) before any is decoded. `name`: what
    messages call the file (the URL of a staged remote source; default: the path)."""
    path = Path(path)
    label = name or str(path)
    size = _check_readable(path, label)
    try:
        container = _open(path, max_pixels)
    except PermissionError as exc:
        raise ProbeError("permission_denied", f"{label}: permission denied") from exc
    except av.FFmpegError as exc:
        raise _unopenable(path, label, size, exc, max_pixels) from exc
    with container:
        return _probe_open(path, label, size, container, max_pixels)


# PyAV < 19 decodes tags with the error handler given here (strict by default: a file with a
# non-UTF-8 tag would not open); 19 dropped the argument and decodes UTF-8 with surrogateescape,
# which cannot fail. The one tag probe reads, `rotate`, is read as a number.
_METADATA_ERRORS = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}


def _open(path: Path, max_pixels: int, options: dict[str, str] | None = None) -> av.container.InputContainer:
    # the decoders of FFmpeg's own stream probing get the limit too: they never allocate a huge
    # picture; nested opens (a playlist that slipped through) may read local files only
    return av.open(str(path), **_METADATA_ERRORS, options={"max_pixels": str(max_pixels), **(options or {})},
                   container_options={"protocol_whitelist": "file"})


@contextmanager
def _ffmpeg_log() -> Iterator[list]:
    """FFmpeg's error messages while the block runs, as (level, name, text). Only for single-threaded
    work: PyAV's log callback can deadlock against FFmpeg's decoder threads (why PyAV keeps FFmpeg
    quiet by default)."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(previous)


def _ffmpeg_log_of_failure(path: Path, max_pixels: int) -> list:
    """What FFmpeg says when it opens `path` and decodes its first frame, on one thread: called
    once something failed, to give the decoder's real reason instead of a guess."""
    with _ffmpeg_log() as log:
        try:
            with _open(path, max_pixels, {"threads": "1"}) as container:
                if container.streams.video:
                    stream = main_video_stream(container)
                    stream.codec_context.thread_count = 1
                    for i, packet in enumerate(container.demux(stream)):
                        if next(iter(packet.decode()), None) is not None or i > _FIRST_FRAME_PACKETS:
                            break
        except (av.FFmpegError, OSError, ValueError):
            pass
    return list(log)


def _ffmpeg_says(log: list) -> str:
    """The last few distinct FFmpeg messages, for a person ('' when there are none)."""
    texts: list[str] = []
    for _, _, text in log:
        text = text.strip()
        if text and text not in texts:
            texts.append(text)
    return "; ".join(texts[-3:])


def _refused_size(label: str, log: list, max_pixels: int) -> ProbeError | None:
    """`too_large` when FFmpeg refused a picture size (over `max_pixels`, or beyond any decoder)."""
    for _, _, text in log:
        m = _PICTURE_SIZE.search(text)
        if m:
            w, h = int(m.group(1)), int(m.group(2))
            limit = (f"over the limit of {max_pixels} pixels (decode.max_pixels)" if w * h > max_pixels
                     else "which the decoder refuses")
            return ProbeError("too_large", f"{label}: the video's pictures are {w}x{h}, {limit} "
                                           f"(FFmpeg: {text.strip()})")
    return None


def _check_readable(path: Path, label: str) -> int:
    """The file's size; ProbeError unless it is a non-empty regular file we may read. Only the
    type is checked before reading: a FIFO or a device would block or never end."""
    problem = local_file_problem(path)
    if problem is not None:
        raise ProbeError(problem[0], f"{label}: {problem[1]}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except PermissionError:
        raise ProbeError("permission_denied", f"{label}: permission denied (cannot read the file)") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        head = f.read(64)
    if size == 0:
        raise ProbeError("empty_file", f"{label}: file is empty (0 bytes)")
    for magic, what in _PLAYLISTS:
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(magic):
            raise ProbeError("unsafe_input", f"{label}: {what}, not a video file: it makes FFmpeg open the files "
                                             "or URLs it names, so recap does not read it")
    return size


def _unopenable(path: Path, label: str, size: int, exc: Exception, max_pixels: int) -> ProbeError:
    looks_like = _container_signature(path)
    said = _ffmpeg_says(_ffmpeg_log_of_failure(path, max_pixels)) or _ffmpeg_text(exc)
    if looks_like:
        return ProbeError("truncated", f"{label}: starts like a {looks_like} file but cannot be read: "
                                       f"truncated or damaged ({size} bytes; FFmpeg: {said})")
    return ProbeError("not_a_video", f"{label}: not a video file FFmpeg can read ({said})")


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


def _probe_open(path: Path, label: str, size: int, container: av.container.InputContainer,
                max_pixels: int) -> ProbeInfo:
    fmt = container.format.name
    if fmt in _PLAYLIST_FORMATS:
        raise ProbeError("unsafe_input", f"{label}: {_PLAYLIST_FORMATS[fmt]}, not a video file")
    if fmt.endswith("_pipe") or fmt == "image2":   # png_pipe, jpeg_pipe, ...: FFmpeg's still-image readers
        codec = container.streams.video[0].codec_context.name if container.streams.video else fmt[:-5]
        raise ProbeError("not_a_video", f"{label}: a still image ({codec}), not a video")
    if not container.streams.video:
        audio = [_codec_name(s) for s in container.streams.audio if s.codec_context]
        # FFmpeg reads some random files as raw audio: believe it only for a real audio file
        if audio and (_container_signature(path) or _audio_signature(path)):
            raise ProbeError("no_video_stream",
                             f"{label}: audio only ({', '.join(audio)}), no video stream")
        raise ProbeError("not_a_video", f"{label}: no video or audio stream "
                                        f"(FFmpeg read it as '{fmt}')")
    if all(_is_cover_art(s) for s in container.streams.video):
        # an audio file with album art (MP3, M4A): its one "video frame" is a picture, not a video
        audio = [_codec_name(s) for s in container.streams.audio if s.codec_context]
        art = container.streams.video[0]
        cover = f"a cover picture ({_codec_name(art) if art.codec_context else 'unknown codec'})"
        raise ProbeError("no_video_stream", f"{label}: " + (f"audio only ({', '.join(audio)}) with {cover}" if audio
                                                             else f"only {cover}") + ", no video stream")
    stream = main_video_stream(container)
    cc = stream.codec_context
    if cc is None:
        raise ProbeError("unsupported_codec", f"{label}: the video codec is not supported "
                                              f"(no decoder for it in this FFmpeg build)")
    if cc.width * cc.height > max_pixels:
        raise ProbeError("too_large", f"{label}: the video's pictures are {cc.width}x{cc.height}, over the limit "
                                      f"of {max_pixels} pixels (decode.max_pixels)")
    cc.options = {**cc.options, "max_pixels": str(max_pixels)}   # a header that lied is caught by the decoder
    _check_index_within_file(path, label, size, stream)
    first, deltas = _scan_start(path, label, container, stream, max_pixels)

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
    dw, dh = display_size(width, height, float(sar), rotation)
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
    return next((s for s in videos if not _is_cover_art(s)), videos[0])


def _is_cover_art(stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _check_index_within_file(path: Path, label: str, size: int, stream: av.video.stream.VideoStream) -> None:
    """A sample table that points past the end of the file means the file was cut short.

    (MP4 with the index at the front opens fine when truncated; only this shows it.)"""
    entries = stream.index_entries
    n = len(entries)
    if n == 0:
        return
    last = max((entries[i] for i in range(max(0, n - 64), n)), key=lambda e: e.pos)
    end = last.pos + last.size
    if last.pos >= 0 and end > size:
        raise ProbeError("truncated", f"{label}: file is truncated: its index needs {end} bytes, "
                                      f"the file has {size} ({100 * size / end:.0f}%)")


def _scan_start(path: Path, label: str, container, stream, max_pixels: int) -> tuple[av.VideoFrame, np.ndarray]:
    """Decode the first frame, and collect the PTS of the first few hundred packets on the way.

    Returns the frame and the PTS steps between consecutive frames in presentation order."""
    stream.codec_context.thread_type = "AUTO"
    first = None
    pts: list[int] = []
    # read to its end without a packet holding data, FFmpeg saying nothing wrong: empty, not damaged
    data = ended = False
    try:
        for packet in container.demux(stream):
            data = data or packet.size > 0
            if packet.pts is not None:
                pts.append(packet.pts)
            if first is None:
                first = next(iter(packet.decode()), None)
            if (first is not None and len(pts) >= _VFR_PACKETS) or len(pts) > _FIRST_FRAME_PACKETS:
                break
        else:
            ended = True
        if first is None:  # drain the decoder: a tiny file may hold a single frame
            first = next(iter(stream.codec_context.decode(None)), None)
    except av.error.DecoderNotFoundError as exc:
        raise ProbeError("unsupported_codec", f"{label}: the video codec is not supported "
                                              f"({_ffmpeg_text(exc)})") from exc
    except av.FFmpegError as exc:
        if first is None:
            log = _ffmpeg_log_of_failure(path, max_pixels)
            if ended and not data and not log:
                raise _empty_video(label, container) from exc
            raise _refused_size(label, log, max_pixels) or ProbeError(
                "truncated", f"{label}: the video data cannot be decoded: truncated or "
                             f"damaged ({_ffmpeg_says(log) or _ffmpeg_text(exc)})") from exc
        # damaged later on: the decode pass will find out where; judge the rate from what was read
    if first is None:
        log = _ffmpeg_log_of_failure(path, max_pixels)
        if ended and not data and not log:
            raise _empty_video(label, container)
        said = _ffmpeg_says(log)
        raise _refused_size(label, log, max_pixels) or ProbeError(
            "truncated", f"{label}: no video frame could be decoded: truncated or damaged"
                         + (f" (FFmpeg: {said})" if said else ""))
    ordered = np.unique(np.asarray(pts, dtype=np.int64))
    # B-frame reordering can leave the last few PTS of the window missing: drop that tail
    return first, np.diff(ordered[: max(0, len(ordered) - 8)])


def _empty_video(label: str, container) -> ProbeError:
    """A video track with no frames in it (a recorder that wrote only the sound): no video, where
    decoding's end-of-file would have said "truncated or damaged"."""
    audio = [_codec_name(s) for s in container.streams.audio if s.codec_context]
    return ProbeError("no_video_stream", f"{label}: its video stream holds no frames"
                                         + (f" (audio only: {', '.join(audio)})" if audio else ""))


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

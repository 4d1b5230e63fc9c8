"""Write clip files for frame ranges of one source video: stream copy (`remux`) or H.264 (`encode`).

All clips of a video are written in one pass over the file: clips are grouped by position, each
group is reached with one seek, and every packet (remux) or frame (encode) read is handed to the
clips that need it. Files appear under their final names only when complete (temp name in the
same folder, then an atomic rename).

Remux copies packets, so a clip file starts at the keyframe at or before `start_frame`, and a clip
that stops inside a run of B-frames must keep the next reference frame (decoded before them,
displayed after the clip's last frame). In MP4 an edit list hides both: the frames before
`start_frame` get negative timestamps (the muxer then writes an edit list starting at 0) and the
edit's end is moved back before the trailing reference frame (patched after muxing). Players
and FFmpeg-based readers (PyAV, ffprobe, decord) then see exactly [start_frame, end_frame);
decord's len() still counts the hidden samples, so use the library's frame counts, not len().
Matroska/WebM have no such edit list: the file shows those frames, and the result says so:
`n_frames` in all, of which `file_start_frame` come before the clip (the rest after it).

Encode decodes from the keyframe and encodes exactly [start_frame, end_frame) with libx264
(yuv420p, `clips.encode_crf`), optionally resized (`encode_width`) and resampled (`encode_fps`,
frames dropped or repeated by PTS). Encode mode writes video only.
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from pipeline.ingest.config import ClipsConfig
from pipeline.ingest.decode import PresentationTimes
from pipeline.ingest.probe import main_video_stream
from pipeline.library.layout import TMP_SUFFIX
from trainer.diskfull import NO_SPACE_ERRNOS

MP4_VIDEO = {"h264", "hevc", "av1", "mpeg4"}
MP4_AUDIO = {"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}
WEBM_VIDEO = {"vp8", "vp9", "av1"}
WEBM_AUDIO = {"opus", "vorbis"}
_SEEK_GAP_S = 10.0     # clips further apart than this are reached by seeking, not by reading on
_SEEK_LEAD_S = 1.0     # seek this much before a group so its first audio packets are read too
_LOOKAHEAD_S = 5.0     # a clip starts watching packets this long before its start (A/V interleave)


class ClipFileError(Exception):
    """A clip file could not be written; the message says which clip and why."""


class ClipRange(NamedTuple):
    start_frame: int    # 0-based decode-order frame index
    end_frame: int      # exclusive
    out_stem: Path      # file to write, without extension (the container decides it)

    @property
    def clip_id(self) -> str:
        return Path(self.out_stem).name


@dataclass(frozen=True)
class ClipFileResult:
    path: str
    n_frames: int           # frames an FFmpeg-based reader decodes (MP4: exactly end - start)
    file_start_frame: int   # of those, how many come before the clip's start_frame (MP4: 0)
    width: int
    height: int
    bytes: int


def write_clips(src: str | os.PathLike, clips: Sequence[ClipRange | tuple[int, int, Path]],
                frame_times_s: Sequence[float] | None, cfg: ClipsConfig,
                on_written: Callable[[int, int], None] | None = None) -> list[ClipFileResult]:
    """Write one file per clip (`cfg.mode`: remux or encode) in one pass over `src`.

    Results come in `clips` order; `on_written(done, total)` is told after each run of nearby clips. `frame_times_s` are the PTS in seconds (as read, no offset
    removed) of every frame the decode pass saw, in order: they tie frame indices to packets.
    Without them (None) the packet PTS are scanned once first."""
    mode = cfg.mode
    if mode not in ("remux", "encode"):
        raise ValueError(f"clip mode {mode!r}: write_clips handles 'remux' and 'encode'")
    clips = [ClipRange(int(c[0]), int(c[1]), Path(c[2])) for c in clips]
    if not clips:
        return []
    for c in clips:
        c.out_stem.parent.mkdir(parents=True, exist_ok=True)
    if frame_times_s is None:
        frame_times_s = _scan_frame_times(src)
    with av.open(str(src)) as container:
        vstream = main_video_stream(container)
        seconds = np.asarray(frame_times_s, dtype=np.float64)
        frame_pts = np.rint(seconds / float(vstream.time_base)).astype(np.int64).tolist()
        plans = [_plan(c, frame_pts, vstream) for c in clips]
        # without an index (MPEG-TS, raw streams) a seek may land between keyframes: read through
        seekable = len(vstream.index_entries) > 0
        results: dict[str, ClipFileResult] = {}
        try:
            for group in (_groups(plans) if seekable else [plans]):
                if seekable:
                    _seek_before(container, vstream, min(group, key=lambda p: p.start_pts))
                if mode == "remux":
                    _remux_group(container, group)
                else:
                    _encode_group(container, group, cfg)
                for plan in group:
                    results[plan.clip.out_stem] = plan.result
                if on_written is not None:
                    on_written(len(results), len(plans))
        except OSError as e:
            if e.errno not in NO_SPACE_ERRNOS:
                raise
            # a full disk names the temp file being written: say the clip file it was to become
            raise OSError(e.errno, e.strerror, _final_name(plans, e.filename)) from None
        finally:
            for plan in plans:
                plan.discard()
    return [results[c.out_stem] for c in clips]


def _final_name(plans: list[_Plan], filename: object) -> str | None:
    """The clip file a writer's temp file `filename` was to become (else `filename` as given)."""
    for plan in plans:
        if plan.writer is not None and str(plan.writer.tmp) == str(filename):
            return str(plan.writer.final)
    return None if filename is None else str(filename)


# --------------------------------------------------------------------------------------------
# Planning


@dataclass
class _Plan:
    """One clip on its way to disk: its target PTS range and its open writer, if any."""

    clip: ClipRange
    start_pts: int                  # PTS of start_frame, stream time base
    end_pts: int                    # PTS of end_frame - 1 (last frame in the clip)
    start_s: float
    end_s: float                    # time just after the last frame
    writer: _Writer | None = None
    result: ClipFileResult | None = None
    # remux state
    key_pts: int | None = None      # keyframe the file starts at
    pending: list = field(default_factory=list)   # packets past end_pts kept in case a B-frame needs them
    audio_queue: list = field(default_factory=list)
    video_shift: int = 0            # subtracted from video timestamps (stream time base)
    origin_s: float = 0.0           # the same shift in seconds, for audio
    n_written: int = 0
    n_before: int = 0               # written frames before start_frame
    n_after: int = 0                # written frames after the clip's last frame
    first_after_pts: int | None = None  # PTS of the earliest of those
    video_done: bool = False
    audio_done: bool = False

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _plan(clip: ClipRange, frame_pts: list[int], vstream) -> _Plan:
    n = len(frame_pts)
    if not 0 <= clip.start_frame < clip.end_frame <= n:
        raise ClipFileError(f"clip {clip.clip_id}: frame range [{clip.start_frame}, {clip.end_frame}) "
                            f"is not inside the video's {n} frames")
    tb = vstream.time_base
    start_pts, end_pts = frame_pts[clip.start_frame], frame_pts[clip.end_frame - 1]
    if clip.end_frame < n:
        after = frame_pts[clip.end_frame]
    else:
        rate = vstream.guessed_rate or vstream.average_rate or Fraction(25)
        after = end_pts + max(1, round(1 / (rate * tb)))
    return _Plan(clip, start_pts, end_pts, float(start_pts * tb), float(after * tb))


def _scan_frame_times(src: str | os.PathLike) -> list[float]:
    """Every video packet's PTS (seconds) in presentation order (= decode-order frame indices)."""
    with av.open(str(src)) as container:
        vstream = main_video_stream(container)
        pts = sorted(p.pts for p in container.demux(vstream) if p.pts is not None)
        return [float(p * vstream.time_base) for p in pts]


def _groups(plans: list[_Plan]) -> list[list[_Plan]]:
    """Clips close enough to be read in one run; each run starts with a seek."""
    ordered = sorted(plans, key=lambda p: p.start_pts)
    groups: list[list[_Plan]] = []
    reach = -math.inf
    for plan in ordered:
        if groups and plan.start_s - reach <= _SEEK_GAP_S:
            groups[-1].append(plan)
        else:
            groups.append([plan])
        reach = max(reach, plan.end_s)
    return groups


def _seek_before(container, vstream, plan: _Plan) -> None:
    target = plan.start_pts - round(_SEEK_LEAD_S / vstream.time_base)
    container.seek(max(target, vstream.start_time or 0), stream=vstream, backward=True)


# --------------------------------------------------------------------------------------------
# Output files


def can_stream_copy(video_codec: str) -> bool:
    """Whether clips of this video codec (its canonical name) can be stream-copied into a file:
    Matroska holds the most, but not all (FLV1, WMV, H.263, GIF, PNG, QuickTime RLE, ...)."""
    return video_codec in MP4_VIDEO or video_codec in WEBM_VIDEO or video_codec in _muxable("matroska")


def _container_for(video_codec: str, audio_codec: str | None) -> tuple[str, str, bool]:
    """(FFmpeg muxer, file extension, whether the audio goes in) that can hold these codecs without
    re-encoding. Audio that no such container holds (PCM mu-law, IMA ADPCM, WMA, ...) is left out:
    the clip keeps its video exactly. Raises ClipFileError when no container holds the video
    (`can_stream_copy`: the caller encodes such clips instead)."""
    if video_codec in MP4_VIDEO and (audio_codec is None or audio_codec in MP4_AUDIO):
        return "mp4", ".mp4", audio_codec is not None
    if video_codec in WEBM_VIDEO and (audio_codec is None or audio_codec in WEBM_AUDIO):
        return "webm", ".webm", audio_codec is not None
    if not can_stream_copy(video_codec):
        raise ClipFileError(f"no container can hold a stream copy of {video_codec!r} video: use clips.mode=encode")
    if audio_codec is not None and audio_codec not in _muxable("matroska"):
        return _container_for(video_codec, None)
    return "matroska", ".mkv", audio_codec is not None


@functools.cache
def _muxable(fmt: str) -> frozenset[str]:
    """Canonical names of the codecs FFmpeg's `fmt` muxer accepts: the check PyAV makes when a
    stream is added (`supported_codecs` names encoders and decoders, e.g. libdav1d for av1)."""
    with av.open(io.BytesIO(), "w", format=fmt) as out:
        names = out.supported_codecs
    canonical = set()
    for name in names:
        for mode in ("r", "w"):
            try:
                canonical.add(av.Codec(name, mode).canonical_name)
                break
            except (av.codec.codec.UnknownCodecError, ValueError):
                continue
    return frozenset(canonical)


class _Writer:
    """An output container under a temp name; `commit` renames it into place."""

    def __init__(self, stem: Path, fmt: str, ext: str) -> None:
        self.final = stem.with_name(stem.name + ext)
        self.tmp = stem.with_name(f".{stem.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
        options = {"movflags": "+faststart"} if fmt == "mp4" else {}
        self.fmt = fmt
        self.container = av.open(str(self.tmp), "w", format=fmt, options=options)
        self.video = None
        self.audio = None

    def commit(self, fix: Callable[[Path], None] | None = None) -> int:
        """Close, apply `fix` to the closed temp file, then move it into place; returns its size."""
        self.container.close()
        if fix is not None:
            fix(self.tmp)
        os.replace(self.tmp, self.final)
        return self.final.stat().st_size

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:   # closing a half-written file may fail; it is deleted anyway
            pass
        self.tmp.unlink(missing_ok=True)


def _copy_packet(packet: av.Packet, stream, shift: int) -> av.Packet:
    """A copy of `packet` for `stream`, timestamps moved back by `shift` (muxing consumes packets)."""
    copy = av.Packet(packet)
    copy.pts = packet.pts - shift
    copy.dts = None if packet.dts is None else packet.dts - shift
    copy.duration = packet.duration
    copy.time_base = packet.time_base
    copy.is_keyframe = packet.is_keyframe
    copy.stream = stream
    return copy


# --------------------------------------------------------------------------------------------
# Remux


def _remux_group(container, group: list[_Plan]) -> None:
    vstream = main_video_stream(container)
    astream = container.streams.audio[0] if container.streams.audio else None
    if vstream.codec_context is None:
        raise ClipFileError(f"{container.name}: video codec has no decoder here, cannot name it for muxing")
    vcodec = vstream.codec_context.codec.canonical_name
    acodec = astream.codec_context.codec.canonical_name if astream and astream.codec_context else None
    if astream is not None and acodec is None:
        astream = None                         # audio without a known codec: video only
    fmt, ext, with_audio = _container_for(vcodec, acodec)
    if not with_audio:
        astream = None
    for plan in group:
        plan.audio_done = astream is None
    waiting = sorted(group, key=lambda p: p.start_pts)[::-1]   # next to start at the end
    active: list[_Plan] = []                   # clips near the read position, being written
    left = len(group)
    recent: list[av.Packet] = []               # video packets since the second-to-last keyframe
    streams = [vstream] + ([astream] if astream is not None else [])
    for packet in container.demux(*streams):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:
            continue                           # end-of-stream flush packet
        now = float(stamp * packet.time_base)
        while waiting and waiting[-1].start_s - _LOOKAHEAD_S <= now:
            active.append(waiting.pop())       # only nearby clips look at packets: O(packets)
        if packet.stream.type == "video":
            if packet.is_keyframe:             # keep the previous GOP and start this one
                last_keys = [i for i, p in enumerate(recent) if p.is_keyframe]
                if last_keys:
                    del recent[:last_keys[-1]]
            recent.append(packet)
            for plan in active:
                if not plan.video_done:
                    _remux_video(plan, packet, recent, vstream, astream, fmt, ext)
                elif not plan.audio_done and now > plan.end_s + _SEEK_GAP_S:
                    plan.audio_done = True     # the audio track ended early: stop waiting for it
        else:
            for plan in active:
                if not plan.audio_done:
                    _remux_audio(plan, packet, vstream)
        for plan in [p for p in active if p.writer is not None and p.video_done and p.audio_done]:
            _finish_remux(plan, vstream)
            active.remove(plan)
            left -= 1
        if left == 0:
            return
    for plan in active + waiting:              # end of file
        if plan.writer is None:
            raise ClipFileError(f"clip {plan.clip.clip_id}: no packets found for frames "
                                f"[{plan.clip.start_frame}, {plan.clip.end_frame})")
        _finish_remux(plan, vstream)


def _remux_video(plan: _Plan, packet: av.Packet, recent: list, vstream, astream, fmt: str,
                 ext: str) -> None:
    if packet.pts is None:
        return
    if plan.writer is None:
        if packet.pts < plan.start_pts:
            return
        # The first packet at or after the start: the file begins at the last keyframe at or
        # before it (with open GOPs the newest keyframe may lie after the start in display order).
        keys = [p for p in recent if p.is_keyframe and p.pts is not None and p.pts <= plan.start_pts]
        if not keys:
            raise ClipFileError(f"clip {plan.clip.clip_id}: no keyframe at or before frame "
                                f"{plan.clip.start_frame} (damaged stream?)")
        plan.key_pts = keys[-1].pts
        _open_remux(plan, vstream, astream, fmt, ext)
        for p in recent[recent.index(keys[-1]):]:
            _route_video(plan, p)
        return
    if packet.dts is not None and packet.dts > plan.end_pts:
        plan.video_done = True                 # nothing at or before end_pts can follow
        plan.pending.clear()
        return
    _route_video(plan, packet)


def _route_video(plan: _Plan, packet: av.Packet) -> None:
    if packet.pts < plan.key_pts:
        return                                 # leading picture of an open GOP: before the file starts
    if packet.pts > plan.end_pts:
        plan.pending.append(packet)            # written only if a clip frame follows in decode order
        return
    for p in plan.pending + [packet]:
        plan.writer.container.mux(_copy_packet(p, plan.writer.video, plan.video_shift))
        plan.n_written += 1
        plan.n_before += p.pts < plan.start_pts
        if p.pts > plan.end_pts:
            plan.n_after += 1
            plan.first_after_pts = min(p.pts, plan.first_after_pts or p.pts)
    plan.pending.clear()


def _open_remux(plan: _Plan, vstream, astream, fmt: str, ext: str) -> None:
    writer = _Writer(plan.clip.out_stem, fmt, ext)
    plan.writer = writer
    # opaque: copy the codec parameters as they are, without needing an encoder for the codec
    writer.video = writer.container.add_stream_from_template(vstream, opaque=True)
    writer.audio = writer.container.add_stream_from_template(astream, opaque=True) if astream is not None else None
    # MP4: the clip's first frame at t=0 and earlier frames negative -> edit list hides them.
    # Matroska cannot hide them: start the file at the keyframe instead.
    origin = plan.start_pts if fmt == "mp4" else plan.key_pts
    plan.video_shift = origin
    plan.origin_s = float(origin * vstream.time_base)
    for p in plan.audio_queue:
        _mux_audio(plan, p)
    plan.audio_queue.clear()


def _remux_audio(plan: _Plan, packet: av.Packet, vstream) -> None:
    if packet.pts is None:
        return
    t0 = float(packet.pts * packet.time_base)
    t1 = t0 + float((packet.duration or 0) * packet.time_base)
    if t0 >= plan.end_s:
        plan.audio_done = True
        return
    if t1 <= plan.start_s:
        return
    if plan.writer is None:
        plan.audio_queue.append(packet)
    else:
        _mux_audio(plan, packet)


def _mux_audio(plan: _Plan, packet: av.Packet) -> None:
    shift = round(Fraction(plan.origin_s).limit_denominator(10**9) / packet.time_base)
    plan.writer.container.mux(_copy_packet(packet, plan.writer.audio, shift))


def _finish_remux(plan: _Plan, vstream) -> None:
    if plan.n_written == 0:
        raise ClipFileError(f"clip {plan.clip.clip_id}: no video packets in frames "
                            f"[{plan.clip.start_frame}, {plan.clip.end_frame})")
    hidden = 0
    trim = None
    if plan.writer.fmt == "mp4":
        hidden = plan.n_before                 # the muxer's edit list starts at start_frame
        if plan.n_after:                       # ... and we end it before the trailing references
            end_s = float((plan.first_after_pts - plan.start_pts) * vstream.time_base)
            trim = functools.partial(_end_video_edit, end_s=end_s)
            hidden += plan.n_after
    size = plan.writer.commit(trim)
    cc = vstream.codec_context
    plan.result = ClipFileResult(
        path=str(plan.writer.final), n_frames=plan.n_written - hidden,
        file_start_frame=plan.n_before - (plan.n_before if plan.writer.fmt == "mp4" else 0),
        width=cc.width, height=cc.height, bytes=size)
    plan.writer = None


# --------------------------------------------------------------------------------------------
# Encode


def _encode_group(container, group: list[_Plan], cfg: ClipsConfig) -> None:
    vstream = main_video_stream(container)
    vstream.codec_context.thread_type = "AUTO"
    tb = vstream.time_base
    vstream.codec_context.flush_buffers()     # after a seek
    pending = sorted(group, key=lambda p: p.start_pts)
    encoders: dict[Path, _Encoder] = {}
    rate = vstream.guessed_rate or vstream.average_rate or Fraction(25)
    times = PresentationTimes(vstream.codec_context, float(tb), float(1 / rate))   # as the decode pass timed them

    def frames():
        for frame in container.decode(vstream):
            yield from times.push(frame)
        yield from times.flush()

    for frame, t in frames():
        pts = round(t / tb)
        for plan in pending:
            if plan.start_pts <= pts <= plan.end_pts:
                enc = encoders.get(plan.clip.out_stem)
                if enc is None:
                    enc = encoders[plan.clip.out_stem] = _Encoder(plan, vstream, cfg, frame)
                enc.add(frame, pts - plan.start_pts, float((pts - plan.start_pts) * tb))
        for plan in [p for p in pending if pts >= p.end_pts]:
            _finish_encode(plan, encoders.pop(plan.clip.out_stem, None))
            pending.remove(plan)
        if not pending:
            return
    for plan in pending:
        _finish_encode(plan, encoders.pop(plan.clip.out_stem, None))


def _finish_encode(plan: _Plan, enc: _Encoder | None) -> None:
    if enc is None:
        raise ClipFileError(f"clip {plan.clip.clip_id}: no frames decoded in "
                            f"[{plan.clip.start_frame}, {plan.clip.end_frame})")
    plan.result = enc.finish()
    plan.writer = None


class _Encoder:
    """libx264 for one clip: frames in, optionally resampled to a fixed rate by PTS."""

    def __init__(self, plan: _Plan, vstream, cfg: ClipsConfig, first: av.VideoFrame) -> None:
        self.plan = plan
        src_w, src_h = vstream.codec_context.width, vstream.codec_context.height
        sar = Fraction(vstream.sample_aspect_ratio or 1) or Fraction(1)
        if cfg.encode_width:            # at most that wide: a smaller source is not enlarged
            self.width = _even(min(cfg.encode_width, src_w * sar))
            self.height = _even(self.width * src_h / (src_w * sar))
            sar = Fraction(1)                  # resized to square pixels at the display aspect
        else:
            self.width, self.height = _even(src_w), _even(src_h)
        self.fps = Fraction(cfg.encode_fps).limit_denominator(1001) if cfg.encode_fps else None
        rate = self.fps or (vstream.guessed_rate or vstream.average_rate or Fraction(25))
        self.writer = plan.writer = _Writer(plan.clip.out_stem, "mp4", ".mp4")
        stream = self.writer.container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.codec_context.sample_aspect_ratio = sar
        stream.options = {"crf": str(cfg.encode_crf), "preset": cfg.encode_preset}
        if self.fps is None:                   # keep the source timestamps (VFR stays VFR)
            stream.codec_context.time_base = vstream.time_base
        else:
            stream.codec_context.time_base = 1 / self.fps
        rotation = round(first.rotation)       # copied so players turn the clip like the source
        if rotation:
            stream.set_display_rotation(rotation)
        self.stream = stream
        self.src_tb = vstream.time_base
        self.last: av.VideoFrame | None = None
        self.n_out = 0

    def add(self, frame: av.VideoFrame, rel_pts: int, t: float) -> None:
        """`rel_pts`: PTS from the clip start (source time base); `t`: the same in seconds."""
        if self.fps is None:
            self._encode(frame, rel_pts)
            return
        # emit every output tick before this frame's time with the previous frame (hold)
        while self.last is not None and self.n_out / self.fps < t - 1e-6:
            self._encode(self.last, self.n_out)
        self.last = frame

    def finish(self) -> ClipFileResult:
        if self.fps is not None and self.last is not None:
            total = max(1, round((self.plan.end_s - self.plan.start_s) * self.fps))
            while self.n_out < total:
                self._encode(self.last, self.n_out)
        for packet in self.stream.encode(None):
            self.writer.container.mux(packet)
        size = self.writer.commit()
        return ClipFileResult(path=str(self.writer.final),
                              n_frames=self.n_out, file_start_frame=0, width=self.width,
                              height=self.height, bytes=size)

    def _encode(self, frame: av.VideoFrame, pts: int) -> None:
        out = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        out.pts = pts
        out.time_base = self.stream.codec_context.time_base
        for packet in self.stream.encode(out):
            self.writer.container.mux(packet)
        self.n_out += 1


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


# --------------------------------------------------------------------------------------------
# MP4 edit list


def _end_video_edit(path: Path, end_s: float) -> None:
    """End the video track's edit at `end_s` (presentation time from the file's start).

    FFmpeg's muxer always ends the edit after the last frame; a stream copy that stops inside a
    run of B-frames holds a reference frame that displays later, and this hides it. Patches the
    last `elst` entry and the track/movie durations in place (no size changes)."""
    with open(path, "r+b") as f:
        moov_at, moov = _read_top_box(f, b"moov")
        top = {kind: body for kind, _, body, _ in _boxes(moov, 8, len(moov))}
        mvhd = top[b"mvhd"]
        wide = moov[mvhd] == 1                                  # box version 1: 64-bit times
        movie_scale = _uint(moov, mvhd + (20 if wide else 12), False)
        track_durations, patched = [], False
        for kind, _, body, end in _boxes(moov, 8, len(moov)):
            if kind != b"trak":
                continue
            children = {k: (b, e) for k, _, b, e in _boxes(moov, body, end)}
            tkhd = children[b"tkhd"][0]
            tkhd_duration = tkhd + (28 if moov[tkhd] == 1 else 20)
            if _is_video_trak(moov, children) and b"edts" in children:
                elst = next(b for k, _, b, _ in _boxes(moov, *children[b"edts"]) if k == b"elst")
                elst_wide = moov[elst] == 1
                step = 20 if elst_wide else 12
                count = _uint(moov, elst + 4, False)
                before = sum(_uint(moov, elst + 8 + i * step, elst_wide) for i in range(count - 1))
                duration = max(1, math.floor(end_s * movie_scale))   # last entry: the media
                _put(moov, elst + 8 + (count - 1) * step, elst_wide, duration)
                _put(moov, tkhd_duration, moov[tkhd] == 1, before + duration)
                patched = True
            track_durations.append(_uint(moov, tkhd_duration, moov[tkhd] == 1))
        if not patched:   # FFmpeg's mp4 muxer writes one whenever B-frames delay the start
            raise ClipFileError(f"{path}: the video track has no edit list to end early")
        _put(moov, mvhd + (24 if wide else 16), wide, max(track_durations))
        f.seek(moov_at)
        f.write(moov)


def _uint(buf: bytearray, at: int, wide: bool) -> int:
    return struct.unpack_from(">Q" if wide else ">I", buf, at)[0]


def _put(buf: bytearray, at: int, wide: bool, value: int) -> None:
    struct.pack_into(">Q" if wide else ">I", buf, at, value)


def _boxes(buf: bytearray, start: int, end: int):
    """(type, box start, payload start, box end) of the ISO-BMFF boxes in buf[start:end]."""
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[start:start + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", buf[start + 8:start + 16])[0], 16
        elif size == 0:
            size = end - start
        yield kind, start, start + header, start + size
        start += size


def _read_top_box(f, kind: bytes) -> tuple[int, bytearray]:
    f.seek(0)
    offset = 0
    while header := f.read(16):
        size, found = struct.unpack(">I4s", header[:8])
        if size == 1:
            size = struct.unpack(">Q", header[8:16])[0]
        if found == kind:
            f.seek(offset)
            return offset, bytearray(f.read(size))
        offset += size
        f.seek(offset)
    raise ClipFileError(f"{f.name}: no '{kind.decode()}' box")


def _is_video_trak(moov: bytearray, children: dict) -> bool:
    mdia = children.get(b"mdia")
    if mdia is None:
        return False
    for kind, _, body, _ in _boxes(moov, *mdia):
        if kind == b"hdlr":
            return moov[body + 8:body + 12] == b"vide"
    return False

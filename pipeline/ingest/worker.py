"""Everything ingest does for one source, as a plain function (Ray-free, so tests call it directly).

fetch -> content hash -> claim (skip duplicates) -> probe -> one decode pass feeding shot detection
(and every other frame analyzer) -> clip planning -> clip files -> rows for the library tables.
A failure at any stage becomes an `errors` row naming the stage; nothing raises out of here.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av

from pipeline.ingest.analysis import BackgroundAnalyzers
from pipeline.ingest.clipfiles import can_stream_copy, write_clips
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.decode import DecodeError, decode_pass
from pipeline.ingest.plan import clip_id, frame_end_times, plan_clips
from pipeline.ingest.probe import ProbeError, display_size, probe
from pipeline.ingest.progress import DecodeProgress, clip_share
from pipeline.ingest.result import NO_SPACE, NoSpace, SourceResult, error_result
from pipeline.ingest.result import source_row as _source_row
from pipeline.ingest.shots import ShotDetector, detect_shots, split_at
from pipeline.ingest.signals.analyzers import clip_signals, make_analyzers
from pipeline.ingest.sources import SourceError, StagingCache, content_hash, local_file_problem
from pipeline.library.layout import media_dir, utcnow
from trainer.diskfull import NO_SPACE_ERRNOS


class SourceFailure(Exception):
    """A source failed at a named stage with a machine-readable kind."""

    def __init__(self, stage: str, kind: str, message: str):
        super().__init__(message)
        self.stage, self.kind, self.message = stage, kind, message


def ingest_source(uri: str, cfg: IngestConfig, lib_root: str | Path,
                  claim: Callable[[str, str], str | None] | None = None,
                  on_stage: Callable[[str, str | None], None] | None = None,
                  on_progress: Callable[[float], None] | None = None) -> SourceResult:
    """Ingest one source; `claim(video_id, uri)` returns this source's outcome when it is not the
    one to ingest that content (`duplicate`: another worker or an earlier run owns it; `removed`:
    it was taken out with `recap remove`), None when it is (see RunClaims). `on_stage(stage,
    video_id)` is told where the work is (the sandbox names it when a budget runs out);
    `on_progress(share)` how much of it is done (see pipeline.ingest.progress).

    Messages name the source as given (the URL of a remote one, never its staged copy)."""
    lib_root = Path(lib_root)
    video_id: str | None = None
    stage = "fetch"
    path: Path | None = None

    def enter(name: str) -> None:
        nonlocal stage
        stage = name
        if on_stage is not None:
            on_stage(name, video_id)

    try:
        enter("fetch")
        with StagingCache(Path(cfg.sources.cache_dir or lib_root / ".cache"),
                          int(cfg.sources.cache_max_gb * 1e9)) as cache:
            try:
                path = cache.fetch(uri)
            except SourceError as e:
                raise SourceFailure("fetch", e.kind, str(e)) from e
            # the file's type before its bytes: a FIFO or a device would block or never end
            problem = local_file_problem(path)
            if problem is not None:
                raise SourceFailure("fetch", problem[0], f"{uri}: {problem[1]}")
            enter("hash")
            try:
                video_id = content_hash(path)
            except PermissionError as e:
                raise SourceFailure("hash", "permission_denied", f"cannot read {uri}: permission denied") from e
            except SourceError as e:
                raise SourceFailure("hash", e.kind, str(e)) from e
            taken = claim(video_id, uri) if claim is not None else None
            if taken is not None:    # duplicate, or removed
                return SourceResult(uri, taken, video_id, {"sources": [_source_row(uri, video_id, taken)]})
            return _ingest_file(uri, path, video_id, cfg, lib_root, enter, on_progress)
    except SourceFailure as e:
        return error_result(uri, video_id, e.stage, e.kind, _named(e.message, path, uri))
    except NoSpace as e:     # retried on rerun, once there is room
        return error_result(uri, video_id, stage, NO_SPACE, str(e), outcome="failed")
    except Exception as e:  # noqa: BLE001 - an unexpected failure is recorded and retried on rerun
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f" ({Path(tb.filename).name}:{tb.lineno})" if tb else ""
        return error_result(uri, video_id, stage, type(e).__name__, _named(f"{e}{where}", path, uri),
                            outcome="failed")


def _named(message: str, path: Path | None, uri: str) -> str:
    """`message` with a staged copy's path replaced by the source's URL."""
    return message.replace(str(path), uri) if path is not None and str(path) != uri else message


def _ingest_file(uri: str, path: Path, video_id: str, cfg: IngestConfig, lib_root: Path,
                 enter: Callable[[str], None], on_progress: Callable[[float], None] | None = None) -> SourceResult:
    t0 = time.perf_counter()
    enter("probe")
    try:
        info = probe(path, max_pixels=cfg.decode.max_pixels, name=uri)
    except ProbeError as e:
        raise SourceFailure("probe", e.kind, str(e)) from e

    shot_detector = ShotDetector(cfg.shots)
    signal_analyzers = make_analyzers(cfg.signals, (info.width, info.height))  # coded size: the crop's frame
    detail = (cfg.signals.detail_every_s, cfg.signals.detail_width) if signal_analyzers else None
    # The signals run on a low-priority thread of their own (see BackgroundAnalyzers): they use the
    # CPU time that decoding, shot detection and then clip writing leave idle.
    signals = BackgroundAnalyzers(signal_analyzers) if signal_analyzers else None
    analyzers: list[Any] = [shot_detector, signals] if signals else [shot_detector]
    if on_progress is not None:
        analyzers.append(DecodeProgress(on_progress, info.duration_s, cfg.clips.mode))
    try:
        enter("decode")
        try:
            decoded = decode_pass(path, cfg.decode, analyzers, detail=detail)
        except (DecodeError, av.error.FFmpegError) as e:
            # the file's fault; anything else is ours (a bug): recorded as `failed`, retried on rerun
            raise SourceFailure("decode", type(e).__name__, f"decoding failed: {e}") from e
        if decoded.n_frames == 0:
            raise SourceFailure("decode", "no_frames", "no video frame could be decoded")
        # a stream that switches picture size (stitched HLS renditions) is split there too
        shots = split_at(detect_shots(shot_detector, cfg.shots).shots, [first for first, _, _ in decoded.sizes[1:]])
        pts = decoded.pts_s
        ends = frame_end_times(pts)

        planned = plan_clips([(s.start_frame, s.end_frame) for s in shots], pts, cfg.clips)
        ids = [clip_id(video_id, c.start_frame, c.end_frame) for c in planned]
        files: list[Any] = [None] * len(planned)
        enter("clips")
        clips_cfg = cfg.clips
        if clips_cfg.mode == "remux" and (decoded.relabeled or not can_stream_copy(info.video_codec)):
            # its packets carry decode-order times (AVI with B-frames): a stream copy cut by them
            # would show frames out of order; or no container recap writes holds its codec (FLV1,
            # WMV, H.263, GIF, ...): so these clips are encoded, frame-exact
            clips_cfg = dataclasses.replace(clips_cfg, mode="encode")
        if clips_cfg.mode != "reference" and planned:
            out_dir = media_dir(lib_root, video_id)
            out_dir.mkdir(parents=True, exist_ok=True)
            written = None if on_progress is None else \
                lambda done, total: on_progress(clip_share(clips_cfg.mode, done, total))
            try:
                files = write_clips(path, [(c.start_frame, c.end_frame, out_dir / cid) for c, cid in zip(planned, ids)],
                                    pts, clips_cfg, on_written=written)
            except OSError as e:
                if e.errno not in NO_SPACE_ERRNOS:
                    raise
                # its clip files written so far would hold space no row names; the rerun writes them again
                for done in out_dir.iterdir():
                    if done.stem in ids:
                        done.unlink(missing_ok=True)
                raise NoSpace(f"cannot write {e.filename or out_dir}: {e.strerror}") from None
    finally:
        signals_error = signals.close() if signals else None
    if signals_error is not None:
        raise signals_error  # a bug, not bad input: recorded as `failed`, so a rerun retries it

    width, height = info.display_width, info.display_height
    size_starts = [first for first, _, _ in decoded.sizes]
    clip_rows = []
    for i, (c, cid, f) in enumerate(zip(planned, ids, files)):
        start_s, end_s = float(pts[c.start_frame]), float(ends[c.end_frame - 1])
        _, coded_w, coded_h = decoded.sizes[bisect.bisect_right(size_starts, c.start_frame) - 1]
        clip_w, clip_h = display_size(coded_w, coded_h, info.sample_aspect_ratio, info.rotation)
        clip_rows.append({
            "clip_id": cid, "video_id": video_id, "shot_index": c.shot_index, "clip_index": i,
            "start_frame": c.start_frame, "end_frame": c.end_frame, "n_frames": c.n_frames,
            "start_s": start_s, "end_s": end_s, "duration_s": end_s - start_s,
            "fps": c.n_frames / (end_s - start_s) if end_s > start_s else decoded.fps,
            "width": clip_w, "height": clip_h, "clip_mode": clips_cfg.mode,
            "path": str(Path(f.path).relative_to(lib_root)) if f else None,
            "file_start_frame": f.file_start_frame if f else None,
            "file_n_frames": f.n_frames if f else None,
            "file_bytes": f.bytes if f else None,
            "file_width": f.width if f else None,
            "file_height": f.height if f else None,
            **clip_signals(signal_analyzers, c.start_frame, c.end_frame),
        })
    shot_rows = [{
        "video_id": video_id, "shot_index": i, "start_frame": s.start_frame, "end_frame": s.end_frame,
        "start_s": float(pts[s.start_frame]), "end_s": float(ends[s.end_frame - 1]),
        "start_transition": s.start_transition, "end_transition": s.end_transition,
    } for i, s in enumerate(shots)]
    video_row = {
        "video_id": video_id, "uri": uri, "size_bytes": path.stat().st_size,
        "container": info.container, "video_codec": info.video_codec, "audio_codec": info.audio_codec,
        "pix_fmt": info.pix_fmt, "width": info.width, "height": info.height,
        "display_width": width, "display_height": height,
        "sample_aspect_ratio": info.sample_aspect_ratio, "rotation": info.rotation,
        "fps": decoded.fps, "is_vfr": decoded.is_vfr,
        "duration_s": float(ends[-1] - pts[0]), "n_frames": decoded.n_frames,
        "decode_warnings": decoded.warnings,
        "n_shots": len(shots), "n_clips": len(clip_rows),
        "ingest_s": time.perf_counter() - t0, "ingested_at": utcnow(),
    }
    rows = {"videos": [video_row], "shots": shot_rows, "clips": clip_rows,
            "sources": [_source_row(uri, video_id, "ingested")]}
    return SourceResult(uri, "ingested", video_id, rows, video_row["duration_s"])

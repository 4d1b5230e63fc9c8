"""Step 2 of an export: each selected clip gets a bucket (`buckets.py`), a split (whole source
videos go to train or val, chosen by a seeded hash) and a place in a shard. The plan is a pure
function of the library, the selection and the config; its hash (`fingerprint`) names the export."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.export.buckets import Assignment, BucketConfig, assign
from pipeline.export.config import ExportConfig, parse_size
from pipeline.export.render import RenderSpec
from pipeline.export.selection import Selection
from pipeline.library import Library
from pipeline.library.schema import SIGNAL_COLUMNS
from pipeline.library.tables import library_file
from trainer.shards import SampleMeta, fields_of, shard_name


@dataclass
class PlannedSample:
    spec: RenderSpec
    meta: SampleMeta
    est_bytes: int
    input_bytes: int          # bytes of the clip file read (0 in reference mode)


@dataclass
class ShardPlan:
    name: str
    split: str
    samples: list[PlannedSample]


@dataclass
class Plan:
    shards: list[ShardPlan]
    skipped: dict[str, int]                          # reason -> clips that fit no bucket
    fingerprint: str


def split_videos(clip_counts: dict[str, int], fraction: float, seed: int) -> dict[str, str]:
    """video_id -> 'train' | 'val'. Videos in a seeded hash order join val while each brings the
    val clip count closer to `fraction` of all clips; at least one video stays in train."""
    order = sorted(clip_counts, key=lambda v: hashlib.blake2b(f"{seed}:{v}".encode(), digest_size=8).digest())
    target = fraction * sum(clip_counts.values())
    split = {v: "train" for v in order}
    taken = 0
    for v in order[:-1]:
        if abs(taken + clip_counts[v] - target) < abs(taken - target):
            split[v] = "val"
            taken += clip_counts[v]
    return split


def _num(value: Any) -> Any:
    """A JSON-safe signal value (float32 noise rounded away, NaN as null)."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def _picture(row: dict[str, Any], video: dict[str, Any]) -> tuple[tuple[float, float, float, float], float, float]:
    """Bar crop as coded-frame fractions, and the cropped picture's display width and height."""
    rotation = int(video.get("rotation") or 0) % 360
    turned = rotation in (90, 270)
    # display size before rotation
    wu, hu = (row["height"], row["width"]) if turned else (row["width"], row["height"])
    cw, ch = video.get("width"), video.get("height")
    if cw and ch and video.get("display_width") and video.get("display_height"):
        # the crop is in the clip's own coded pixels: a stream that switches picture size (the
        # clip's display size is not the video's) scales the video's coded size by as much
        dwu, dhu = ((video["display_height"], video["display_width"]) if turned
                    else (video["display_width"], video["display_height"]))
        cw, ch = cw * wu / dwu, ch * hu / dhu
    box = (0.0, 0.0, 1.0, 1.0)
    if all(row.get(k) is not None for k in ("crop_x", "crop_y", "crop_w", "crop_h")) and cw and ch:
        x, y, w, h = row["crop_x"], row["crop_y"], row["crop_w"], row["crop_h"]
        if w > 0 and h > 0:
            box = (max(0.0, x / cw), max(0.0, y / ch), min(1.0, (x + w) / cw), min(1.0, (y + h) / ch))
    pw, ph = (box[2] - box[0]) * wu, (box[3] - box[1]) * hu
    fw = row.get("file_width")
    if row.get("clip_mode") == "encode" and fw and cw and fw < cw - 1:
        # ingest shrank the file (clips.encode_width, to square pixels at the display aspect): the
        # picture has only the file's pixels, and a bucket chosen from the source's would upscale
        pw, ph = pw * fw / wu, ph * fw / wu
    return box, *((ph, pw) if turned else (pw, ph))


def _frame_grid(row: dict[str, Any]) -> tuple[int, float]:
    """Frames and frame rate the clip is rendered from: its file's when ingest resampled it
    (`clips.encode_fps`: the file holds `file_n_frames` at a fixed rate over [start_s, end_s)), else
    the source's. Bucket windows index these frames."""
    n, fps = int(row["n_frames"]), float(row["fps"])
    stored = row.get("file_n_frames")
    duration = float(row["end_s"]) - float(row["start_s"])
    if row.get("path") and row.get("clip_mode") == "encode" and stored and stored != n and duration > 0:
        return int(stored), stored / duration
    return n, fps


def _video_facts(root: Path) -> dict[str, dict[str, Any]]:
    """video_id -> coded and display width/height and rotation, from the committed `videos/` table
    (a read-only open: it never touches a running ingest's files)."""
    rows = Library(root).read("videos", ["video_id", "width", "height", "display_width", "display_height",
                                         "rotation"]).to_pylist()
    return {r["video_id"]: r for r in rows}


def plan_export(root: str | Path, sel: Selection, buckets: BucketConfig, cfg: ExportConfig) -> Plan:
    """Bucket, split and shard the selection; deterministic for the same inputs and seed."""
    root = Path(root).resolve()
    videos = _video_facts(root)
    signal_names = [n for n, t, _ in SIGNAL_COLUMNS if n in sel.clips.column_names and not pa.types.is_list(t)]
    rows = sorted(sel.clips.to_pylist(), key=lambda r: r["clip_id"])
    skipped: dict[str, int] = {}
    assigned: list[tuple[dict[str, Any], Assignment, tuple[float, float, float, float]]] = []
    for row in rows:
        box, pw, ph = _picture(row, videos.get(row["video_id"], {}))
        a = assign(pw, ph, *_frame_grid(row), buckets)
        if isinstance(a, str):
            skipped[a] = skipped.get(a, 0) + 1
        else:
            assigned.append((row, a, box))
    counts: dict[str, int] = {}
    for row, _, _ in assigned:
        counts[row["video_id"]] = counts.get(row["video_id"], 0) + 1
    split_of = split_videos(counts, cfg.val_fraction, cfg.seed)

    by_split: dict[str, list[PlannedSample]] = {"train": [], "val": []}
    for row, a, box in assigned:
        split = split_of[row["video_id"]]
        by_split[split].append(_planned(root, row, a, box, split, sel, signal_names, buckets, cfg))
    shards: list[ShardPlan] = []
    for split, samples in by_split.items():
        random.Random(f"{cfg.seed}-{split}").shuffle(samples)    # mix buckets and videos in a shard
        for i, chunk in enumerate(_chunks(samples, parse_size(cfg.shard_size), cfg.max_samples_per_shard)):
            shards.append(ShardPlan(shard_name(split, i), split, chunk))
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(shard.name.encode())
        for s in shard.samples:
            digest.update(json.dumps(fields_of(s.spec), sort_keys=True).encode() + s.meta.to_json())
    return Plan(shards, skipped, digest.hexdigest()[:16])


def _chunks(samples: list[PlannedSample], max_bytes: int, max_samples: int) -> list[list[PlannedSample]]:
    """Consecutive runs of samples, each under `max_bytes` (estimated) and `max_samples`."""
    chunks: list[list[PlannedSample]] = []
    size = 0
    for s in samples:
        if not chunks or size + s.est_bytes > max_bytes or len(chunks[-1]) >= max_samples:
            chunks.append([])
            size = 0
        chunks[-1].append(s)
        size += s.est_bytes
    return chunks


def _planned(root: Path, row: dict[str, Any], a: Assignment, box: tuple[float, float, float, float], split: str,
             sel: Selection, signal_names: list[str], buckets: BucketConfig, cfg: ExportConfig) -> PlannedSample:
    clip_id = row["clip_id"]
    if row.get("path"):
        path, by_time, skip = str(library_file(root, row["path"])), False, int(row.get("file_start_frame") or 0)
    else:
        path, by_time, skip = str(row.get("source") or ""), True, 0
    n_frames, src_fps = _frame_grid(row)
    # source frame shown by each rendered frame (a resampled file holds the latest one at its time;
    # its rate, from the frame count it was rounded to, makes this +-1 frame there)
    shown = [i if src_fps == row["fps"] else min(int(row["n_frames"]) - 1, int(i * float(row["fps"]) / src_fps + 1e-6))
             for i in (a.frame_indices[0], a.frame_indices[-1])]
    spec = RenderSpec(path=path, by_time=by_time, skip=skip, n_frames=n_frames,
                      start_s=float(row["start_s"]), end_s=float(row["end_s"]), src_fps=src_fps,
                      bars=box, aspect=a.crop, frame_indices=a.frame_indices, width=a.bucket.width,
                      height=a.bucket.height, fps=buckets.fps, crf=cfg.crf)
    versions = sel.captions.get(clip_id, {})
    caption = row.get("caption") or ""
    version = row.get("caption_version") or ""
    lineage = {
        "source_uri": row.get("source"), "video_id": row["video_id"], "clip_id": clip_id,
        "library": str(root), "clip_mode": row.get("clip_mode"), "clip_path": row.get("path"),
        "frame_start": row["start_frame"], "frame_end": row["end_frame"],
        "start_s": row["start_s"], "end_s": row["end_s"],
        "sample_frames": [row["start_frame"] + i for i in shown],
        "bar_crop": [round(v, 4) for v in box], "aspect_crop": [round(v, 4) for v in a.crop],
        "resolution": a.resolution, "aspect": a.aspect, "caption_version": version or None,
    }
    if clip_id in sel.scores:
        lineage["query_score"] = sel.scores[clip_id]
    meta = SampleMeta(key=clip_id, caption=caption, bucket=a.bucket.name, fps=buckets.fps, clip_id=clip_id,
                      split=split, captions=dict(sorted(versions.items())), caption_version=version,
                      signals={n: _num(row[n]) for n in signal_names if row.get(n) is not None},
                      lineage=lineage)
    est = int(a.bucket.width * a.bucket.height * a.bucket.frames * cfg.bytes_per_pixel) + 2048
    return PlannedSample(spec, meta, est, int(row.get("file_bytes") or 0) if row.get("path") else 0)



"""`recap export`: selected clips -> bucketed, re-encoded WebDataset shards, a manifest and a card.

Steps, each a function below:
1. `select`: the index's per-clip table (clips + filter view + caption), kept when the clip passes
   the filter view, is not a duplicate, matches `--where` and (optionally) is among the `--query`
   hits. Every step's count is kept for the card.
2. `plan`: each clip gets a bucket (`pipeline.buckets`), a split (whole source videos go to train
   or val, chosen by a seeded hash) and a place in a shard. The plan is a pure function of the
   library, the selection and the config; its hash (`fingerprint`) names the export.
3. `write_planned_shard`: one Ray task per shard renders its samples and writes the tar with
   `trainer.shards.write_shard` (temp name, renamed when complete), then a `done` record.
4. The manifest (`manifest.parquet`) and the dataset card (`README.md` + PNGs) from the records.

Resume: `SHARDS/.export/job.json` holds the fingerprint. A rerun with the same plan skips every
shard that has its `done` record and rewrites the others whole (a half-written shard is only ever
a temp file), so a killed export finishes without duplicates. A different plan in the same
folder is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.buckets import Assignment, BucketConfig, assign
from pipeline.export_video import RenderSpec
from trainer.shards import SampleMeta, shard_name
from trainer.typedconfig import ConfigError, load_with_defaults

CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "export.yaml"
STATE = ".export"          # job.json and done/<shard>.json under SHARDS
FORMAT_VERSION = 1


class ExportError(RuntimeError):
    """The export cannot run as asked (empty selection, unknown caption version, foreign folder)."""


# ---- config ---------------------------------------------------------------------------------------
@dataclass
class ExecutionConfig:
    executor: Literal["ray", "local"] = "ray"
    ray_address: str = ""
    cpus_per_task: float = 1.0


@dataclass
class ExportConfig:
    val_fraction: float = 0.05
    seed: int = 0
    shard_size: str = "512MB"
    max_samples_per_shard: int = 10000
    bytes_per_pixel: float = 0.05
    crf: int = 18
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction must be in [0, 1)")
        parse_size(self.shard_size)
        if self.max_samples_per_shard < 1 or self.bytes_per_pixel <= 0 or not 0 <= self.crf <= 51:
            raise ConfigError("max_samples_per_shard >= 1, bytes_per_pixel > 0, 0 <= crf <= 51")


def load_export_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExportConfig:
    """Defaults from `configs/export.yaml`, then the user's file, then `key=value` overrides."""
    return load_with_defaults(ExportConfig, CONFIG_PATH, path, overrides)


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


def parse_size(text: str | int) -> int:
    """`"512MB"` -> 536870912 (binary units: KB, MB, GB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"shard size must look like 512MB, 2GB or 800KB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


# ---- 1. selection ---------------------------------------------------------------------------------
@dataclass
class Selection:
    clips: pa.Table                                  # one row per selected clip
    steps: list[tuple[str, int]]                     # (what was applied, clips left after it)
    caption_version: str | None                      # the version training captions come from
    captions: dict[str, dict[str, str]]              # clip_id -> every ok caption version -> text
    versions: list[dict[str, Any]]                   # CaptionStore.versions() of the versions used
    scores: dict[str, float] = field(default_factory=dict)   # --query: clip_id -> similarity
    notes: list[str] = field(default_factory=list)   # what the card and the CLI should say


def _caption_versions(root: Path, wanted: str | None) -> tuple[str | None, dict[str, dict[str, str]], list[dict]]:
    if not (root / "captions").is_dir():     # CaptionStore would create the folder: look first
        if wanted:
            raise ExportError(f"--caption-version {wanted}: {root} has no captions (run `recap caption`)")
        return None, {}, []
    from captioner.versions import CaptionStore

    store = CaptionStore(root)
    versions = store.versions()
    known = {v["version"] for v in versions}
    if wanted and wanted not in known:
        raise ExportError(f"no caption version {wanted!r} in {root}; known: {', '.join(sorted(known)) or 'none'}")
    t = store.read(columns=["clip_id", "version", "text", "status"])
    t = t.filter(pc.equal(t.column("status"), "ok"))
    captions: dict[str, dict[str, str]] = {}
    for c, v, text in zip(t.column("clip_id").to_pylist(), t.column("version").to_pylist(), t.column("text").to_pylist()):
        captions.setdefault(c, {})[v] = text
    return wanted or store.default(), captions, versions


def select(root: str | Path, where: str | None = None, query: str | None = None, top_k: int = 100,
           caption_version: str | None = None) -> Selection:
    """The clips to export, with the count left after each step."""
    from index.catalog import compile_for_schema
    from index.config import CaptionSource
    from index.tables import clip_table
    from index.where import WhereError

    root = Path(root)
    if not (root / "library.json").exists():
        raise ExportError(f"{root} is not a recap library (no library.json)")
    chosen, captions, versions = _caption_versions(root, caption_version)
    try:
        t = clip_table(root, CaptionSource(version=caption_version or ""))
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    steps = [("clips in the library", t.num_rows)]
    notes: list[str] = []
    if "passed" in t.column_names:
        t = t.filter(pc.fill_null(t.column("passed"), False))
        steps.append(("pass the filter view (`passed`; clips newer than the view count as not passed)", t.num_rows))
    else:
        notes.append("no filter view (LIB/views/filters.parquet): no quality filter was applied; run `recap filter` first")
    if "duplicate_of" in t.column_names:
        t = t.filter(pc.is_null(t.column("duplicate_of")))
        steps.append(("not a near-duplicate (`duplicate_of` is null)", t.num_rows))
    if where:
        try:
            expr = compile_for_schema(where, t.schema).arrow()
        except WhereError as e:
            raise ExportError(f"--where: {e}") from None
        t = t.filter(expr)
        steps.append((f"--where {where}", t.num_rows))
    scores: dict[str, float] = {}
    if query:
        scores = _query_scores(root, query, top_k, where, t.column_names)
        t = t.filter(pc.is_in(t.column("clip_id"), pa.array(list(scores), pa.string())))
        steps.append((f"--query {query!r} --top-k {top_k}", t.num_rows))
    if not captions:
        notes.append("no captions: the library has no caption versions yet, so every sample has caption '' "
                     "and captions {} (run `recap caption`, then export again)")
    used = {v for c in t.column("clip_id").to_pylist() for v in captions.get(c, {})}
    return Selection(t, steps, chosen, captions, [v for v in versions if v["version"] in used], scores, notes)


def _query_scores(root: Path, query: str, top_k: int, where: str | None, columns: list[str]) -> dict[str, float]:
    """clip_id -> score of the semantic search hits (the same filters pushed into the search, so
    top_k counts clips that can be exported)."""
    from index.api import Library, SearchError

    parts = [f"({where})"] if where else []
    try:
        with Library(root) as lib:
            fields = lib.fields() if lib.store.exists() else {}
            parts += [p for p, name in (("passed", "passed"), ("not duplicate", "duplicate")) if name in fields]
            hits = lib.search(query, top_k=top_k, where=" and ".join(parts) or None)
    except (SearchError, ValueError) as e:
        raise ExportError(f"--query: {e}") from None
    return {h.clip_id: h.score for h in hits}


# ---- 2. plan --------------------------------------------------------------------------------------
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
    box = (0.0, 0.0, 1.0, 1.0)
    if all(row.get(k) is not None for k in ("crop_x", "crop_y", "crop_w", "crop_h")) and cw and ch:
        x, y, w, h = row["crop_x"], row["crop_y"], row["crop_w"], row["crop_h"]
        if w > 0 and h > 0:
            box = (max(0.0, x / cw), max(0.0, y / ch), min(1.0, (x + w) / cw), min(1.0, (y + h) / ch))
    pw, ph = (box[2] - box[0]) * wu, (box[3] - box[1]) * hu
    return box, *((ph, pw) if turned else (pw, ph))


def _video_facts(root: Path) -> dict[str, dict[str, Any]]:
    """video_id -> coded width/height and rotation, from the committed `videos/` table (a read-only
    open: it never touches a running ingest's files)."""
    from pipeline.library import Library

    rows = Library(root).read("videos", ["video_id", "width", "height", "rotation"]).to_pylist()
    return {r["video_id"]: r for r in rows}


def plan_export(root: str | Path, sel: Selection, buckets: BucketConfig, cfg: ExportConfig) -> Plan:
    """Bucket, split and shard the selection; deterministic for the same inputs and seed."""
    from pipeline.signals.columns import SIGNAL_COLUMNS

    root = Path(root).resolve()
    videos = _video_facts(root)
    signal_names = [n for n, t, _ in SIGNAL_COLUMNS if n in sel.clips.column_names and not pa.types.is_list(t)]
    rows = sorted(sel.clips.to_pylist(), key=lambda r: r["clip_id"])
    skipped: dict[str, int] = {}
    assigned: list[tuple[dict[str, Any], Assignment, tuple[float, float, float, float]]] = []
    for row in rows:
        box, pw, ph = _picture(row, videos.get(row["video_id"], {}))
        a = assign(pw, ph, int(row["n_frames"]), float(row["fps"]), buckets)
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
            digest.update(json.dumps(asdict(s.spec), sort_keys=True).encode() + s.meta.to_json())
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
        path, by_time, skip = str(root / row["path"]), False, int(row.get("file_start_frame") or 0)
    else:
        path, by_time, skip = str(row.get("source") or ""), True, 0
    spec = RenderSpec(path=path, by_time=by_time, skip=skip, n_frames=int(row["n_frames"]),
                      start_s=float(row["start_s"]), end_s=float(row["end_s"]), src_fps=float(row["fps"]),
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
        "sample_frames": [row["start_frame"] + i for i in (a.frame_indices[0], a.frame_indices[-1])],
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


# ---- 3. one shard ---------------------------------------------------------------------------------
def write_planned_shard(out: str, shard: ShardPlan) -> dict[str, Any]:
    """Render and write one shard, then its `done` record; returns the record. A sample that
    cannot be rendered is left out and recorded with its error; a shard whose samples all fail
    is not written."""
    from pipeline.export_video import render_mp4
    from pipeline.library import atomic_write_bytes
    from trainer.shards import write_shard

    t0 = time.perf_counter()
    written: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []

    def samples():
        for s in shard.samples:
            try:
                mp4 = render_mp4(s.spec)
            except Exception as e:   # a bad clip costs that sample only, never the shard
                errors.append({"key": s.meta.key, "error": f"{type(e).__name__}: {e}"})
                continue
            written.append({"key": s.meta.key, "bytes": len(mp4), "input_bytes": s.input_bytes})
            yield s.meta, mp4

    path = Path(out) / shard.name
    count = write_shard(path, samples())
    if count == 0:
        path.unlink(missing_ok=True)
    record = {"shard": shard.name, "split": shard.split, "samples": written, "errors": errors,
              "tar_bytes": path.stat().st_size if count else 0, "seconds": time.perf_counter() - t0}
    done = Path(out) / STATE / "done"
    done.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(done / f"{shard.name}.json", json.dumps(record).encode())
    return record


# ---- 4. orchestration -----------------------------------------------------------------------------
@dataclass
class ExportSummary:
    out: Path
    samples: int
    failed: int
    shards: int
    resumed_shards: int
    tar_bytes: int
    input_bytes: int
    seconds: float
    rendered: int             # samples rendered by this run (the rest were done by an earlier one)
    notes: list[str]

    def lines(self) -> list[str]:
        mb = self.tar_bytes / 1e6
        rate = self.rendered / self.seconds if self.seconds else 0.0
        return [f"{self.samples} samples in {self.shards} shards ({mb:.1f} MB) -> {self.out}"
                + (f", {self.resumed_shards} shards already done" if self.resumed_shards else ""),
                f"failed samples: {self.failed}" + (f" (see {self.out}/README.md)" if self.failed else ""),
                f"took {self.seconds:.1f} s ({self.rendered} clips rendered, {rate:.2f} clips/s)"]


def _prepare_out(out: Path, fingerprint: str, job: dict[str, Any]) -> set[str]:
    """Create or reopen SHARDS; returns the shards already done. Refuses a folder that holds
    something else, or another export."""
    state = out / STATE
    job_path = state / "job.json"
    if job_path.exists():
        old = json.loads(job_path.read_text())
        if old.get("fingerprint") != fingerprint:
            raise ExportError(f"{out} holds another export (plan {old.get('fingerprint')}, this one is {fingerprint}: "
                              "the selection, captions or settings differ); export to a new folder or remove it")
    elif out.exists() and any(p for p in out.iterdir()):
        raise ExportError(f"{out} exists, is not empty and is not an export of this plan; choose another --out")
    from pipeline.library import atomic_write_bytes

    (state / "done").mkdir(parents=True, exist_ok=True)
    for stray in out.glob(".*.tmp"):           # a shard cut short by a crash
        stray.unlink(missing_ok=True)
    run = {"command": job.pop("command"), "started_at": job.pop("started_at")}
    if job_path.exists():                      # the plan's settings stay; the run is added
        job = json.loads(job_path.read_text())
    job.setdefault("runs", []).append(run)
    atomic_write_bytes(job_path, json.dumps(job, indent=2, default=str).encode())
    done = set()
    for record in (state / "done").glob("*.json"):
        name = record.name.removesuffix(".json")
        if (out / name).exists() or not json.loads(record.read_text())["tar_bytes"]:   # a deleted shard is redone
            done.add(name)
    return done


def _run_shards(out: Path, todo: list[ShardPlan], cfg: ExportConfig, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="shard", disable=not progress)
    failed = 0

    def tick(record: dict[str, Any]) -> None:
        nonlocal failed
        failed += len(record["errors"])
        bar.update(1)
        bar.set_postfix(samples=len(record["samples"]), failed=failed)

    if cfg.execution.executor == "local":
        for shard in todo:
            tick(write_planned_shard(str(out), shard))
        bar.close()
        return
    import ray

    from pipeline.ingest import init_ray

    init_ray(cfg.execution.ray_address or None)
    task = ray.remote(num_cpus=cfg.execution.cpus_per_task, max_retries=2)(write_planned_shard)
    pending = [task.remote(str(out), shard) for shard in todo]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        tick(ray.get(ready[0]))
    bar.close()


def run_export(root: str | Path, out: str | Path, *, where: str | None = None, query: str | None = None,
               top_k: int = 100, caption_version: str | None = None, buckets: BucketConfig,
               cfg: ExportConfig, command: str = "", buckets_file: str | None = None,
               progress: bool = True, log=print) -> ExportSummary:
    """Select, plan, write the shards (resuming a killed run), then the manifest and the card."""
    from pipeline.export_card import write_card, write_manifest
    from trainer.typedconfig import to_dict

    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    sel = select(root, where, query, top_k, caption_version)
    if sel.clips.num_rows == 0:
        raise ExportError("no clips selected, nothing exported: "
                          + "; ".join(f"{what}: {n}" for what, n in sel.steps))
    plan = plan_export(root, sel, buckets, cfg)
    n_planned = sum(len(s.samples) for s in plan.shards)
    if n_planned == 0:
        raise ExportError(f"none of the {sel.clips.num_rows} selected clips fits a bucket "
                          f"({', '.join(f'{k}: {v}' for k, v in plan.skipped.items())}); "
                          "see configs/buckets.yaml (frames, resolutions, aspect_ratios)")
    if cfg.val_fraction > 0 and not any(s.split == "val" for s in plan.shards):
        n_videos = len({s.meta.lineage["video_id"] for shard in plan.shards for s in shard.samples})
        sel.notes.append(f"no validation split: {n_videos} source video(s), and videos are never divided "
                         f"(val_fraction {cfg.val_fraction:g} of the clips is closer to none than to one video)")
    for note in sel.notes:
        log(f"note: {note}")
    job = {"format_version": FORMAT_VERSION, "fingerprint": plan.fingerprint, "library": str(root.resolve()),
           "command": command, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "args": {"where": where, "query": query, "top_k": top_k if query else None,
                    "caption_version": caption_version, "buckets_file": buckets_file},
           "config": to_dict(cfg), "buckets": to_dict(buckets)}
    done = _prepare_out(out, plan.fingerprint, job)
    todo = [s for s in plan.shards if s.name not in done]
    if done:
        log(f"resuming: {len(plan.shards) - len(todo)} of {len(plan.shards)} shards already written")
    _run_shards(out, todo, cfg, progress)
    fresh = {s.name for s in todo}
    records = [json.loads((out / STATE / "done" / f"{s.name}.json").read_text()) for s in plan.shards]
    manifest = write_manifest(out, plan, records)
    job = json.loads((out / STATE / "job.json").read_text())
    seconds = time.perf_counter() - t0
    write_card(out, sel, plan, records, manifest, job, buckets)
    return ExportSummary(out=out, samples=manifest.num_rows, failed=sum(len(r["errors"]) for r in records),
                         shards=sum(1 for r in records if r["tar_bytes"]), resumed_shards=len(plan.shards) - len(todo),
                         tar_bytes=sum(r["tar_bytes"] for r in records),
                         input_bytes=sum(s["input_bytes"] for r in records for s in r["samples"]),
                         seconds=seconds, rendered=sum(len(r["samples"]) for r in records if r["shard"] in fresh),
                         notes=sel.notes)

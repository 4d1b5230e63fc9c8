"""The export job: selected clips -> bucketed, re-encoded WebDataset shards, a manifest and a card.

1. `selection.select`: the library's clip table (clips + filter view + caption), kept when the clip
   passes the filter view, is not a duplicate, matches `--where` and (optionally) is among the
   `--query` hits. Every step's count is kept for the card.
2. `plan.plan_export`: each clip gets a bucket, a split (whole source videos go to train or val) and
   a place in a shard; the plan's hash (`fingerprint`) names the export.
3. `writer.WriteShardStage`: one task per shard on the stage runner renders its samples and writes
   the tar with `trainer.shards.write_shard` (temp name, renamed when complete), then a `done` record.
4. The manifest (`manifest.parquet`) and the dataset card (`README.md` + PNGs) from the records.

Resume: `SHARDS/.export/job.json` holds the fingerprint. A rerun with the same plan skips every
shard that has its `done` record and rewrites the others whole (a half-written shard is only ever
a temp file), so a killed export finishes without duplicates. A different plan in the same
folder is refused rather than mixed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.export.buckets import BucketConfig
from pipeline.export.card import write_card, write_manifest
from pipeline.export.config import ExportConfig
from pipeline.export.plan import Plan, ShardPlan, plan_export
from pipeline.export.selection import ExportError, Selection, select
from pipeline.export.writer import STATE, WriteShardStage
from pipeline.library.files import atomic_write_bytes, require_utf8_path
from pipeline.library.tables import locked
from pipeline.stages.runner import check_visible, run_stages
from trainer.progress import progress_bar
from trainer.typedconfig import to_dict

FORMAT_VERSION = 1


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
    """Create or reopen SHARDS; returns the shards already done. Refuses another export's folder
    (a folder holding something else is refused before this, by run_export)."""
    state = out / STATE
    job_path = state / "job.json"
    if job_path.exists():
        old = json.loads(job_path.read_text())
        if old.get("fingerprint") != fingerprint:
            raise ExportError(f"{out} holds another export (plan {old.get('fingerprint')}, this one is {fingerprint}: "
                              "the selection, captions or settings differ); export to a new folder or remove it")
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


def _run_shards(root: Path, out: Path, todo: list[ShardPlan], cfg: ExportConfig, progress: bool) -> None:
    if not todo:     # every shard written by an earlier run: no empty bar
        return
    bar = progress_bar(total=sum(len(s.samples) for s in todo), unit="sample", disable=not progress)
    failed = shards = 0
    # on Ray a task renders on the CPUs it asked for (tasks in parallel make the rest); a local run
    # has this machine's CPUs for one shard after another
    ex = cfg.execution
    threads = max(1, round(ex.cpus_per_task)) if ex.uses_ray else ex.local_workers(cpus_per_task=1.0)
    stage = WriteShardStage(out, ex.cpus_per_task, threads, library=root)
    for row in run_stages([stage], [{"shard": shard} for shard in todo], cfg.execution, one_block_per_batch=True):
        record = row["record"]
        failed += len(record["errors"])
        shards += 1
        bar.update(len(record["samples"]) + len(record["errors"]))
        bar.set_postfix(shards=f"{shards}/{len(todo)}", failed=failed)
    bar.close()


def run_export(root: str | Path, out: str | Path, *, where: str | None = None, query: str | list[str] | None = None,
               top_k: int = 100, caption_version: str | None = None, selection: str | None = None,
               buckets: BucketConfig,
               cfg: ExportConfig, command: str = "", buckets_file: str | None = None,
               progress: bool = True, log=print) -> ExportSummary:
    """Select, plan, write the shards (resuming a killed run), then the manifest and the card."""
    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    if out.exists() and not out.is_dir():      # said before the selection and the plan are worked out
        raise ExportError(f"--out {out} is a file, not a folder; choose another --out")
    require_utf8_path(out, "--out")
    sel, plan = _select_and_plan(root, where, query, top_k, caption_version, selection, buckets, cfg)
    for note in sel.notes:
        log(f"note: {note}")
    job = {"format_version": FORMAT_VERSION, "fingerprint": plan.fingerprint, "library": str(root.resolve()),
           "command": command, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "args": {"where": where, "query": query, "top_k": top_k if query else None, "selection": selection,
                    "caption_version": caption_version, "buckets_file": buckets_file},
           "config": to_dict(cfg), "buckets": to_dict(buckets)}
    if not (out / STATE / "job.json").exists() and out.exists() and any(p.name != STATE for p in out.iterdir()):
        raise ExportError(f"{out} exists, is not empty and is not an export of this plan; choose another --out")
    # on Ray the workers read the clips and write the shards: every node must see both folders, said
    # before the first file of the export is written (the runner checks it again, at no cost)
    for folder, what in ((root, "the library"), (out, "the export folder (--out)")):
        check_visible(folder, cfg.execution, what)
    (out / STATE).mkdir(parents=True, exist_ok=True)
    with locked(out / STATE / "lock", f"exporting to {out}"):   # two exports to one folder: one refused
        return _export(root, out, sel, plan, job, buckets, cfg, progress, log, t0)


def preview_export(root: str | Path, *, where: str | None = None, query: str | list[str] | None = None,
                   top_k: int = 100, caption_version: str | None = None, selection: str | None = None,
                   buckets: BucketConfig, cfg: ExportConfig) -> list[str]:
    """What `recap export --dry-run` prints: the selection step by step, then the planned samples by
    split and bucket, the shards and their estimated size. Renders and writes nothing."""
    sel, plan = _select_and_plan(Path(root), where, query, top_k, caption_version, selection, buckets, cfg)
    samples = [s for shard in plan.shards for s in shard.samples]
    splits = Counter(s.meta.split for s in samples)
    lines = ["selection: " + " -> ".join(f"{what}: {n}" for what, n in sel.steps),
             f"plan: {len(samples)} samples (" + ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
             + f") in {len(plan.shards)} shard(s), ~{sum(s.est_bytes for s in samples) / 1e6:.1f} MB estimated",
             "by bucket: " + ", ".join(f"{k} {v}" for k, v in Counter(s.meta.bucket for s in samples).most_common())]
    if plan.skipped:
        lines.append("fit no bucket: " + ", ".join(f"{k} {v}" for k, v in plan.skipped.items()))
    return lines + [f"note: {note}" for note in sel.notes] + ["dry run: nothing was written"]


def _select_and_plan(root: Path, where: str | None, query: str | list[str] | None, top_k: int,
                     caption_version: str | None, selection: str | None, buckets: BucketConfig,
                     cfg: ExportConfig) -> tuple[Selection, Plan]:
    sel = select(root, where, query, top_k, caption_version, selection)
    if sel.clips.num_rows == 0:
        raise ExportError("no clips selected, nothing exported: "
                          + "; ".join(f"{what}: {n}" for what, n in sel.steps)
                          + "".join(f"\nnote: {note}" for note in sel.notes))   # e.g. selected ids not in the library
    plan = plan_export(root, sel, buckets, cfg)
    if not any(shard.samples for shard in plan.shards):
        raise ExportError(f"none of the {sel.clips.num_rows} selected clips fits a bucket "
                          f"({', '.join(f'{k}: {v}' for k, v in plan.skipped.items())}); "
                          "see configs/buckets.yaml (frames, resolutions, aspect_ratios)")
    if cfg.val_fraction > 0 and not any(s.split == "val" for s in plan.shards):
        n_videos = len({s.meta.lineage["video_id"] for shard in plan.shards for s in shard.samples})
        sel.notes.append(f"no validation split: {n_videos} source video(s), and videos are never divided "
                         f"(val_fraction {cfg.val_fraction:g} of the clips is closer to none than to one video)")
    return sel, plan


def _export(root: Path, out: Path, sel: Selection, plan: Plan, job: dict[str, Any], buckets: BucketConfig,
            cfg: ExportConfig, progress: bool, log, t0: float) -> ExportSummary:
    done = _prepare_out(out, plan.fingerprint, job)
    todo = [s for s in plan.shards if s.name not in done]
    if done:
        log(f"resuming: {len(plan.shards) - len(todo)} of {len(plan.shards)} shards already written")
    _run_shards(root, out, todo, cfg, progress)
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

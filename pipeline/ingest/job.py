"""The ingest job: sources stream through `IngestStage` (one task per video) on the stage runner;
the driver commits their rows to the library in batches.

Tasks are bounded in flight, so memory stays bounded however many sources there are. The same
content under two names is processed once: across runs the library's `sources/` and `videos/`
tables say what is done, and within a run a worker claims a content hash (`RunClaims`) before
doing any work on it. After the new videos are committed, the stages that read the library run:
the filter view, then (optionally) captions.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.caption.config import load_caption_config
from pipeline.caption.job import run_caption
from pipeline.filters.config import load_filter_config
from pipeline.filters.evaluate import run_filters
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.sources import expand_sources
from pipeline.ingest.worker import SourceResult, error_result, ingest_source
from pipeline.library import Library
from pipeline.library.claims import RunClaims
from pipeline.library.files import utcnow
from pipeline.library.views import VIEW_PATH
from pipeline.stages import Resources, Row, Stage, run_stages
from pipeline.stages.runner import cluster_cpus, worker_node
from trainer.typedconfig import to_dict


@dataclass
class IngestSummary:
    sources: int = 0
    skipped: int = 0              # handled by an earlier run
    ingested: int = 0
    duplicates: int = 0
    failed: int = 0
    clips: int = 0
    video_seconds: float = 0.0
    wall_seconds: float = 0.0
    errors_by_type: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        speed = self.video_seconds / self.wall_seconds if self.wall_seconds else 0.0
        out = [
            f"sources: {self.sources} ({self.skipped} already done, {self.ingested} ingested, "
            f"{self.duplicates} duplicate content, {self.failed} failed)",
            f"clips: {self.clips}   video: {self.video_seconds:.1f} s in {self.wall_seconds:.1f} s "
            f"({speed:.1f} video-s/s)",
        ]
        if self.errors_by_type:
            out.append("failures: " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors_by_type.items())))
        return out

    def count(self, result: SourceResult) -> None:
        if result.outcome == "ingested":
            self.ingested += 1
            self.clips += result.n_clips
            self.video_seconds += result.video_seconds
        elif result.outcome == "duplicate":
            self.duplicates += 1
        else:
            self.failed += 1
            for err in result.rows.get("errors", []):
                self.errors_by_type[err["error_type"]] = self.errors_by_type.get(err["error_type"], 0) + 1


class IngestStage(Stage):
    """One source in, its `SourceResult` out: fetch, hash, claim, probe, the decode pass (shots and
    signals), clip files. Signals are frame analyzers inside the decode pass, not a stage of their
    own: a separate stage would have to decode again or ship every frame between processes."""

    name = "ingest"
    reads = ("uri",)
    adds = ("result",)
    max_retries = 1      # a file that crashes the decoder's process is tried twice at most

    def __init__(self, cfg: IngestConfig, lib_root: Path, claims: RunClaims, resources: Resources):
        self.cfg = cfg
        self.lib_root = str(lib_root)
        self.claims = claims
        self.resources = resources

    def process(self, batch: list[Row]) -> list[Row]:
        out = []
        for row in batch:
            result = ingest_source(row["uri"], self.cfg, self.lib_root, claim=self.claims.claim)
            for video in result.rows.get("videos", []):
                video["worker_node"] = worker_node()
            out.append({"uri": row["uri"], "result": result})
        return out


def plan_resources(cfg: IngestConfig, n_sources: int, cpus_available: float) -> tuple[float, int]:
    """CPUs per task and decoder threads: with few videos each gets several cores (so one long
    video still uses the machine), with many each gets one (parallel videos scale better)."""
    cpus = cfg.execution.cpus_per_task
    if cpus <= 0:
        cpus = max(1.0, float(int(cpus_available // max(1, min(n_sources, int(cpus_available))))))
    threads = cfg.decode.threads or max(1, int(cpus))
    return cpus, threads


def run_ingest(sources: list[str], lib_root: str | Path, cfg: IngestConfig, progress: bool = True,
               command: str | None = None) -> IngestSummary:
    """Ingest `sources` (source arguments, expanded here) into the library at `lib_root`."""
    t0 = time.perf_counter()
    lib = Library(lib_root, write=True)
    items = expand_sources(sources, cfg.sources)
    handled = lib.handled_sources()
    todo = [s.uri for s in items if handled.get(s.uri, "failed") == "failed"]
    summary = IngestSummary(sources=len(items), skipped=len(items) - len(todo))
    if todo:
        _ingest(lib, todo, cfg, summary, progress, t0)
    if summary.ingested or not (lib.root / VIEW_PATH).exists():
        _after_ingest(lib.root, cfg, progress)
    summary.wall_seconds = time.perf_counter() - t0
    lib.record_run({"at": utcnow().isoformat(), "command": command, "config": to_dict(cfg),
                    "summary": dataclasses.asdict(summary)})
    lib.close()
    return summary


def _ingest(lib: Library, todo: list[str], cfg: IngestConfig, summary: IngestSummary, progress: bool,
            t0: float) -> None:
    cpus, threads = plan_resources(cfg, len(todo), cluster_cpus(cfg.execution))
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, threads=threads))
    claims = lib.start_claims()
    stage = IngestStage(cfg, lib.root.resolve(), claims, Resources(cpus=cpus))
    bar = tqdm(total=len(todo), unit="video", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    pending: dict[str, list[dict[str, Any]]] = {}
    pending_videos, last_commit = 0, time.monotonic()
    seen: set[str] = set()

    def add(result: SourceResult) -> None:
        summary.count(result)
        for table, rows in result.rows.items():
            pending.setdefault(table, []).extend(rows)

    # one block per video: a worker that dies (a decoder crash) loses that video only, and the job goes on
    for row in run_stages([stage], [{"uri": u} for u in todo], cfg.execution, one_block_per_batch=True,
                          tolerate_lost_batches=True):
        result: SourceResult = row["result"]
        seen.add(result.uri)
        add(result)
        pending_videos += 1
        if (pending_videos >= cfg.execution.commit_every
                or time.monotonic() - last_commit >= cfg.execution.commit_every_seconds):
            lib.commit(pending)
            pending, pending_videos, last_commit = {}, 0, time.monotonic()
        elapsed = time.perf_counter() - t0
        bar.set_postfix(clips=summary.clips, failed=summary.failed, refresh=False,
                        video_s_per_s=f"{summary.video_seconds / max(elapsed, 1e-6):.1f}")
        bar.update(1)
    # a source whose worker died (e.g. the decoder crashed the process) produced no result
    for uri in todo:
        if uri not in seen:
            add(error_result(uri, None, "worker", "worker_crashed",
                             "the worker process died while ingesting this source", outcome="failed"))
    lib.commit(pending)
    bar.close()
    claims.close()


def _after_ingest(lib_root: Path, cfg: IngestConfig, progress: bool) -> None:
    """The stages that read the committed library: the filter view, then (optionally) captions."""
    if cfg.after.filter:
        view, _ = run_filters(lib_root, load_filter_config())
        print(f"filter view: {sum(view.column('passed').to_pylist())} of {view.num_rows} clips pass", file=sys.stderr)
    if cfg.after.caption:
        caption_cfg = load_caption_config(cfg.after.caption_config, cfg.after.caption_set)
        caption_cfg.execution.ray_address = caption_cfg.execution.ray_address or cfg.execution.ray_address
        result = run_caption(lib_root, caption_cfg, progress=progress)
        print(f"captions: version {result.version}: {result.captioned} new, {result.skipped} already done", file=sys.stderr)

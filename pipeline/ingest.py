"""Ingest on Ray Data: sources stream through per-video tasks; the driver commits their rows.

Ray Data runs `worker.ingest_source` as one task per source (bounded in flight, so memory stays
bounded however many sources there are); the driver consumes results as they finish and commits
them to the library in batches. The same content under two names is processed once: across runs
the library's `sources/` and `videos/` tables say what is done, and within a run workers claim a
content hash in Ray's key-value store before doing any work on it.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import IngestConfig
from pipeline.library import Library, utcnow
from pipeline.worker import SourceResult, _error_result, ingest_source
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


def _claimer(known_ref, namespace: str):
    """claim(video_id, uri) -> False when the content is already in the library or another worker
    of this run claimed it first. Claims are an atomic put-if-absent in Ray's GCS key-value store
    (no extra process); the library's ids arrive once per worker as a sorted array in the object
    store."""
    import numpy as np
    import ray
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

    known = _KNOWN.get(known_ref.hex())
    if known is None:
        known = _KNOWN.setdefault(known_ref.hex(), ray.get(known_ref))

    def claim(video_id: str, uri: str) -> bool:
        key = video_id.encode()
        i = int(np.searchsorted(known, key))
        if i < len(known) and known[i] == key:
            return False
        if not _internal_kv_put(key, uri.encode(), overwrite=False, namespace=namespace):
            return True  # first to claim it
        return _internal_kv_get(key, namespace=namespace) == uri.encode()  # a retried task of ours

    return claim


_KNOWN: dict[str, object] = {}  # per worker process: library ids by object ref


def _run_one(row: dict[str, Any], cfg: IngestConfig, lib_root: str, known_ids, namespace: str) -> dict[str, Any]:
    import ray

    result = ingest_source(row["uri"], cfg, lib_root, claim=_claimer(known_ids, namespace))
    for video in result.rows.get("videos", []):
        video["worker_node"] = ray.get_runtime_context().get_node_id()
    return {"uri": row["uri"], "payload": pickle.dumps(result)}


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray notices that are not about this job: token auth being on (its default), and Ray Data's
    # progress bars being off (we draw our own)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", include_dashboard=False, **kwargs)  # never join a stray cluster silently



def plan_resources(cfg: IngestConfig, n_sources: int, cluster_cpus: float) -> tuple[float, int]:
    """CPUs per task and decoder threads: with few videos each gets several cores (so one long
    video still uses the machine), with many each gets one (parallel videos scale better)."""
    cpus = cfg.execution.cpus_per_video
    if cpus <= 0:
        cpus = max(1.0, float(int(cluster_cpus // max(1, min(n_sources, int(cluster_cpus))))))
    threads = cfg.decode.threads or max(1, int(cpus))
    return cpus, threads


def run_ingest(sources: list[str], lib_root: str | Path, cfg: IngestConfig, ray_address: str | None = None,
               progress: bool = True, command: str | None = None) -> IngestSummary:
    """Ingest `sources` (expanded source args) into the library at `lib_root`."""
    import dataclasses

    import ray
    import ray.data
    from tqdm import tqdm

    from pipeline.sources import expand_sources

    t0 = time.perf_counter()
    lib = Library(lib_root, write=True)
    items = expand_sources(sources, cfg.sources)
    handled = lib.handled_sources()
    todo = [s.uri for s in items if handled.get(s.uri, "failed") == "failed"]
    summary = IngestSummary(sources=len(items), skipped=len(items) - len(todo))

    if todo:
        init_ray(ray_address)
        cpus, threads = plan_resources(cfg, len(todo), ray.cluster_resources().get("CPU", 1.0))
        cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, threads=threads))
        import numpy as np
        from ray.experimental.internal_kv import _internal_kv_del

        known_ids = ray.put(np.array(sorted(lib.video_ids()), dtype="S32"))
        namespace = f"recap-claims-{os.getpid()}-{time.time_ns()}"

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False
        ctx.max_errored_blocks = -1  # a worker that dies on one video must not end the job
        ctx.print_on_execution_start = False

        in_flight = cfg.execution.max_videos_in_flight or None
        with warnings.catch_warnings():
            # Ray Data retries a task whose worker died forever by default; a file that crashes
            # the decoder must be tried twice at most. There is no named parameter for it in 2.60.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            ds = ray.data.from_items([{"uri": u} for u in todo], override_num_blocks=len(todo)).map(
                _run_one, fn_kwargs={"cfg": cfg, "lib_root": str(Path(lib_root).resolve()),
                                     "known_ids": known_ids, "namespace": namespace},
                num_cpus=cpus, concurrency=in_flight, max_retries=1)

        bar = tqdm(total=len(todo), unit="video", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        pending: dict[str, list[dict[str, Any]]] = {}
        pending_videos, last_commit = 0, time.monotonic()
        seen: set[str] = set()
        for row in ds.iter_rows():
            result: SourceResult = pickle.loads(row["payload"])
            seen.add(result.uri)
            _count(summary, result)
            for table, rows in result.rows.items():
                pending.setdefault(table, []).extend(rows)
            pending_videos += 1
            if (pending_videos >= cfg.execution.commit_every_videos
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
                crashed = _error_result(uri, None, "worker", "worker_crashed",
                                        "the worker process died while ingesting this source", outcome="failed")
                _count(summary, crashed)
                for table, rows in crashed.rows.items():
                    pending.setdefault(table, []).extend(rows)
        lib.commit(pending)
        bar.close()
        _internal_kv_del(b"", del_by_prefix=True, namespace=namespace)

    from pipeline.filters import VIEW_PATH

    if summary.ingested or not (lib.root / VIEW_PATH).exists():
        _after_ingest(lib.root, cfg, ray_address, progress)
    summary.wall_seconds = time.perf_counter() - t0
    lib.record_run({"at": utcnow().isoformat(), "command": command, "config": to_dict(cfg),
                    "summary": dataclasses.asdict(summary)})
    lib.close()
    return summary


def _after_ingest(lib_root: Path, cfg: IngestConfig, ray_address: str | None, progress: bool) -> None:
    """The stages that read the committed library: the filter view, then (optionally) captions."""
    if cfg.after.filter:
        from pipeline.filters import load_filter_config, run_filters

        view, _ = run_filters(lib_root, load_filter_config())
        print(f"filter view: {sum(view.column('passed').to_pylist())} of {view.num_rows} clips pass", file=sys.stderr)
    if cfg.after.caption:
        from captioner.config import load_caption_config
        from pipeline.caption_stage import run_caption

        caption_cfg = load_caption_config(cfg.after.caption_config, cfg.after.caption_set)
        result = run_caption(lib_root, caption_cfg, ray_address=ray_address, progress=progress)
        print(f"captions: version {result.version}: {result.captioned} new, {result.skipped} already done", file=sys.stderr)


def _count(summary: IngestSummary, result: SourceResult) -> None:
    if result.outcome == "ingested":
        summary.ingested += 1
        summary.clips += result.n_clips
        summary.video_seconds += result.video_seconds
    elif result.outcome == "duplicate":
        summary.duplicates += 1
    else:
        summary.failed += 1
        for err in result.rows.get("errors", []):
            summary.errors_by_type[err["error_type"]] = summary.errors_by_type.get(err["error_type"], 0) + 1

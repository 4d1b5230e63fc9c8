"""The ingest job: sources stream through `IngestStage` (one task per video) on the stage runner;
the driver commits their rows to the library in batches.

Tasks are bounded in flight, so memory stays bounded however many sources there are. Each source
runs in a child process of its worker, within `sources.timeout_s` and `sources.cpu_timeout_s`
(`pipeline.ingest.sandbox`): a hostile input becomes an error row, never a hang. The same
content under two names is processed once: across runs the library's `sources/` and `videos/`
tables say what is done, and within a run a worker claims a content hash (`RunClaims`) before
doing any work on it. After the new videos are committed, the stages that read the library run:
the filter view, then (optionally) captions.

Everything that can refuse the job (sources, config, the aesthetic model, Ray) is checked before
the library folder is created: a job that ingests nothing leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.caption.config import CaptionJobConfig, load_caption_config
from pipeline.filters.config import from_saved_config, load_filter_config
from pipeline.filters.evaluate import run_filters
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.progress import IN_FLIGHT
from pipeline.ingest.result import SourceResult, error_result
from pipeline.ingest.sandbox import close_shared_runner, start_runners
from pipeline.ingest.signals.aesthetic import check_model
from pipeline.ingest.signals.config import ocr_available
from pipeline.ingest.sources import Source, expand_sources
from pipeline.ingest.stage import IngestStage
from pipeline.library import Library, LibraryError
from pipeline.library.layout import storable, utcnow
from pipeline.library.views import read_view
from pipeline.stages.base import Resources
from pipeline.stages.runner import check_resources, check_visible, cluster_cpus, run_stages
from trainer.progress import progress_bar
from trainer.typedconfig import ConfigError, to_dict


@dataclass
class IngestSummary:
    sources: int = 0
    skipped: int = 0              # handled by an earlier run
    ingested: int = 0
    duplicates: int = 0
    removed: int = 0              # content taken out earlier with `recap remove`: not ingested again
    failed: int = 0
    clips: int = 0
    video_seconds: float = 0.0
    wall_seconds: float = 0.0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    library_clips: int = 0        # clips in the library after the run (0: nothing to work on: exit 3)
    after: list[str] = field(default_factory=list)   # what the stages after ingest said (filter view, captions)
    library: str = "LIB"          # its folder, as given: what the commands the summary suggests name

    def lines(self) -> list[str]:
        speed = self.video_seconds / self.wall_seconds if self.wall_seconds else 0.0
        out = [
            f"sources: {self.sources} ({self.skipped} already done, {self.ingested} ingested, "
            f"{self.duplicates} duplicate content, "
            + (f"{self.removed} removed content (`recap remove`), " if self.removed else "")
            + f"{self.failed} failed)",
            f"clips: {self.clips}   video: {self.video_seconds:.1f} s in {self.wall_seconds:.1f} s "
            f"({speed:.1f} video-s/s)",
        ]
        if self.errors_by_type:
            out.append("failures: " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors_by_type.items())))
        if not self.library_clips:
            out.append("the library has no clips: every source failed, or every video was shorter than "
                       "clips.min_seconds after clips.margin_frames (see "
                       f"`recap info {shlex.quote(self.library)} --errors` and the videos' n_clips)")
        return out + self.after

    def count(self, result: SourceResult) -> None:
        if result.outcome == "ingested":
            self.ingested += 1
            self.clips += result.n_clips
            self.video_seconds += result.video_seconds
        elif result.outcome == "duplicate":
            self.duplicates += 1
        elif result.outcome == "removed":
            self.removed += 1
        else:
            self.failed += 1
            for err in result.rows.get("errors", []):
                self.errors_by_type[err["error_type"]] = self.errors_by_type.get(err["error_type"], 0) + 1


def plan_resources(cfg: IngestConfig, n_sources: int, cpus_available: float) -> tuple[float, int]:
    """CPUs per task and decoder threads: with few videos each gets several cores (so one long
    video still uses the machine), with many each gets one (parallel videos scale better)."""
    cpus = cfg.execution.cpus_per_task
    if cpus <= 0:
        cpus = max(1.0, float(int(cpus_available // max(1, min(n_sources, int(cpus_available))))))
    threads = cfg.decode.threads or max(1, int(cpus))
    return cpus, threads


@dataclass
class IngestPlan:
    """What `recap ingest --dry-run` reports: the sources and which of them a run would ingest."""
    sources: int
    todo: list[Source]
    local_bytes: int              # size of the local files to ingest (a missing one counts 0)

    def lines(self) -> list[str]:
        remote = sum(s.remote for s in self.todo)
        size = f"{self.local_bytes / 1e9:.2f} GB" if self.local_bytes >= 1e9 else f"{self.local_bytes / 1e6:.1f} MB"
        what = (f"{len(self.todo) - remote} local file(s), {size}"
                + (f", and {remote} remote" if remote else ""))
        return [f"sources: {self.sources} ({self.sources - len(self.todo)} already done, "
                f"{len(self.todo)} to ingest: {what})", "dry run: nothing was written"]


def plan_ingest(sources: list[str], lib_root: str | Path, cfg: IngestConfig) -> IngestPlan:
    """The checks `run_ingest` makes before it writes (sources, config, models; not Ray), and the
    sources it would ingest; reads the library if there is one, writes nothing."""
    items = expand_sources(sources, cfg.sources)
    _checked(cfg)
    lib = Library(lib_root) if _is_library(lib_root) else None
    todo = set(_todo(lib, [s.uri for s in items], cfg))
    planned = [s for s in items if s.uri in todo]
    return IngestPlan(len(items), planned, sum(_size(s.uri) for s in planned if not s.remote))


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, ValueError):     # missing, unreadable, a NUL in the name: the run makes it an error row
        return 0


def _checked(cfg: IngestConfig) -> IngestConfig:
    """`cfg` once its models are checked (ConfigError when one is missing), with text signals off
    where the OCR engine is not installed: the run's record says what was measured."""
    if cfg.signals.enabled:
        check_model(cfg.signals.aesthetic)
        if cfg.signals.text.enabled and not ocr_available():
            cfg = dataclasses.replace(cfg, signals=dataclasses.replace(
                cfg.signals, text=dataclasses.replace(cfg.signals.text, enabled=False)))
    if cfg.after.caption:     # a bad caption config or a missing model fails now, not after the whole ingest
        _check_caption_model(load_caption_config(cfg.after.caption_config, cfg.after.caption_set))
    return cfg


def run_ingest(sources: list[str], lib_root: str | Path, cfg: IngestConfig, progress: bool = True,
               command: str | None = None) -> IngestSummary:
    """Ingest `sources` (source arguments, expanded here) into the library at `lib_root`.

    Raises SourceError, ConfigError (RayStartError among them) or LibraryError before anything is
    written; a new library folder is created only once all of those checks passed."""
    t0 = time.perf_counter()
    items = expand_sources(sources, cfg.sources)
    checked = _checked(cfg)
    no_ocr = cfg.signals.text.enabled and not checked.signals.text.enabled   # turned off: no OCR engine
    cfg = checked
    lib: Library | None = None
    try:
        if _is_library(lib_root):
            lib = Library(lib_root, write=True)
        elif items and not cfg.execution.uses_ray:
            # a new library: every source is to be ingested, so the children doing it can start now
            cpus, _ = plan_resources(cfg, len(items), cluster_cpus(cfg.execution))
            start_runners(min(len(items), cfg.execution.local_workers(cpus)))
        todo = _todo(lib, [s.uri for s in items], cfg)
        if todo:
            # (start or join Ray and) check the tasks fit a node: a failure leaves no library behind
            cpus, _ = plan_resources(cfg, len(todo), cluster_cpus(cfg.execution))
            check_resources([IngestStage(cfg, Path(lib_root), None, Resources(cpus=cpus))], cfg.execution)
            check_visible(Path(lib_root), cfg.execution)
        if lib is None:
            lib = Library(lib_root, write=True)
            todo = _todo(lib, [s.uri for s in items], cfg)
        summary = IngestSummary(sources=len(items), skipped=len(items) - len(todo), library=str(lib_root))
        if todo and no_ocr:   # said once the checks passed, so a refused job still says one line
            print("warning: text signals off: rapidocr-onnxruntime is not installed (it has no wheels for Python "
                  "3.13+), so text_area and ocr_text stay null; set signals.text.enabled=false to silence this",
                  file=sys.stderr)
        if todo:
            _ingest(lib, todo, cfg, summary, progress, t0)
        summary.library_clips = lib.read("clips", ["clip_id"]).num_rows
        # a library without clips has no view to refresh (and nothing to caption)
        if summary.library_clips and (summary.ingested or lib.view_is_stale()):
            summary.after = _after_ingest(lib.root, cfg, progress)
        summary.wall_seconds = time.perf_counter() - t0
        lib.record_run({"at": utcnow().isoformat(), "command": command, "config": to_dict(cfg),
                        "summary": dataclasses.asdict(summary)})
    finally:
        if lib is not None:
            lib.close()
        close_shared_runner()    # a local run's sandbox child (a Ray worker's goes with the worker)
    return summary


def _check_caption_model(caption_cfg: CaptionJobConfig) -> None:
    # the captioner's frame readers and backends cost the driver ~0.5 s and ~40 MB; only `after.caption` needs them
    from captioner.model import MissingModelError  # lazy: see above
    from captioner.openai_backend import RequestError  # lazy: see above
    from pipeline.caption.job import preflight  # lazy: see above

    if caption_cfg.model.backend == "signals":
        return
    if caption_cfg.model.backend == "transformers" and not caption_cfg.model.id:
        raise ConfigError("after.caption: no caption model configured: add it to the ingest config, e.g. "
                          "--set 'after.caption_set=[\"model.id=HF_ID_OR_FOLDER\"]' (or \"model.backend=signals\")")
    try:
        preflight(caption_cfg)
    except (MissingModelError, RequestError) as e:
        raise ConfigError(f"after.caption: {e}") from None


def _is_library(root: str | Path) -> bool:
    try:
        Library(root)
        return True
    except LibraryError:
        return False


def _todo(lib: Library | None, uris: list[str], cfg: IngestConfig) -> list[str]:
    """Sources an earlier run has not handled: new ones, `failed` ones (something unexpected), and
    with `sources.retry_errors` those recorded as bad input too."""
    if lib is None:
        return uris
    handled = lib.handled_sources()
    again = {"failed", "error"} if cfg.sources.retry_errors else {"failed"}
    return [u for u in uris if handled.get(storable(u), "failed") in again]


def _ingest(lib: Library, todo: list[str], cfg: IngestConfig, summary: IngestSummary, progress: bool,
            t0: float) -> None:
    cpus, threads = plan_resources(cfg, len(todo), cluster_cpus(cfg.execution))
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, threads=threads))
    claims = lib.start_claims()
    stage = IngestStage(cfg, lib.root.resolve(), claims, Resources(cpus=cpus))
    bar = SourcesBar(progress_bar(total=len(todo), unit="video", disable=not progress))
    pending: dict[str, list[dict[str, Any]]] = {}
    pending_videos, last_commit = 0, time.monotonic()
    seen: set[str] = set()

    def add(result: SourceResult) -> None:
        for table, rows in result.rows.items():
            pending.setdefault(table, []).extend(rows)

    # one block per video: a worker that dies (a decoder crash) loses that video only, and the job goes on
    try:
        for row in run_stages([stage], [{"uri": u} for u in largest_first(todo)], cfg.execution, one_block_per_batch=True,
                              tolerate_lost_batches=True):
            result: SourceResult = row["result"]
            seen.add(result.uri)
            summary.count(result)
            add(result)
            pending_videos += 1
            if result.no_space is not None:
                # every source after it would be decoded only to fail the same way: keep what is
                # done (this source `failed`, so retried) and stop in one line
                lib.commit(pending)
                raise LibraryError(f"{result.no_space}: the job stopped; the sources finished before are "
                                   "committed: free space (or move the library), then rerun the same command "
                                   "(the rest is redone)")
            if (pending_videos >= cfg.execution.commit_every
                    or time.monotonic() - last_commit >= cfg.execution.commit_every_seconds):
                lib.commit(pending)
                lib.compact()      # many small batches: a few parts per table, for every reader
                pending, pending_videos, last_commit = {}, 0, time.monotonic()
            bar.finished(**bar_postfix(summary, t0))
        for result in count_lost(todo, seen, summary, bar, t0):
            add(result)
    finally:
        bar.close()
    lib.commit(pending)
    lib.compact()
    claims.close()


def bar_postfix(summary: IngestSummary, t0: float) -> dict[str, Any]:
    """What the ingest bar shows beside the count: the run's clips, failures and speed so far."""
    elapsed = time.perf_counter() - t0
    return {"clips": summary.clips, "failed": summary.failed,
            "video_s_per_s": f"{summary.video_seconds / max(elapsed, 1e-6):.1f}"}


def count_lost(todo: list[str], seen: set[str], summary: IngestSummary, bar: SourcesBar,
               t0: float) -> list[SourceResult]:
    """The sources of `todo` that produced no result (their Ray worker died: a batch lost under
    `tolerate_lost_batches`), each `failed` with worker_crashed: counted in the summary and on the
    bar, which is still open (it used to end short, failed=0, above a summary saying they failed);
    returns their results, for the caller to commit."""
    lost = [error_result(uri, None, "worker", "worker_crashed",
                         "the worker process died while ingesting this source", outcome="failed")
            for uri in todo if uri not in seen]
    for result in lost:
        summary.count(result)
        bar.finished(**bar_postfix(summary, t0))
    return lost


class SourcesBar:
    """The ingest progress bar: sources finished, plus the share done of each one in flight
    (`IN_FLIGHT`, a local run's), redrawn every `every_s` by a thread of its own, so a long
    video moves the bar and its ETA while it is being ingested."""

    def __init__(self, bar: tqdm, every_s: float = 1.0):
        self.bar = bar
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(every_s,), name="ingest-bar", daemon=True)
        if not bar.disable:
            self._thread.start()

    def position(self) -> float:
        """Sources' worth of work done: whole when nothing is in flight, one decimal otherwise."""
        at = self.done + IN_FLIGHT.total()
        return self.done if at - self.done < 0.05 else round(at, 1)

    def finished(self, **postfix: Any) -> None:
        with self._lock:
            self.done += 1
            self.bar.set_postfix(refresh=False, **postfix)
            self.bar.n = self.position()
            self.bar.refresh()

    def _tick(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            with self._lock:
                self.bar.n = self.position()
                self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.n = self.done
        self.bar.close()


def largest_first(uris: list[str]) -> list[str]:
    """Local files biggest first, so a run does not end on one long video while the other workers
    idle (longest-processing-time-first, with size for time); after them the sources whose size is
    not known here (remote ones). Equal sizes keep their order, so of two copies of one file the one
    named first is still the one ingested (the other is its duplicate)."""
    def size(uri: str) -> int:
        try:
            return os.stat(uri).st_size
        except (OSError, ValueError):
            return -1
    return sorted(uris, key=lambda u: -size(u))


def _after_ingest(lib_root: Path, cfg: IngestConfig, progress: bool) -> list[str]:
    """The stages that read the committed library: the filter view, then (optionally) captions;
    returns what they did, for the run's summary."""
    said = []
    if cfg.after.filter:
        # the thresholds of the view being refreshed (`recap filter --set ...` stays in force)
        found = read_view(lib_root)
        filters = from_saved_config(found[1]) if found and found[1] else load_filter_config()
        view, _ = run_filters(lib_root, filters)
        said.append(f"filter view: {sum(view.column('passed').to_pylist())} of {view.num_rows} clips pass")
    if cfg.after.caption:
        from pipeline.caption.job import run_caption  # lazy: see _check_caption_model

        caption_cfg = load_caption_config(cfg.after.caption_config, cfg.after.caption_set)
        caption_cfg.execution.ray_address = caption_cfg.execution.ray_address or cfg.execution.ray_address
        result = run_caption(lib_root, caption_cfg, progress=progress)
        said.append(f"captions: version {result.version}: {result.captioned} new, {result.skipped} already done")
    return said

"""The caption job: the selected clips of a library through the caption stages, one version.

    clips (selected) ──► FramePrepStage ──► CaptionStage ──► driver: CaptionStore.append every
                                                              `execution.commit_every` clips

(see stages.py). `execution.executor: local` runs the same stages in this process without Ray
(tests, debugging, benchmarks); the signal captioner always does, as it has no model.

Before any work: the model (or the openai server) is checked, so missing weights fail with a clear
message and nothing written. Clips that already have a final caption of this version are skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow.compute as pc

from captioner.captioner import make_backend, signal_spec, version_id, version_spec
from captioner.model import resolve_model
from captioner.prompts import load_prompt
from index.catalog import compile_for_schema
from index.where import WhereError
from pipeline.caption.config import CaptionJobConfig
from pipeline.caption.stages import CLIP_FIELDS, CaptionStage, FramePrepStage, SignalCaptionStage
from pipeline.library import CaptionStore, Library
from pipeline.stages.base import Stage
from pipeline.stages.runner import run_stages
from trainer.progress import progress_bar


@dataclass
class CaptionSummary:
    version: str = ""
    selected: int = 0
    skipped: int = 0                 # already captioned by this version
    captioned: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    output_tokens: int = 0
    wall_seconds: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.captioned += 1
        self.by_status[row["status"]] = self.by_status.get(row["status"], 0) + 1
        if row.get("reason"):
            key = row["reason"].split(":")[0]
            self.by_reason[key] = self.by_reason.get(key, 0) + 1
        self.output_tokens += row.get("n_output_tokens") or 0


# ---- which clips --------------------------------------------------------------------------------
def select_clips(lib_root: str | Path, where: str | None = None, all_clips: bool = False) -> list[dict[str, Any]]:
    """Clip rows to caption (CLIP_FIELDS, `source` = the video's uri): the clips that pass the
    filter view (all clips when there is no view or `all_clips`), narrowed by `where`, an
    expression in the tool's one filter language (index/where.py) over the library's clip table."""
    clips = Library(lib_root).clip_table()
    if "passed" in clips.column_names and not all_clips:
        clips = clips.filter(pc.fill_null(clips.column("passed"), False))
    if where:
        try:
            clips = clips.filter(compile_for_schema(where, clips.schema).arrow())
        except WhereError as e:      # said as `recap search` and `recap export` say it
            raise WhereError(f"--where: {e}") from None
    return clips.select([c for c in CLIP_FIELDS if c in clips.column_names]).to_pylist()


# ---- running -----------------------------------------------------------------------------------------
def caption_stages(cfg: CaptionJobConfig, lib_root: str, backend: Any = None) -> list[Stage]:
    """The job's stages for `cfg`'s backend."""
    if cfg.model.backend == "signals":
        return [SignalCaptionStage()]
    return [FramePrepStage(cfg, lib_root, cfg.execution.cpus_per_task), CaptionStage(cfg, backend)]


def run_caption(lib_root: str | Path, cfg: CaptionJobConfig, where: str | None = None, all_clips: bool = False,
                limit: int | None = None, progress: bool = True, backend: Any = None) -> CaptionSummary:
    """Caption the selected clips of a library with one version; return what was done.

    Raises MissingModelError (or RequestError for the openai backend) before writing anything
    when the model cannot be loaded; `backend` injects an already loaded one (runs in-process)."""
    lib = Library(lib_root)
    with lib.lock("caption"):
        return _run_caption(lib, cfg, where, all_clips, limit, progress, backend)


def _run_caption(lib: Library, cfg: CaptionJobConfig, where: str | None, all_clips: bool, limit: int | None,
                 progress: bool, backend: Any) -> CaptionSummary:
    t0 = time.perf_counter()
    lib_root = str(lib.root.resolve())
    store = lib.captions
    signals = cfg.model.backend == "signals"
    spec = signal_spec() if signals else version_spec(cfg, load_prompt(cfg.prompt.id))
    summary = CaptionSummary(version=version_id(spec))
    rows = select_clips(lib_root, where, all_clips)
    done = store.done(summary.version)
    todo = [r for r in rows if r["clip_id"] not in done]
    summary.selected, summary.skipped = len(rows), len(rows) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    if todo:
        execution = cfg.execution
        if signals or backend is not None:
            # the signal caption has no model and costs microseconds a clip: Ray would only add its start
            execution = dataclasses.replace(execution, executor="local")
        if execution.uses_ray:
            preflight(cfg)
        stages = caption_stages(cfg, lib_root, backend)
        bar = progress_bar(total=len(todo), unit="clip", disable=not progress or signals)
        # closed on the way out of an interrupted run too: what finished is committed then, not at exit
        with contextlib.closing(_commit(store, run_stages(stages, todo, execution), cfg.execution.commit_every,
                                        summary)) as committed:
            for _ in committed:
                bar.update(1)
                bar.set_postfix(tok_s=f"{summary.output_tokens / max(time.perf_counter() - t0, 1e-6):.1f}")
        bar.close()
        store.compact()     # many parts of a few hundred captions: one, so every reader opens one file
    if store.default() is None and any(v["version"] == summary.version and v["counts"].get("ok")
                                       for v in store.versions()):
        # the first version written is what export uses until changed (also when a crash came
        # between its last captions and this mark: the rerun has nothing new to caption)
        store.set_default(summary.version)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _commit(store: CaptionStore, rows: Iterable[dict[str, Any]], every: int,
            summary: CaptionSummary) -> Iterator[dict[str, Any]]:
    """Append rows to the store in parts of `every`, yielding each row once it is counted. Rows
    already captioned are appended also when the job stops early (Ctrl-C, a refused API key, a
    crash in a stage): up to `every` finished captions are not thrown away. A part is let go only
    once written, so an interrupt during its write leaves it to the final append (the store keeps
    one row per clip and version, so a part written twice reads once)."""
    pending: list[dict[str, Any]] = []
    try:
        for row in rows:
            summary.add(row)
            pending.append(row)
            if len(pending) >= every:
                store.append(pending)
                pending = []
            yield row
    finally:
        store.append(pending)


def preflight(cfg: CaptionJobConfig) -> None:
    """Fail before any work when the model cannot be found (MissingModelError, or RequestError
    for a server that does not answer): nothing is written."""
    if cfg.model.backend == "transformers":
        resolve_model(cfg.model.id, cfg.model.revision, cfg.model.allow_download)
    elif cfg.model.backend == "openai":
        make_backend(cfg)

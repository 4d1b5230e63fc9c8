"""Captioning as pipeline stages: CPU frame preparation, then generation in an actor pool.

    clips (selected) ──► FramePrepStage (Ray tasks, CPU: decord + resize + prompt)
                     ──► CaptionStage   (Ray actor pool: model loaded once per actor, GPUs if configured)
                     ──► driver: CaptionStore.append every `execution.commit_every` clips

Preparation is its own stage so decoding never runs on (or waits for) the GPU actors; Ray Data
streams prepared batches to the actors as they free up. `local=True` runs the same two stages in
this process without Ray (tests, debugging, benchmarks).

Before any work: the model (or the openai server) is checked, so missing weights fail with a clear
message and nothing written. Clips that already have a final caption of this version are skipped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from captioner.config import CaptionConfig


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
    """Clip rows to caption, each with its source `video_uri`: the clips that pass the filter view
    (all clips when there is no view or `all_clips`), narrowed by `where`, an expression in the
    tool's one filter language (index/where.py) over the clips columns and `passed`."""
    from index.catalog import compile_for_schema
    from pipeline.filters import read_clips, read_view
    from pipeline.library import Library

    lib = Library(lib_root)
    clips = read_clips(lib_root)
    view = read_view(lib_root)
    if view is not None:
        clips = _join_view(clips, view[0])
        if not all_clips:
            clips = clips.filter(pc.fill_null(clips.column("passed"), False))
    if where:
        clips = clips.filter(compile_for_schema(where, clips.schema).arrow())
    videos = lib.read("videos", ["video_id", "uri"])
    uris = dict(zip(videos.column("video_id").to_pylist(), videos.column("uri").to_pylist()))
    rows = clips.select([c for c in ROW_COLUMNS if c in clips.column_names]).to_pylist()
    for row in rows:
        row["video_uri"] = uris.get(row["video_id"])
    return rows


# what preparation, prompt hints and the signal caption read from a clip row (nothing bulky)
ROW_COLUMNS = ["clip_id", "video_id", "clip_mode", "start_frame", "end_frame", "duration_s", "fps", "width",
               "height", "path", "file_start_frame", "camera_motion", "motion_score", "brightness", "contrast",
               "colorfulness", "bars", "ocr_text", "text_area"]


def _join_view(clips: pa.Table, view: pa.Table) -> pa.Table:
    index = {cid: i for i, cid in enumerate(view.column("clip_id").to_pylist())}
    take = pa.array([index.get(c) for c in clips.column("clip_id").to_pylist()], pa.int64())
    for name in ("passed", "reject_reasons"):
        if name not in clips.column_names:
            clips = clips.append_column(name, view.column(name).take(take))
    return clips


# ---- the two stages -------------------------------------------------------------------------------
class FramePrepStage:
    """CPU: sample and resize each clip's frames with decord and render its prompt."""

    name = "caption_frames"

    def __init__(self, cfg: CaptionConfig, lib_root: str):
        from captioner.frames import FrameReader
        from captioner.prompts import load_prompt

        self.cfg = cfg
        self.lib_root = lib_root
        self.prompt = load_prompt(cfg.prompt.id)
        self.reader = FrameReader()

    def resources(self) -> dict[str, float]:
        # memory: a prepared batch at its largest (RGB frames, held twice while it becomes Arrow),
        # so Ray does not start more preparation tasks than the node's memory holds
        f = self.cfg.frames
        batch_bytes = self.cfg.batch_size * max(f.num_frames, f.max_frames) * f.max_pixels * 3
        return {"num_cpus": self.cfg.execution.prep_cpus, "memory": 2 * batch_bytes}

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from captioner.captioner import prepare_clip

        out = []
        for row in rows:
            item: dict[str, Any] = {"clip_id": row["clip_id"], "error": None, "frames": None, "shape": None,
                                    "prompt": None, "fps": None, "indices": None, "clip_frames": None}
            try:
                req = prepare_clip(row, self.lib_root, row.get("video_uri"), self.cfg, self.prompt, self.reader)
                item.update(frames=req.frames.tobytes(), shape=list(req.frames.shape), prompt=req.prompt,
                            fps=req.fps, indices=req.indices, clip_frames=req.clip_frames)
            except Exception as e:  # unreadable clip: an error row, the job goes on
                item["error"] = f"frames: {type(e).__name__}: {e}"
            out.append(item)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(self.process_rows(batch.to_pylist()), schema=PREPARED_SCHEMA)


PREPARED_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("error", pa.string()), ("frames", pa.binary()), ("shape", pa.list_(pa.int32())),
    ("prompt", pa.string()), ("fps", pa.float64()), ("indices", pa.list_(pa.int32())), ("clip_frames", pa.int64()),
])


class CaptionStage:
    """Generation: the model loaded once (`setup`), prepared clips in, caption rows out."""

    name = "caption"

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.captioner = None

    def resources(self) -> dict[str, float]:
        e = self.cfg.execution
        return {"num_cpus": e.cpus_per_actor, "num_gpus": e.gpus_per_actor}

    def setup(self, backend=None) -> None:
        from captioner.captioner import Captioner

        self.captioner = Captioner(self.cfg, backend)

    def process_rows(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from captioner.captioner import error_row
        from captioner.model import ClipRequest

        if self.captioner is None:
            self.setup()
        ok = [it for it in items if not it["error"]]
        requests = [ClipRequest(it["clip_id"], np.frombuffer(it["frames"], np.uint8).reshape(it["shape"]),
                                it["prompt"], fps=it["fps"], indices=list(it["indices"]),
                                clip_frames=it["clip_frames"]) for it in ok]
        by_id = {r["clip_id"]: r for r in self.captioner.caption(requests)}
        return [by_id[it["clip_id"]] if not it["error"] else error_row(it["clip_id"], self.captioner.columns,
                                                                         it["error"]) for it in items]


class _CaptionActor:
    """Ray actor wrapper of CaptionStage (constructed once per actor: the model loads once)."""

    def __init__(self, cfg: CaptionConfig):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per actor is noise in the driver's log
        self.stage = CaptionStage(cfg)
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = self.stage.process_rows(batch.to_pylist())
        return pa.table({"row": [json.dumps(r, default=str) for r in rows]})


# ---- running -----------------------------------------------------------------------------------------
def run_caption(lib_root: str | Path, cfg: CaptionConfig, where: str | None = None, all_clips: bool = False,
                limit: int | None = None, local: bool = False, ray_address: str | None = None,
                progress: bool = True, backend=None) -> CaptionSummary:
    """Caption the selected clips of a library with one version; return what was done.

    Raises MissingModelError (or RequestError for the openai backend) before writing anything
    when the model cannot be loaded; `backend` injects an already loaded one (local runs)."""
    from captioner.captioner import Captioner, signal_rows, signal_spec, version_spec
    from captioner.prompts import load_prompt
    from captioner.versions import CaptionStore, version_id

    t0 = time.perf_counter()
    lib_root = str(Path(lib_root).resolve())
    store = CaptionStore(lib_root)
    signals = cfg.model.backend == "signals"
    spec = signal_spec() if signals else version_spec(cfg, load_prompt(cfg.prompt.id))
    summary = CaptionSummary(version=version_id(spec))
    rows = select_clips(lib_root, where, all_clips)
    done = store.done(summary.version)
    todo = [r for r in rows if r["clip_id"] not in done]
    summary.selected, summary.skipped = len(rows), len(rows) - len(todo)
    if limit is not None:
        todo = todo[:limit]

    if todo and signals:
        for _ in _commit(store, signal_rows(todo), cfg.execution.commit_every, summary):
            pass
    elif todo:
        if local or backend is not None:
            captioner = Captioner(cfg, backend)  # loads (or checks) the model before any row is written
            stream = _local_stream(todo, cfg, lib_root, captioner)
        else:
            stream = _ray_stream(todo, cfg, lib_root, ray_address)
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="clip", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for _ in _commit(store, stream, cfg.execution.commit_every, summary):
            bar.update(1)
            bar.set_postfix(tok_s=f"{summary.output_tokens / max(time.perf_counter() - t0, 1e-6):.1f}")
        bar.close()
    if store.default() is None and summary.by_status.get("ok"):
        store.set_default(summary.version)  # the first version written is what export uses until changed
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _commit(store, rows: Iterator[dict[str, Any]] | list[dict[str, Any]], every: int,
            summary: CaptionSummary) -> Iterator[dict[str, Any]]:
    """Append rows to the store in parts of `every`, yielding each row once it is counted."""
    pending: list[dict[str, Any]] = []
    for row in rows:
        summary.add(row)
        pending.append(row)
        if len(pending) >= every:
            store.append(pending)
            pending = []
        yield row
    store.append(pending)


def _local_stream(todo: list[dict[str, Any]], cfg: CaptionConfig, lib_root: str, captioner) -> Iterator[dict[str, Any]]:
    prep = FramePrepStage(cfg, lib_root)
    stage = CaptionStage(cfg)
    stage.captioner = captioner
    size = cfg.batch_size
    for start in range(0, len(todo), size):
        yield from stage.process_rows(prep.process_rows(todo[start:start + size]))


def _ray_stream(todo: list[dict[str, Any]], cfg: CaptionConfig, lib_root: str,
                ray_address: str | None) -> Iterator[dict[str, Any]]:
    _preflight(cfg)
    for row in build_dataset(todo, cfg, lib_root, ray_address).iter_rows():
        yield json.loads(row["row"])


def build_dataset(todo: list[dict[str, Any]], cfg: CaptionConfig, lib_root: str, ray_address: str | None = None):
    """The Ray Data plan: clip rows -> FramePrepStage (tasks) -> CaptionStage (actor pool) -> rows as JSON."""
    import logging

    import ray
    import ray.data

    from pipeline.ingest import init_ray

    init_ray(ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    prep = FramePrepStage(cfg, lib_root)
    prep_args = prep.resources()
    gen_args = CaptionStage(cfg).resources()
    # about one batch per block, so prepared batches stream to the actors as they are ready
    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(1000, -(-len(todo) // cfg.batch_size))))
    # Ray Data fuses a task stage into the next actor stage when their remote args are equal (the
    # actors would then decode too, serially). Preparation reserves memory for its frames, the
    # actors do not: the args differ and the stages stay apart (a test checks Ray's stats).
    ds = ds.map_batches(prep, batch_size=cfg.batch_size, batch_format="pyarrow",
                        compute=ray.data.TaskPoolStrategy(), **prep_args)
    return ds.map_batches(_CaptionActor, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.batch_size,
                          batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.execution.actors),
                          num_cpus=gen_args["num_cpus"], num_gpus=gen_args["num_gpus"] or None)


def _preflight(cfg: CaptionConfig) -> None:
    """Fail before starting Ray when the model cannot be found (nothing is written)."""
    from captioner.model import resolve_model

    if cfg.model.backend == "transformers":
        resolve_model(cfg.model.id, cfg.model.revision)
    elif cfg.model.backend == "openai":
        from captioner.captioner import make_backend

        make_backend(cfg)

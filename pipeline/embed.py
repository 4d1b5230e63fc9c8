"""The index job: embed the clips whose vector is missing or stale, then make the Milvus collection
match the library (`recap index`).

    clips to embed ──► ClipFramesStage (tasks, CPU: frames sampled with decord; visual embedders only)
                   ──► EmbedStage      (actors: the embedder loaded once)  -> vectors
                   ──► driver: one `LIB/embeddings/<name>/` part every `execution.commit_every` clips

The index (`index.api.ClipIndex`) decides what is stale and owns the collection; this module runs
the embedders over the library as stages. By default the job runs in this process (the bundled
caption embedder takes milliseconds per clip); `execution.executor: ray` spreads a visual embedder
over GPU actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.api import ClipIndex, NothingToIndex, Reconcile, model_id_of
from index.config import EmbedderConfig, IndexConfig
from index.embedders import load_embedder
from index.store import StoreDamaged
from pipeline.library.embeddings import EMBEDDINGS
from pipeline.library.files import writable_folder
from pipeline.library.tables import checked_clip_row
from pipeline.stages.base import Resources, Row, Stage
from pipeline.stages.execution import ExecutionConfig
from pipeline.stages.runner import run_stages
from trainer.progress import progress_bar
from trainer.typedconfig import load_with_defaults

FRAME_PIXELS = 448 * 448   # frames are shrunk to this budget while read; CLIP/SigLIP resize to 224-384 anyway


@dataclass
class IndexJobConfig(IndexConfig):
    execution: ExecutionConfig = field(default_factory=lambda: ExecutionConfig(executor="local", commit_every=512))


def load_index_config(path: str | Path | None = None, overrides: list[str] | None = None) -> IndexJobConfig:
    """Defaults from `configs/index.yaml`, then the user's file, then `--set` overrides."""
    return load_with_defaults(IndexJobConfig, "index.yaml", path, overrides)


class ClipFramesStage(Stage):
    """CPU: `frames` frames spread evenly over each clip (RGB); a clip that cannot be read gets none."""

    name = "embed_frames"
    reads = ("clip_id", "path", "file_start_frame", "start_frame", "end_frame", "fps", "source")
    adds = ("frames",)

    def __init__(self, lib_root: Path, frames: int, cpus: float, batch_size: int):
        self.lib_root = str(lib_root)
        self.frames = frames
        self.resources = Resources(cpus=cpus)
        self.batch_size = batch_size
        self.reader: Any = None

    def folders(self) -> tuple[str, ...]:
        return (self.lib_root,)

    def setup(self) -> None:
        # not in every `recap search`, which imports this module for its config:
        # lazy: frame decoding (av, cv2, decord) loads only where a visual embedder reads frames
        from captioner.frames import FrameReader

        self.reader = FrameReader()

    def process(self, batch: list[Row]) -> list[Row]:
        # lazy: loaded by setup() already (see there)
        from captioner.frames import clip_source, sample_indices

        out = []
        for row in batch:
            try:
                source = clip_source(checked_clip_row(self.lib_root, row), self.lib_root, row.get("source"))
                indices = sample_indices(source.end - source.start, source.fps, num_frames=self.frames,
                                         max_frames=self.frames)
                frames = self.reader.read(source, indices, FRAME_PIXELS)
            except Exception:  # unreadable media: no vector for this clip, counted by the driver
                frames = None
            out.append({"clip_id": row["clip_id"], "hash": row["hash"], "frames": frames})
        return out


class EmbedStage(Stage):
    """The embedder, loaded once per actor: rows with `text` (caption embedders) or `frames`
    (visual embedders) in, rows with `vector` out; rows without input are dropped."""

    name = "embed"
    reads = ("clip_id", "hash", "text", "frames")
    adds = ("vector",)

    def __init__(self, cfg: EmbedderConfig, execution: ExecutionConfig):
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.resources = Resources(cpus=execution.cpus_per_actor, gpus=execution.gpus_per_actor)
        self.actors = execution.actors
        self.model: Any = None

    def setup(self) -> None:
        if self.model is None:
            self.model = load_embedder(self.cfg.kind, self.cfg.model, self.cfg.device, self.cfg.batch_size)

    def process(self, batch: list[Row]) -> list[Row]:
        if self.cfg.kind == "text":
            rows = [r for r in batch if r.get("text")]
            vectors = self.model.embed_texts([r["text"] for r in rows]) if rows else []
        else:
            rows = [r for r in batch if r.get("frames") is not None and len(r["frames"])]
            vectors = self.model.embed_clips([list(r["frames"]) for r in rows]) if rows else []
        return [{"clip_id": r["clip_id"], "hash": r["hash"], "vector": np.asarray(v, np.float32)}
                for r, v in zip(rows, vectors)]


def embed_library(index: ClipIndex, execution: ExecutionConfig, log: Callable[[str], None] = print) -> dict[str, int]:
    """Embed every clip whose vector is missing or stale, for each enabled embedder; returns how
    many clips each embedder was given."""
    clips = index.clip_table()
    given: dict[str, int] = {}
    for name, e in index.cfg.enabled().items():
        stale = index.stale_embeddings(clips, name)
        given[name] = len(stale)
        if not stale:
            continue
        log(f"{name}: embedding {len(stale)} clips with {model_id_of(e)}")
        # the stale clips' rows, with only the columns the stages read (not the whole table as dicts)
        wanted = clips.filter(pc.is_in(clips.column("clip_id"), pa.array(list(stale), pa.string())))
        if e.kind == "text":
            items = [{"clip_id": r["clip_id"], "hash": stale[r["clip_id"]], "text": r["caption"]}
                     for r in wanted.select(["clip_id", "caption"]).to_pylist()]
            stages: list[Stage] = [EmbedStage(e, execution)]
        else:
            cols = [c for c in ClipFramesStage.reads if c in wanted.column_names]
            items = [dict(r, hash=stale[r["clip_id"]]) for r in wanted.select(cols).to_pylist()]
            stages = [ClipFramesStage(index.root, e.frames, execution.cpus_per_task, e.batch_size),
                      EmbedStage(e, execution)]
        done = 0
        pending: list[Row] = []
        with progress_bar(total=len(stale), desc=f"embed {name}", unit="clip") as bar:
            for row in run_stages(stages, items, execution):
                pending.append(row)
                if len(pending) >= execution.commit_every:
                    done += _save(index, name, pending)
                    bar.update(len(pending))
                    pending = []
            done += _save(index, name, pending)
            bar.update(len(pending))
        if done < len(stale):
            log(f"{name}: {len(stale) - done} clips could not be read and have no vector (rerun to retry)")
        index.drop_superseded(name)
        index.compact_embeddings(name)     # one part, not one per few hundred clips
    return given


def _save(index: ClipIndex, name: str, rows: list[Row]) -> int:
    if rows:
        index.save_embeddings(name, [r["clip_id"] for r in rows], np.stack([r["vector"] for r in rows]),
                              [r["hash"] for r in rows])
    return len(rows)


def run_index(lib_root: str | Path, cfg: IndexJobConfig, embed: bool = True, milvus_uri: str | None = None,
              token: str | None = None, log: Callable[[str], None] = print, rebuild: bool = False) -> Reconcile:
    """Embed new clips (unless `embed=False`), then make the collection match Parquet; with
    `rebuild`, a Milvus Lite store is removed and built again from Parquet whatever state it is in.
    Raises NothingToIndex, before writing anything, when no enabled embedder has anything to embed."""
    with ClipIndex(lib_root, cfg, milvus_uri=milvus_uri, token=token) as index:
        reason = index.nothing_to_embed(index.clip_table())
        if reason:
            raise NothingToIndex(reason)
        # where the vectors (and a Lite store) go must take files before anything is embedded
        writable_folder(Path(lib_root))
        writable_folder(Path(lib_root) / EMBEDDINGS)
        try:
            # Lite: opening takes the store's lock (waiting for, then naming, another process holding
            # it) before anything is embedded; a server that is unreachable fails here. A Lite store
            # about to be rebuilt is not loaded (its rows would sit in memory until it is removed)
            store = index.store
            if not (rebuild and index.lite_path() is not None):
                store.exists()
        except StoreDamaged:
            if index.lite_path() is None:
                raise
            # a damaged Lite store is no reason to stop: `repair` rebuilds it from Parquet below
        # none while `recap remove` takes clips out: it would embed them, and sync them back into
        # Milvus, after the removal's cleanup (index runs themselves take turns on the store)
        with index.library.lock("index", shared=True):
            if embed:
                embed_library(index, cfg.execution, log)
            return index.repair(log, rebuild=rebuild)

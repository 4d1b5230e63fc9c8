"""The caption job's stages: CPU frame preparation, then generation in a pool of model actors; and
the signal caption, which needs no model.

    clip rows ──► FramePrepStage  (tasks, CPU: decord + resize + prompt)      -> ClipRequest per clip
              ──► CaptionStage    (actors: the model loaded once, GPUs if configured) -> caption rows

Preparation is its own stage so decoding never runs on (or waits for) the GPU actors: Ray Data
streams prepared batches to the actors as they free up.
"""

from __future__ import annotations

from typing import Any

from captioner.captioner import Captioner, error_row, prepare_clip, signal_rows
from captioner.config import CaptionConfig
from captioner.frames import FrameReader
from captioner.prompts import load_prompt
from pipeline.caption.config import CaptionJobConfig
from pipeline.library.tables import checked_clip_row
from pipeline.stages.base import Resources, Row, Stage

# what preparation, prompt hints and the signal caption read from a clip row (nothing bulky)
CLIP_FIELDS = ("clip_id", "video_id", "clip_mode", "start_frame", "end_frame", "duration_s", "fps", "width",
               "height", "path", "file_start_frame", "camera_motion", "motion_score", "brightness", "contrast",
               "colorfulness", "bars", "ocr_text", "text_area", "source")


class FramePrepStage(Stage):
    """CPU: sample and resize each clip's frames with decord and render its prompt. A clip that
    cannot be read gets an error instead of a request, and the job goes on."""

    name = "caption_frames"
    reads = CLIP_FIELDS
    adds = ("request", "error")

    def __init__(self, cfg: CaptionConfig, lib_root: str, cpus: float = 1.0):
        self.cfg = cfg
        self.lib_root = lib_root
        self.batch_size = cfg.batch_size
        # memory: a prepared batch at its largest (RGB frames, held twice while it is pickled), so Ray
        # starts no more preparation tasks than the node's memory holds
        f = cfg.frames
        batch_bytes = cfg.batch_size * max(f.num_frames, f.max_frames) * f.max_pixels * 3
        self.resources = Resources(cpus=cpus, memory=2 * batch_bytes)
        self.prompt = None
        self.reader = None

    def folders(self) -> tuple[str, ...]:
        return (str(self.lib_root),)

    def setup(self) -> None:
        self.prompt = load_prompt(self.cfg.prompt.id)
        self.reader = FrameReader()

    def process(self, batch: list[Row]) -> list[Row]:
        out = []
        for row in batch:
            try:
                request = prepare_clip(checked_clip_row(self.lib_root, row), self.lib_root, row.get("source"),
                                       self.cfg, self.prompt, self.reader)
                out.append({"clip_id": row["clip_id"], "request": request, "error": None})
            except Exception as e:  # unreadable clip: an error row, the job goes on
                out.append({"clip_id": row["clip_id"], "request": None, "error": f"frames: {type(e).__name__}: {e}"})
        return out


class CaptionStage(Stage):
    """Generation: the model loaded once per actor (`setup`), prepared clips in, caption rows out."""

    name = "caption"
    reads = ("clip_id", "request", "error")
    adds = ("text", "status", "reason")

    def __init__(self, cfg: CaptionJobConfig, backend: Any = None):
        self.cfg = cfg
        self.backend = backend          # an already loaded backend (in-process runs reuse it)
        self.batch_size = cfg.batch_size
        e = cfg.execution
        self.resources = Resources(cpus=e.cpus_per_actor, gpus=e.gpus_per_actor)
        self.actors = e.actors
        self.captioner: Captioner | None = None

    def setup(self) -> None:
        if self.captioner is not None:
            return
        if self.backend is None and self.cfg.model.backend == "transformers":
            from transformers.utils import logging as hf_logging  # lazy: only this backend loads transformers

            hf_logging.disable_progress_bar()   # a "Loading weights" bar per actor is noise in the driver's log
        self.captioner = Captioner(self.cfg, self.backend)

    def process(self, batch: list[Row]) -> list[Row]:
        ok = [it["request"] for it in batch if not it["error"]]
        by_id = {r["clip_id"]: r for r in self.captioner.caption(ok)}
        return [by_id[it["clip_id"]] if not it["error"] else error_row(it["clip_id"], self.captioner.columns,
                                                                         it["error"]) for it in batch]


class SignalCaptionStage(Stage):
    """The deterministic caption from measured signals: no model, microseconds per clip."""

    name = "signal_caption"
    reads = CLIP_FIELDS
    adds = ("text", "status")
    batch_size = 256

    def process(self, batch: list[Row]) -> list[Row]:
        return signal_rows(batch)

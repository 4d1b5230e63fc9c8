"""The caption job's config: the captioner's settings and how the job runs, from `configs/captioner.yaml`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from captioner.config import CaptionConfig
from pipeline.stages.execution import ExecutionConfig
from trainer.typedconfig import load_with_defaults


@dataclass
class CaptionJobConfig(CaptionConfig):
    execution: ExecutionConfig = field(default_factory=lambda: ExecutionConfig(commit_every=256))


def load_caption_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CaptionJobConfig:
    """Defaults from `configs/captioner.yaml`, then the user's file, then `--set` overrides."""
    return load_with_defaults(CaptionJobConfig, "captioner.yaml", path, overrides)

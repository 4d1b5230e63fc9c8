"""Typed export configuration; defaults live in `configs/export.yaml`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.stages.execution import ExecutionConfig
from trainer.typedconfig import ConfigError, load_with_defaults


@dataclass
class ExportConfig:
    val_fraction: float = 0.05
    seed: int = 0
    shard_size: str = "512MB"
    max_samples_per_shard: int = 10000
    bytes_per_pixel: float = 0.05
    crf: int = 18
    # auto, as configs/export.yaml: local on one machine, Ray with a ray_address
    execution: ExecutionConfig = field(default_factory=lambda: ExecutionConfig(executor="auto"))

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction must be in [0, 1)")
        parse_size(self.shard_size)
        if self.max_samples_per_shard < 1 or self.bytes_per_pixel <= 0 or not 0 <= self.crf <= 51:
            raise ConfigError("max_samples_per_shard >= 1, bytes_per_pixel > 0, 0 <= crf <= 51")


def load_export_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExportConfig:
    """Defaults from `configs/export.yaml`, then the user's file, then `key=value` overrides."""
    return load_with_defaults(ExportConfig, "export.yaml", path, overrides)


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


def parse_size(text: str | int) -> int:
    """`"512MB"` -> 536870912 (binary units: KB, MB, GB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"shard size must look like 512MB, 2GB or 800KB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])



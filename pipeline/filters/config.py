"""Typed filter configuration; defaults live in `configs/filters.yaml` (thresholds and their sources)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.typedconfig import ConfigError, default_config, from_dict, load_with_defaults


@dataclass
class FilterRule:
    column: str
    min: float | None = None
    max: float | None = None
    reject: list[str] = field(default_factory=list)   # categorical values that fail
    enabled: bool = True
    null: Literal["pass", "reject"] = "pass"          # what a missing measurement does

    def __post_init__(self) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"filter on {self.column}: min {self.min:g} is above max {self.max:g}")


@dataclass
class DedupConfig:
    enabled: bool = True
    hamming: int = 6
    min_matching_frames: int = 2
    within_video: bool = True
    bands: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.hamming < 32 or self.min_matching_frames < 1 or not 1 <= self.bands <= 16:
            raise ConfigError("dedup: 0 <= hamming < 32, min_matching_frames >= 1, 1 <= bands <= 16")


def shipped_rules() -> dict[str, FilterRule]:
    """The rules of configs/filters.yaml, the one place the default thresholds (and where each comes
    from) are written: FilterConfig() judges as `recap filter` does."""
    rules = (yaml.safe_load(default_config("filters.yaml").read_text()) or {}).get("filters") or {}
    return {name: from_dict(FilterRule, rule, f"filters.{name}") for name, rule in rules.items()}


@dataclass
class FilterConfig:
    filters: dict[str, FilterRule] = field(default_factory=shipped_rules)
    dedup: DedupConfig = field(default_factory=DedupConfig)


def load_filter_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FilterConfig:
    """Defaults from `configs/filters.yaml`, then the user's file, then `--set` overrides."""
    return load_with_defaults(FilterConfig, "filters.yaml", path, overrides)



def from_saved_config(saved: dict[str, Any]) -> FilterConfig:
    """The FilterConfig stored in a view's metadata."""
    return from_dict(FilterConfig, saved)

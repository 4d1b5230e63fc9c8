"""The stage model (base.py), the `execution` config (execution.py) and the runner (runner.py)."""

import importlib
from typing import TYPE_CHECKING

# Loaded on first use (PEP 562): the ingest config needs `execution` alone, and the ingest child,
# which reads that config, should not load the runner and pyarrow with it.
_EXPORTS = {"Resources": "base", "Row": "base", "Stage": "base", "ExecutionConfig": "execution",
            "run_stages": "runner"}

if TYPE_CHECKING:
    from pipeline.stages.base import Resources, Row, Stage
    from pipeline.stages.execution import ExecutionConfig
    from pipeline.stages.runner import run_stages

__all__ = ["Resources", "Row", "Stage", "ExecutionConfig", "run_stages"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.stages.{_EXPORTS[name]}"), name)

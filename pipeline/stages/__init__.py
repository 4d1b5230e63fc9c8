"""The stage model (base.py), the `execution` config (execution.py) and the runner (runner.py)."""

from pipeline.stages.base import Resources, Row, Stage
from pipeline.stages.execution import ExecutionConfig
from pipeline.stages.runner import run_stages

__all__ = ["Resources", "Row", "Stage", "ExecutionConfig", "run_stages"]

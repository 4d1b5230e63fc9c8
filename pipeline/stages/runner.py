"""Run a job's stages: on Ray Data (CPU stages as tasks, model stages as actor pools) or in this
process, one batch after another (`execution.executor: local`, for small jobs, tests and tools).

    for row in run_stages([PrepareStage(...), ModelStage(...)], items, cfg.execution):
        ...                                    # output rows of the last stage, as they finish

Rows travel between Ray workers pickled in one binary Arrow column, so a stage may hand on any
Python value (arrays of frames, result objects) without declaring an Arrow schema. This module is
also the one place that starts or joins Ray.
"""

from __future__ import annotations

import logging
import pickle
import sys
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import pyarrow as pa

from pipeline.stages.base import Row, Stage
from pipeline.stages.execution import ExecutionConfig, available_cpus

ROW = "row"            # the one column of the Arrow blocks: a pickled row
MAX_BLOCKS = 1000      # input blocks when the first stage's batches are many


def run_stages(stages: list[Stage], items: list[Row], execution: ExecutionConfig, *,
               one_block_per_batch: bool = False, tolerate_lost_batches: bool = False) -> Iterator[Row]:
    """Output rows of the last stage, in the order they finish.

    `one_block_per_batch` gives every first-stage batch its own Ray block, so a worker that dies
    loses that batch only; with `tolerate_lost_batches` the job then goes on without it (the caller
    sees which inputs produced no output). The local executor runs everything in this process."""
    if not stages:
        raise ValueError("a job needs at least one stage")
    if not items:
        return iter(())
    if execution.executor == "local":
        return _run_local(stages, items)
    return _run_ray(stages, items, execution, one_block_per_batch, tolerate_lost_batches)


# ---- in this process -------------------------------------------------------------------------------
def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def _processed(stage: Stage, rows: Iterable[Row]) -> Iterator[Row]:
    for batch in _batches(rows, stage.batch_size):
        yield from stage.process(batch)


def _run_local(stages: list[Stage], items: list[Row]) -> Iterator[Row]:
    for stage in stages:
        stage.setup()
    rows: Iterable[Row] = items
    for stage in stages:
        rows = _processed(stage, rows)
    yield from rows


# ---- on Ray ------------------------------------------------------------------------------------------
def init_ray(address: str = "") -> None:
    """Start a fresh local Ray (never join a stray cluster silently), or join `address`."""
    import ray  # lazy: Ray costs seconds to import, and local jobs never need it

    if ray.is_initialized():
        return
    # notices that are not about this job: token auth being on (Ray's default), Ray Data's progress
    # bars being off (recap draws its own), its per-operator execution plans
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", include_dashboard=False, **kwargs)


def cluster_cpus(execution: ExecutionConfig) -> float:
    """CPUs the job can use: the Ray cluster's (started or joined here), or this machine's."""
    if execution.executor == "local":
        return float(available_cpus())
    import ray  # lazy: see init_ray

    init_ray(execution.ray_address)
    return float(ray.cluster_resources().get("CPU", 1.0))


def worker_node() -> str | None:
    """Ray node id of the process running this code, None outside Ray."""
    if "ray" not in sys.modules:
        return None
    import ray  # lazy: only asked when Ray is already loaded

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _encode(rows: list[Row]) -> pa.Table:
    return pa.table({ROW: pa.array([pickle.dumps(r, protocol=5) for r in rows], pa.large_binary())})


def _decode(block: pa.Table) -> list[Row]:
    return [pickle.loads(b) for b in block.column(ROW).to_pylist()]


def _task_fn(stage: Stage):
    """The function Ray Data maps over blocks for a CPU stage; named after the stage (Ray's stats
    and errors show it). `setup` runs once per worker process that deserialises it."""
    ready = []

    def fn(block: pa.Table) -> pa.Table:
        if not ready:
            stage.setup()
            ready.append(True)
        return _encode(stage.process(_decode(block)))

    fn.__name__ = fn.__qualname__ = stage.name
    return fn


class _StageActor:
    """A model stage in a Ray actor: set up (the model loaded) once, then fed batches."""

    def __init__(self, stage: Stage):
        self.stage = stage
        stage.setup()

    def __call__(self, block: pa.Table) -> pa.Table:
        return _encode(self.stage.process(_decode(block)))


def _actor_class(stage: Stage) -> type:
    return type(stage.name, (_StageActor,), {"__module__": __name__})


def _run_ray(stages: list[Stage], items: list[Row], execution: ExecutionConfig, one_block_per_batch: bool,
             tolerate_lost_batches: bool) -> Iterator[Row]:
    ds = ray_dataset(stages, items, execution, one_block_per_batch=one_block_per_batch,
                     tolerate_lost_batches=tolerate_lost_batches)
    for row in ds.iter_rows():
        yield pickle.loads(row[ROW])


def ray_dataset(stages: list[Stage], items: list[Row], execution: ExecutionConfig, *,
                one_block_per_batch: bool = False, tolerate_lost_batches: bool = False):
    """The Ray Data plan of a job, not yet executed (its rows hold pickled output rows)."""
    import ray.data  # lazy: see init_ray

    init_ray(execution.ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1 if tolerate_lost_batches else 0

    batches = -(-len(items) // stages[0].batch_size)
    blocks = batches if one_block_per_batch else min(batches, MAX_BLOCKS)
    ds = ray.data.from_items([{ROW: pickle.dumps(it, protocol=5)} for it in items], override_num_blocks=blocks)
    for stage in stages:
        res = stage.resources
        args: dict[str, Any] = {"batch_size": stage.batch_size, "batch_format": "pyarrow", "num_cpus": res.cpus,
                                "num_gpus": res.gpus or None, "memory": res.memory or None}
        if stage.actors:
            ds = ds.map_batches(_actor_class(stage), fn_constructor_kwargs={"stage": stage},
                                compute=ray.data.ActorPoolStrategy(size=stage.actors), **args)
            continue
        with warnings.catch_warnings():
            # Ray Data retries a task whose worker died forever by default; a batch that crashes its
            # worker (a decoder bug) is tried `max_retries` times only, which 2.60 takes as a
            # (deprecated) remote argument
            warnings.simplefilter("ignore", category=DeprecationWarning)
            ds = ds.map_batches(_task_fn(stage), max_retries=stage.max_retries,
                                compute=ray.data.TaskPoolStrategy(size=execution.max_tasks_in_flight or None),
                                **args)
    return ds

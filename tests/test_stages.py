"""The stage runner: the same stages give the same rows in-process and on Ray; a model stage loads
once per actor; a worker that dies loses its own batch only, and stages stay apart on Ray."""

from __future__ import annotations

import os
import threading

import pytest

from pipeline.stages.base import Resources, Row, Stage
from pipeline.stages.execution import ExecutionConfig
from pipeline.stages.runner import ray_dataset, run_stages
from trainer.typedconfig import ConfigError


class Square(Stage):
    """CPU stage: squares `x`; `x == crash_on` kills its worker process."""

    name = "square"
    reads = ("x",)
    adds = ("y",)

    def __init__(self, crash_on: int | None = None):
        self.crash_on = crash_on
        self.batch_size = 1

    def process(self, batch: list[Row]) -> list[Row]:
        if any(r["x"] == self.crash_on for r in batch):
            os._exit(1)     # what a decoder crash does to a worker
        return [dict(r, y=r["x"] ** 2) for r in batch]


class AddModel(Stage):
    """Model stage: `setup` "loads a model" (counted per process), then adds its offset."""

    name = "add_model"
    reads = ("y",)
    adds = ("z", "loads", "pid")

    def __init__(self, offset: int, actors: int = 1):
        self.offset = offset
        self.actors = actors
        self.batch_size = 2
        self.resources = Resources(cpus=0.5)
        self.model = None
        self.loads = 0

    def setup(self) -> None:
        self.loads += 1
        self.model = self.offset

    def process(self, batch: list[Row]) -> list[Row]:
        return [dict(r, z=r["y"] + self.model, loads=self.loads, pid=os.getpid()) for r in batch]


ITEMS = [{"x": i} for i in range(6)]


def test_local_runs_every_stage_in_order_in_this_process():
    model = AddModel(100)
    rows = list(run_stages([Square(), model], ITEMS, ExecutionConfig(executor="local")))
    assert [r["z"] for r in rows] == [i * i + 100 for i in range(6)]
    assert {r["pid"] for r in rows} == {os.getpid()} and model.loads == 1


class Waiter(Stage):
    """A concurrent CPU stage whose batches wait on each other: they finish only when `together`
    batches are in process() at once (as ingest threads wait on their sandbox children)."""

    name = "waiter"
    concurrent = True

    def __init__(self, together: int):
        self.barrier = threading.Barrier(together, timeout=30)
        self.lock = threading.Lock()
        self.running = self.most = 0

    def process(self, batch: list[Row]) -> list[Row]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.barrier.wait()
        with self.lock:
            self.running -= 1
        return [dict(r, thread=threading.get_ident()) for r in batch]


def test_local_runs_a_concurrent_stage_on_several_threads_never_more_than_allowed():
    stage = Waiter(together=2)
    rows = list(run_stages([stage], ITEMS, ExecutionConfig(executor="local", max_tasks_in_flight=2)))
    assert sorted(r["x"] for r in rows) == list(range(6))
    assert stage.most == 2 and len({r["thread"] for r in rows}) == 2


def test_auto_is_local_without_an_address_and_ray_with_one():
    assert not ExecutionConfig(executor="auto").uses_ray
    assert ExecutionConfig(executor="auto", ray_address="auto").uses_ray
    stage = Waiter(together=1)
    rows = list(run_stages([stage, AddModel(1)], [{"x": 0, "y": 0}], ExecutionConfig(executor="auto")))
    assert rows[0]["pid"] == os.getpid()


def test_no_items_no_work():
    assert list(run_stages([Square()], [], ExecutionConfig(executor="ray"))) == []


@pytest.mark.slow
def test_ray_matches_local_loads_once_per_actor_and_survives_a_dead_worker(capfd: pytest.CaptureFixture):
    execution = ExecutionConfig(executor="ray")
    rows = list(run_stages([Square(), AddModel(100)], ITEMS, execution))
    assert sorted(r["z"] for r in rows) == [i * i + 100 for i in range(6)]
    assert {r["loads"] for r in rows} == {1} and len({r["pid"] for r in rows}) == 1   # one actor, loaded once
    assert os.getpid() not in {r["pid"] for r in rows}

    # the task of item 3 kills its worker (twice: it is retried); the others still come back
    survivors = run_stages([Square(crash_on=3)], ITEMS, execution, one_block_per_batch=True,
                           tolerate_lost_batches=True)
    assert sorted(r["x"] for r in survivors) == [0, 1, 2, 4, 5]
    # the caller reports the lost batch: Ray Data's traceback for it would read as a crash
    assert "Traceback" not in capfd.readouterr().err

    # a task stage and a model stage stay two operators (the actors never decode)
    ds = ray_dataset([Square(), AddModel(1)], ITEMS, execution)
    assert len(list(ds.iter_rows())) == 6
    stats = ds.stats()
    assert "MapBatches(square)" in stats and "MapBatches(add_model)" in stats
    assert "MapBatches(square)->MapBatches(add_model)" not in stats


@pytest.mark.slow
def test_a_stage_no_node_can_hold_fails_before_scheduling():
    """`execution.cpus_per_task=1000` (or more GPUs per actor than any node has) waited forever for
    a node that does not exist; now it is a ConfigError naming the key, before anything runs."""
    big_task = Square()
    big_task.resources = Resources(cpus=1000)
    with pytest.raises(ConfigError, match=r"execution\.cpus_per_task: the 'square' stage asks for 1000 CPUs"):
        list(run_stages([big_task], ITEMS, ExecutionConfig(executor="ray")))
    gpu_model = AddModel(1)
    gpu_model.resources = Resources(cpus=0.5, gpus=64)
    with pytest.raises(ConfigError, match=r"execution\.gpus_per_actor"):
        list(run_stages([Square(), gpu_model], ITEMS, ExecutionConfig(executor="ray")))

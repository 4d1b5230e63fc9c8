"""How a job's stages run: the `execution` section that every job config shares."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

from trainer.typedconfig import ConfigError


def check_range(key: str, value: float | None, low: float | None = None, high: float | None = None, *,
                above: bool = False, optional: bool = False) -> None:
    """ConfigError naming `key` unless `value` is a finite number in [low, high] (`above`: > low).
    `optional`: None is allowed too. Every config section checks its values with this at load,
    so a bad value fails before any work, not in a traceback (or a hang) later."""
    if value is None and optional:
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    section, _, name = key.rpartition(".")
    where = f"{section}: {name}" if section else name      # "execution: actors >= 1 (got 0)"
    if low is not None and (value <= low if above else value < low):
        raise ConfigError(f"{where} {'>' if above else '>='} {low:g} (got {value!r})")
    if high is not None and value > high:
        raise ConfigError(f"{where} <= {high:g} (got {value!r})")


@dataclass
class ExecutionConfig:
    # ray: Ray Data (a local Ray, or the cluster at ray_address); local: this process, no Ray (CPU
    # stages that wait on child processes run several batches at once); auto: ray when a
    # ray_address is given, else local (a job on one machine pays no Ray start-up or daemons)
    executor: Literal["auto", "ray", "local"] = "ray"
    ray_address: str = ""            # "" starts a local Ray; "auto" or host:port joins a cluster
    cpus_per_task: float = 1.0       # CPU stages: CPUs each task asks for (ingest: 0 = share the cluster among the videos)
    max_tasks_in_flight: int = 0     # CPU stages: bound on concurrent tasks; 0 = as many as the CPUs allow
    actors: int = 1                  # model stages: actors in the pool, each loads the model once
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0      # > 0 asks Ray for GPUs; 0 runs on CPU
    commit_every: int = 16           # the driver commits results to the library every this many rows ...
    commit_every_seconds: float = 20.0  # ... or after this long, whichever comes first

    def __post_init__(self) -> None:
        # upper bounds are sanity limits; what a cluster can hold is checked once Ray runs
        # (pipeline.stages.runner.check_resources), before anything is scheduled
        check_range("execution.cpus_per_task", self.cpus_per_task, 0, 4096)
        check_range("execution.max_tasks_in_flight", self.max_tasks_in_flight, 0, 1_000_000)
        check_range("execution.actors", self.actors, 1, 4096)
        check_range("execution.cpus_per_actor", self.cpus_per_actor, 0, 4096, above=True)
        check_range("execution.gpus_per_actor", self.gpus_per_actor, 0, 64)
        check_range("execution.commit_every", self.commit_every, 1)
        check_range("execution.commit_every_seconds", self.commit_every_seconds, 0, above=True)
        if self.executor not in ("auto", "ray", "local"):
            raise ConfigError(f"execution.executor: {self.executor!r} is not one of ['auto', 'ray', 'local']")
        if self.ray_address != self.ray_address.strip():
            raise ConfigError(f"execution.ray_address: {self.ray_address!r} has spaces around it")

    @property
    def uses_ray(self) -> bool:
        """Whether the job runs on Ray (`auto`: only when given a cluster to join)."""
        return self.executor == "ray" or (self.executor == "auto" and bool(self.ray_address))

    def local_workers(self, cpus_per_task: float | None = None) -> int:
        """Batches a local run processes at once for a stage that allows it: `max_tasks_in_flight`,
        else as many tasks of `cpus_per_task` CPUs as this machine's CPUs hold."""
        if self.max_tasks_in_flight:
            return self.max_tasks_in_flight
        per = cpus_per_task if cpus_per_task is not None else self.cpus_per_task
        return max(1, int(available_cpus() // max(per, 1e-9)))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)

"""How a job's stages run: the `execution` section that every job config shares."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from trainer.typedconfig import ConfigError


@dataclass
class ExecutionConfig:
    executor: Literal["ray", "local"] = "ray"  # ray: Ray Data; local: one process, no Ray (small jobs, tests)
    ray_address: str = ""            # "" starts a local Ray; "auto" or host:port joins a cluster
    cpus_per_task: float = 1.0       # CPU stages: CPUs each task asks for (ingest: 0 = share the cluster among the videos)
    max_tasks_in_flight: int = 0     # CPU stages: bound on concurrent tasks; 0 = as many as the CPUs allow
    actors: int = 1                  # model stages: actors in the pool, each loads the model once
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0      # > 0 asks Ray for GPUs; 0 runs on CPU
    commit_every: int = 16           # the driver commits results to the library every this many rows ...
    commit_every_seconds: float = 20.0  # ... or after this long, whichever comes first

    def __post_init__(self) -> None:
        if self.cpus_per_task < 0 or self.max_tasks_in_flight < 0:
            raise ConfigError("execution: cpus_per_task and max_tasks_in_flight must be >= 0")
        if self.actors < 1 or self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ConfigError("execution: actors >= 1, cpus_per_actor > 0, gpus_per_actor >= 0")
        if self.commit_every < 1 or not self.commit_every_seconds > 0:
            raise ConfigError("execution: commit_every >= 1 and commit_every_seconds > 0")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)

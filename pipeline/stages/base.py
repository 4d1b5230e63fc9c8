"""The stage model every Ray job is built from (ingest, captioning, embedding, export).

A stage is one step of a job: it declares its name, the fields of the rows it reads and adds, the
resources one worker needs, and whether it holds a model (then it runs in a pool of long-lived
actors that load the model once, in `setup`) or is plain CPU work (then every batch is a task).
`process` turns a batch of rows (dicts) into output rows. A job is a list of stages built from
its config; `pipeline.stages.runner.run_stages` executes the list on Ray Data or in this process.

Stages hold no Ray code, so they can be called directly in tests and tools.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

Row = dict[str, Any]


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs: CPUs and GPUs (fractions allowed) and memory in bytes that
    the scheduler reserves (0: none), so Ray never starts more workers than a node can hold."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int = 0


class Stage(ABC):
    """One step of a job. Subclasses set `name`, `reads` and `adds` and implement `process`; a model
    stage sets `actors` > 0 and loads its model in `setup`."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()   # row fields process() uses
    adds: ClassVar[tuple[str, ...]] = ()    # row fields process() writes

    batch_size: int = 1                     # rows per process() call
    resources: Resources = Resources()      # per task, or per actor
    actors: int = 0                         # > 0: a pool of this many actors (model stages); 0: tasks
    max_retries: int = 2                    # a task whose worker died is tried again this often
    # a local run may call process() on several threads at once: the work happens in child
    # processes or in code that releases the GIL, and process() shares no unguarded state
    concurrent: ClassVar[bool] = False

    def folders(self) -> tuple[str, ...]:
        """Folders this stage's workers read or write (a library, an export's --out): on Ray every
        node must see them as the driver does, which the runner checks before the job starts."""
        return ()

    def setup(self) -> None:
        """Load what is expensive (a model) once per worker, before its first batch."""

    @abstractmethod
    def process(self, batch: list[Row]) -> list[Row]:
        """Output rows for a batch of input rows."""

    def __repr__(self) -> str:
        kind = f"{self.actors} actors" if self.actors else "tasks"
        return f"<stage {self.name}: {kind}, batch {self.batch_size}, {self.resources}>"

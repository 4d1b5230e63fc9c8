"""Step 3 of an export: render and write shards, one task per shard on the stage runner (several
samples of a shard rendered at once, as many as the task's CPUs)."""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

from pipeline.export.plan import ShardPlan
from pipeline.export.render import render_mp4
from pipeline.library.files import CannotWrite, atomic_write_bytes
from pipeline.stages.base import Resources, Row, Stage
from trainer.shards import write_shard

STATE = ".export"          # job.json and done/<shard>.json under SHARDS


def _rendered(samples: list, threads: int) -> Iterator[tuple[Any, bytes | None, Exception | None]]:
    """(sample, mp4 bytes or None, error or None) in the samples' order, `threads` rendered at once
    (PyAV's decoding and encoding and OpenCV's resizing release the GIL), at most `threads` ahead of
    the writer: memory holds a few samples, not the shard."""
    def render(sample) -> tuple[bytes | None, Exception | None]:
        try:
            return render_mp4(sample.spec), None
        except Exception as e:   # a bad clip costs that sample only, never the shard
            return None, e

    if threads <= 1:
        for sample in samples:
            yield sample, *render(sample)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="render") as pool:
        pending: deque = deque()
        for sample in samples:
            pending.append((sample, pool.submit(render, sample)))
            if len(pending) > threads:
                done, future = pending.popleft()
                yield done, *future.result()
        while pending:
            done, future = pending.popleft()
            yield done, *future.result()


def write_planned_shard(out: str, shard: ShardPlan, threads: int = 1) -> dict[str, Any]:
    """Render and write one shard (`threads` samples rendered at once, written in order: the same
    bytes as one at a time), then its `done` record; returns the record. A sample that cannot be
    rendered is left out and recorded with its error; a shard whose samples all fail is not written."""
    t0 = time.perf_counter()
    written: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []

    def samples():
        for s, mp4, e in _rendered(shard.samples, threads):
            if e is not None:
                errors.append({"key": s.meta.key, "error": f"{type(e).__name__}: {e}"})
                continue
            written.append({"key": s.meta.key, "bytes": len(mp4), "input_bytes": s.input_bytes})
            yield s.meta, mp4

    path = Path(out) / shard.name
    try:
        count = write_shard(path, samples())
    except OSError as e:     # a full disk, a mount gone read-only: named in one line, the shard redone by a rerun
        raise CannotWrite(path, e) from None
    if count == 0:
        path.unlink(missing_ok=True)
    record = {"shard": shard.name, "split": shard.split, "samples": written, "errors": errors,
              "tar_bytes": path.stat().st_size if count else 0, "seconds": time.perf_counter() - t0}
    done = Path(out) / STATE / "done"
    done.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(done / f"{shard.name}.json", json.dumps(record).encode())
    return record


class WriteShardStage(Stage):
    """One planned shard in, its `done` record out (CPU: decode, crop, resize, encode)."""

    name = "write_shard"
    reads = ("shard",)
    adds = ("record",)

    def __init__(self, out: Path, cpus: float, threads: int = 1, library: Path | None = None):
        self.out = str(out)
        self.library = str(library) if library is not None else None    # where the clips are read
        self.resources = Resources(cpus=cpus)
        self.threads = threads      # samples of a shard rendered at once

    def folders(self) -> tuple[str, ...]:
        return (self.out,) if self.library is None else (self.library, self.out)

    def process(self, batch: list[Row]) -> list[Row]:
        return [{"record": write_planned_shard(self.out, row["shard"], self.threads)} for row in batch]



"""Run a job's stages: on Ray Data (CPU stages as tasks, model stages as actor pools) or in this
process (`execution.executor: local`, or `auto` without a cluster address): one batch after
another, except that a CPU stage marked `concurrent` (its work runs in child processes or releases
the GIL) processes `execution.local_workers()` batches at once on threads.

    for row in run_stages([PrepareStage(...), ModelStage(...)], items, cfg.execution):
        ...                                    # output rows of the last stage, as they finish

Rows travel between Ray workers pickled in one binary Arrow column, so a stage may hand on any
Python value (arrays of frames, result objects) without declaring an Arrow schema. This module is
also the one place that starts or joins Ray (`init_ray`): a start that fails is retried with a
longer wait, then reported in one line (`RayStartError`) with every process it left stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import queue
import re
import secrets
import socket
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa

from pipeline.stages.base import Row, Stage
from pipeline.stages.execution import ExecutionConfig, available_cpus
from trainer.environ import scoped_env
from trainer.typedconfig import ConfigError

ROW = "row"            # the one column of the Arrow blocks: a pickled row
MAX_BLOCKS = 1000      # input blocks when the first stage's batches are many
START_ATTEMPTS = 2     # a local Ray that did not come up is started once more, waiting twice as long
GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"   # Ray's own wait for its GCS (30 s by default)
CLUSTER_LOST_EXIT = 2  # exit status of a job whose Ray cluster went away mid-run (what must change is the cluster)


class RayStartError(ConfigError):
    """Ray could not be started or joined. A ConfigError, so every job's command reports it in one
    line with exit status 2 (what must change is the machine, the cluster or `--ray-address`)."""


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
    if not execution.uses_ray:
        return _run_local(stages, items, execution)
    return _run_ray(stages, items, execution, one_block_per_batch, tolerate_lost_batches)


# ---- in this process -------------------------------------------------------------------------------
def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def _processed(stage: Stage, rows: Iterable[Row]) -> Iterator[Row]:
    for batch in _batches(rows, stage.batch_size):
        yield from stage.process(batch)


def _processed_concurrently(stage: Stage, rows: Iterable[Row], workers: int) -> Iterator[Row]:
    """`stage.process` on up to `workers` batches at once, on `workers` long-lived threads (a
    stage may keep per-thread state, as ingest keeps a sandbox child per thread); output in the
    order batches finish. At most `workers` batches are pending, so a long input is never read
    ahead. The threads are daemons and nothing waits for them on Ctrl-C or an error: a batch in
    flight may take an hour, and the job stops the child processes doing its work."""
    batches = _batches(rows, stage.batch_size)
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()

    def work() -> None:
        while (batch := todo.get()) is not None:
            try:
                done.put((True, stage.process(batch)))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, raised there
                done.put((False, e))

    threads = [threading.Thread(target=work, name=f"{stage.name}-{i}", daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        in_flight = 0
        for batch in islice(batches, workers):
            todo.put(batch)
            in_flight += 1
        while in_flight:
            ok, value = done.get()
            in_flight -= 1
            if not ok:
                raise value
            yield from value
            if (batch := next(batches, None)) is not None:
                todo.put(batch)
                in_flight += 1
    finally:
        for _ in threads:    # idle threads end now, busy ones after their batch
            todo.put(None)


def _run_local(stages: list[Stage], items: list[Row], execution: ExecutionConfig) -> Iterator[Row]:
    for stage in stages:
        stage.setup()
    rows: Iterable[Row] = items
    for stage in stages:
        workers = execution.local_workers(stage.resources.cpus) if stage.concurrent and not stage.actors else 1
        rows = _processed_concurrently(stage, rows, workers) if workers > 1 else _processed(stage, rows)
    yield from rows


# ---- on Ray ------------------------------------------------------------------------------------------
def init_ray(address: str = "") -> None:
    """Start a fresh local Ray (never join a stray cluster silently), or join `address`.

    A local start that fails (Ray gives up on its own daemons under heavy load: "The current node
    timed out during startup") stops every process it started and is tried again with Ray's GCS
    wait doubled; joining is tried once. Either failure raises `RayStartError`, one line."""
    if address and (why := _unreachable(address)):
        # Ray itself retries a dead GCS address for many minutes, printing nothing
        raise RayStartError(f"cannot join the Ray cluster at {address!r}: {why} (is `ray start --head` running "
                            "there, and is its port open from here?)")
    import ray  # lazy: Ray costs seconds to import, and local jobs never need it

    if ray.is_initialized():
        return
    if address and _refuses_our_token(address):
        # ray.init would retry for 20 s to minutes, a warning a second, then blame the address
        raise RayStartError(f"cannot join the Ray cluster at {address!r}: it refused this driver's authentication "
                            "token; give recap the same RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                            "~/.ray/auth_token) as `ray start` on the cluster's nodes")
    # notices that are not about this job: token auth being on (Ray's default), Ray Data's progress
    # bars being off (recap draws its own), its per-operator execution plans
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
    # a batch lost under `tolerate_lost_batches` is the job's to report (ingest records its video as
    # `failed`, worker_crashed): Ray Data's screen-long traceback for it reads as if the job crashed
    lost = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
    if not any(isinstance(f, _ToleratedLossFilter) for f in lost.filters):
        lost.addFilter(_ToleratedLossFilter())
    # what Ray logs while a start fails is a screen of errors from its daemons: the one line of
    # RayStartError says it instead
    kwargs: dict[str, Any] = {"logging_level": logging.CRITICAL, "log_to_driver": True}
    if address:
        before = _descendants()
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ... for a cluster it cannot join
            _stop_started(before)
            raise RayStartError(f"cannot join the Ray cluster at {address!r}: {_first_line(e)} (start one with "
                                "`ray start --head` and give its address, or leave out --ray-address to start a "
                                "local Ray)") from None
        logging.getLogger("ray").setLevel(logging.WARNING)
        return
    wait_s = int(os.environ.get(GCS_WAIT_ENV, "30")) if os.environ.get(GCS_WAIT_ENV, "30").isdigit() else 30
    for attempt in range(START_ATTEMPTS):
        before = _descendants()
        try:
            with scoped_env(GCS_WAIT_ENV, str(wait_s) if attempt else os.environ.get(GCS_WAIT_ENV)):
                ray.init(address="local", include_dashboard=False, **kwargs)
            logging.getLogger("ray").setLevel(logging.WARNING)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises bare Exception for a start that timed out
            error = e
            _stop_started(before)
            wait_s *= 2
    raise RayStartError(f"Ray did not start on this machine (tried {START_ATTEMPTS} times): {_first_line(error)}; "
                        "is the machine overloaded or short of memory or /tmp space? Every process it started "
                        "was stopped") from None


def _refuses_our_token(address: str) -> bool:
    """Whether the GCS at a `host:port` address rejects this process's Ray auth token (a token
    cluster joined without RAY_AUTH_TOKEN, or with another one). One request, well under a second;
    anything else that goes wrong is left to ray.init to report."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "://" in address:
        return False
    import ray  # lazy: see init_ray

    try:
        from ray._raylet import GcsClient  # lazy: see init_ray

        GcsClient(address=address).internal_kv_get(b"recap-auth-check", None, timeout=10)
    except ray.exceptions.AuthenticationError:
        return True
    except Exception:  # noqa: BLE001 - not an auth refusal: ray.init reports it in its own words
        return False
    return False


class _ToleratedLossFilter(logging.Filter):
    """Drops Ray Data's record of a task error it ignores (max_errored_blocks); keeps the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Ignoring this exception with remaining max_errored_blocks" not in record.getMessage()


def _unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why a `host:port` cluster address takes no connection (refused, unknown host, timed out), or
    None: it does, or it is one Ray resolves itself (`auto`, `ray://...`)."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "://" in address:
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _stop_started(before: set[int]) -> None:
    """Stop what a failed start left running: Ray's state in this process, the processes it
    spawned (new descendants of this one) and any daemon of its session that was re-parented
    when its parent died (Ray names a session after the driver's pid: session_<date>_<pid>)."""
    import ray  # lazy: see init_ray

    with contextlib.suppress(Exception):
        ray.shutdown()
    me = os.getpid()
    session = re.compile(rf"session_[0-9_-]+_{me}(?![0-9])")
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid != me and p not in left and any(session.search(a) for a in p.info["cmdline"] or ()):
                left.append(p)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(left, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def check_resources(stages: list[Stage], execution: ExecutionConfig) -> None:
    """ConfigError naming the key when a stage asks more of one worker than the largest node of
    the Ray cluster has (Ray would wait for such a node forever), or, in a local run, more CPUs or
    memory than this machine has (GPUs are the model's business there: it names its device)."""
    if execution.uses_ray:
        import ray  # lazy: see init_ray

        init_ray(execution.ray_address)
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        largest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU", "memory")}
        where = "the largest node of this Ray cluster"
    else:
        largest = {"CPU": float(available_cpus()), "GPU": math.inf, "memory": float(psutil.virtual_memory().total)}
        where = "this machine"
    for stage in stages:
        per = "actor" if stage.actors else "task"
        res = stage.resources
        gpus_key = "execution.gpus_per_actor" if stage.actors else f"GPUs of a {stage.name} task"
        for need, kind, key in [(res.cpus, "CPU", f"execution.cpus_per_{per}"), (res.gpus, "GPU", gpus_key),
                                (res.memory, "memory", f"memory of a {stage.name} {per}")]:
            if need and need > largest[kind] + 1e-9:
                unit = " bytes" if kind == "memory" else f" {kind}s"
                raise ConfigError(f"{key}: the '{stage.name}' stage asks for {need:g}{unit} per {per}, but "
                                  f"{where} has {largest[kind]:g}: it could never be scheduled")


_SEEN_BY_ALL: set[tuple[str, str]] = set()   # (folder, GCS address) found visible from every node


def check_visible(folder: str | Path, execution: ExecutionConfig, what: str = "the library") -> None:
    """ConfigError naming the Ray nodes that do not see `folder` (or, while it does not exist yet,
    its nearest existing parent) as this process does: their workers would read and write files on
    a disk of their own (ingest failed every source, caption and index found no clip, export wrote
    its shards where nobody looks). A probe file, removed at once, tells them apart; a folder this
    process cannot write to is left unchecked (to the job's own checks). Every job on Ray runs it
    for the folders its stages name (`Stage.folders`, in `ray_dataset`); a job that writes before
    its stages start (ingest creates the library, export its --out) calls it first itself. A folder
    found visible is not probed again on the same cluster."""
    if not execution.uses_ray:
        return
    import ray  # lazy: see init_ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # lazy: see init_ray

    init_ray(execution.ray_address)
    seen = (str(Path(folder).absolute()), ray.get_runtime_context().gcs_address)
    if seen in _SEEN_BY_ALL:
        return
    where = Path(folder).absolute()
    while not where.is_dir() and where != where.parent:
        where = where.parent
    probe = where / f".recap-visible-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
    except OSError:
        return
    try:
        sees = ray.remote(num_cpus=0, max_retries=0)(os.path.exists)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(probe))
                for n in nodes]
        blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, seen in zip(nodes, ray.get(refs, timeout=120)) if not seen]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ConfigError(f"{folder}: the Ray node(s) {', '.join(sorted(set(blind)))} do not see this folder ({where} "
                          f"there is not the one here): {what} must be on storage every node of the cluster "
                          "reaches under the same path")
    _SEEN_BY_ALL.add(seen)


def cluster_cpus(execution: ExecutionConfig) -> float:
    """CPUs the job can use: the Ray cluster's (started or joined here), or this machine's."""
    if not execution.uses_ray:
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
    stop = threading.Event()
    threading.Thread(target=_watch_cluster, args=(execution.ray_address, stop), name="ray-watch", daemon=True).start()
    try:
        for row in ds.iter_rows():
            yield pickle.loads(row[ROW])
    finally:
        stop.set()


def _watch_cluster(address: str, stop: threading.Event, every_s: float = 1.0, misses: int = 10) -> None:
    """End the job in one line when the cluster's GCS stops taking connections (`ray stop`, the head
    node lost). Ray itself leaves the driver blocked, not interruptible, printing an error a second
    for a minute, then kills it with no word from recap; a job on a cluster that is gone cannot go
    on, so this ends the process as a kill -9 would: what was committed is kept for the rerun."""
    import ray  # lazy: see init_ray

    gcs = ray.get_runtime_context().gcs_address
    host, _, port = gcs.rpartition(":")
    missed = 0
    while not stop.wait(every_s):
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=every_s).close()
            missed = 0
        except OSError as e:
            # ~10 s in a row: a GCS that restarts (a fault-tolerant head) comes back within that,
            # and Ray would keep the job waiting for 60 s
            missed += 1
            if missed >= misses and not stop.is_set() and ray.is_initialized():   # not this process's own shutdown
                where = f"at {address!r}" if address else "this job started"
                print(f"recap: error: the Ray cluster {where} went away mid-run (its GCS at {gcs} takes no "
                      f"connection: {e.strerror or type(e).__name__}); the batches committed so far are kept: "
                      "rerun the same command on a live cluster to go on", file=sys.stderr, flush=True)
                os._exit(CLUSTER_LOST_EXIT)


def ray_dataset(stages: list[Stage], items: list[Row], execution: ExecutionConfig, *,
                one_block_per_batch: bool = False, tolerate_lost_batches: bool = False):
    """The Ray Data plan of a job, not yet executed (its rows hold pickled output rows)."""
    import ray.data  # lazy: see init_ray

    init_ray(execution.ray_address)
    check_resources(stages, execution)
    for folder in dict.fromkeys(f for stage in stages for f in stage.folders()):
        check_visible(folder, execution)
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

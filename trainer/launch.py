"""Start a training job on several processes with the engines made for it: torchrun or Ray Train.

- `--launcher torchrun` runs `python -m torch.distributed.run` with this job's own arguments:
  `--nproc-per-node` processes here, and with `--nnodes N --rdzv-endpoint HOST:PORT` (the same
  command on every node) a c10d rendezvous across nodes. `--max-restarts` restarts the whole
  worker group when a worker dies; each restart resumes from the last checkpoint.
- `--launcher ray` runs the same training function (`trainer.train.main`) on `--num-workers`
  Ray Train workers (`TorchTrainer`), `--gpus-per-worker` GPUs each, on the cluster at
  `--ray-address` (empty: a local Ray started for the job); a failed worker group is restarted
  up to `--max-restarts` times (`FailureConfig`) and resumes from the last checkpoint.

Either way the refusal of an `--out` that holds a run without `--resume` happens once, here; the
workers are told to resume whenever a checkpoint exists, which is what a restart needs.

`recap train cache --launcher ray` (`run_ray_cache`) runs the latent cache on Ray actors instead:
`--num-workers` `CacheWorker`s (trainer/cache.py) with `--gpus-per-worker` GPUs each, every one
loading the autoencoder and text encoder once and then encoding whole shards handed out by an
`ActorPool`; shards already in `--out` are skipped (a rerun resumes), and a worker that dies is
restarted and its shard redone, up to `--max-restarts` times.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from trainer.cache import CacheSettings, CacheWorker, cache_inputs, finish_cache, open_cache, report, shard_name
from trainer.checkpoint import latest_checkpoint
from trainer.progress import progress_bar
from trainer.tasks import TrainSetupError
from trainer.text import resolve_text_encoder
from trainer.train import JOB_CONFIGS, main
from trainer.typedconfig import from_dict, to_dict
from trainer.vae import AutoencoderSource, resolve_source


def check_out(out: str | Path, resume: bool) -> None:
    last = latest_checkpoint(out)
    if last is not None and not resume:
        raise TrainSetupError(f"{out} already has checkpoints (last: {last.name}): pass --resume to continue "
                              "that run, or choose a new --out")


def torchrun_command(worker_args: list[str], nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: str = "",
                     rdzv_id: str = "recap", max_restarts: int = 0) -> list[str]:
    """The torchrun command line that runs `python -m trainer.cli WORKER_ARGS` on every rank."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node),
               "--max-restarts", str(max_restarts)]
    if nnodes == 1 and not rdzv_endpoint:
        command.append("--standalone")      # one node: a free local port, no endpoint to agree on
    else:
        if not rdzv_endpoint:
            raise TrainSetupError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (a host every node reaches)")
        command += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
                    "--rdzv-id", rdzv_id]
    return [*command, "-m", "trainer.cli", *worker_args]


def exec_torchrun(command: list[str]) -> None:
    """Become torchrun (signals and the exit status go straight to and from it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def ray_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the job's config rebuilt, then the same loop as under torchrun."""
    # lazy: Ray only in Ray workers
    import ray.train.torch

    cfg = from_dict(JOB_CONFIGS[config["kind"]], config["config"])
    main(config["kind"], cfg, config["out"], resume="auto", device=ray.train.torch.get_device())


@contextmanager
def ray_session(address: str, cpus: float) -> Iterator[None]:
    """Ray for this job: the cluster at `address`, or (empty) a local Ray with at least `cpus`
    CPUs, shut down afterwards; a Ray this process already runs is used as it is."""
    # lazy: Ray only for --launcher ray
    import ray

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:   # a local Ray for this job, big enough for its workers
            ray.init(num_cpus=max(os.cpu_count() or 1, int(cpus)) or 1, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def worker_gpus(gpus_per_worker: float | None) -> float:
    """`--gpus-per-worker`, by default 1 where the cluster has GPUs, else 0 (inside `ray_session`)."""
    # lazy: Ray only for --launcher ray
    import ray

    if gpus_per_worker is None:
        return 1 if ray.cluster_resources().get("GPU", 0) else 0
    return gpus_per_worker


def run_ray(kind: str, cfg: Any, out: str | Path, address: str, num_workers: int, gpus_per_worker: float | None,
            cpus_per_worker: float, max_restarts: int) -> int:
    """Train on Ray Train workers; returns 0, or 1 (saying why) when the last allowed attempt failed."""
    # lazy: Ray (and Ray Train) only for --launcher ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    out = Path(out).resolve()
    with ray_session(address, num_workers * cpus_per_worker):
        gpus_per_worker = worker_gpus(gpus_per_worker)
        resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
        trainer = TorchTrainer(
            ray_worker,
            train_loop_config={"kind": kind, "config": to_dict(cfg), "out": str(out)},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=f"recap-{kind}", storage_path=str(out / "ray"),
                                 failure_config=FailureConfig(max_failures=max_restarts)))
        try:
            trainer.fit()
        except TrainingFailedError as e:   # the workers' tracebacks are in the log above
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"recap train {kind}: error: training failed after {max_restarts} restart(s): {first}",
                  file=sys.stderr)
            return 1
    return 0


def _absolute(url: str) -> str:
    """A local path made absolute (workers need not share the driver's directory); URLs as given."""
    return url if "://" in url else str(Path(url).resolve())


def run_ray_cache(data: str, out: str | Path, source: AutoencoderSource, text_encoder: str, max_length: int, precision: str,
                  settings: CacheSettings, address: str, num_workers: int, gpus_per_worker: float | None,
                  cpus_per_worker: float, max_restarts: int) -> int:
    """Build the latent cache `out` of `data` on Ray actors (see the module's docstring): the
    same cache `trainer.cache.build_cache` makes in one process. Returns 0."""
    # lazy: Ray only for --launcher ray
    import ray
    from ray.util import ActorPool

    out = Path(out).resolve()
    # what can be refused is refused here, before Ray starts: not a set of shards, a model not there
    inputs = [_absolute(u) for u in cache_inputs(data)]
    resolve_source(source)
    resolve_text_encoder(text_encoder)
    # a shard of an earlier, interrupted build is complete (renamed into place when it was)
    done: dict[str, dict[str, int] | None] = {shard_name(u): None for u in inputs if (out / shard_name(u)).exists()}
    todo = [u for u in inputs if shard_name(u) not in done]
    num_workers = max(1, min(num_workers, len(todo)))      # no worker loads the models for nothing
    with ray_session(address, num_workers * cpus_per_worker):
        gpus = worker_gpus(gpus_per_worker)
        actor = ray.remote(CacheWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus,
                                                max_restarts=max_restarts, max_task_retries=max_restarts)
        workers = [actor.remote(source, text_encoder, max_length, precision, settings) for _ in range(num_workers)]
        manifest = open_cache(out, *ray.get(workers[0].start.remote(data)))   # refuses another maker's cache
        skipped: dict[str, int] = {}
        pool = ActorPool(workers)
        results = pool.map_unordered(lambda w, url: w.encode_shard.remote(url, str(out / shard_name(url))), todo)
        bar = progress_bar(results, total=len(todo), desc=f"cache ({num_workers} Ray workers)", unit="shard")
        for name, buckets, skips in bar:
            done[name] = buckets
            for reason, n in skips.items():
                skipped[reason] = skipped.get(reason, 0) + n
            bar.set_postfix(samples=sum(sum(b.values()) for b in done.values() if b))
        bar.close()
        print(f"[recap.cache] {num_workers} Ray worker(s): {len(todo)} of {len(inputs)} shards encoded "
              f"({len(inputs) - len(todo)} already there)", file=sys.stderr)
        report(out, finish_cache(out, manifest, done, skipped), skipped)
    return 0


def default_nproc() -> int:
    return torch.cuda.device_count() or 1


__all__ = ["check_out", "torchrun_command", "exec_torchrun", "ray_worker", "run_ray", "run_ray_cache", "ray_session",
           "worker_gpus", "default_nproc"]

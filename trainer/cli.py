"""Train the video VAE (stage 1) or the DiT (stage 2) on exported shards, or cache their latents.

  recap train vae --config configs/vae.yaml --data SHARDS --out RUN [--resume] [--set k=v ...]
  recap train dit --config configs/dit.yaml --data SHARDS --out RUN [--resume] [--set k=v ...]
  recap train cache --data SHARDS --vae RUN_OR_ID --text-encoder ID --out CACHE
  recap train dit --config configs/dit.yaml --data CACHE --out RUN   # no VAE or text encoder loaded
  recap train export-weights RUN [--step N] [--out DIR]              # safetensors of a sharded run

Several processes or GPUs: `--launcher torchrun --nproc-per-node 8` (several nodes: the same
command on each with `--nnodes N --rdzv-endpoint HOST:PORT`), or `--launcher ray --ray-address
ADDR --num-workers W --gpus-per-worker G` (Ray Train); `--max-restarts` restarts failed workers
from the last checkpoint. `--set train.parallel=fsdp` shards the DiT (FSDP2), and
`--set train.context_parallel=N` splits each sample's tokens over N ranks. The cache splits its
input shards between torchrun's ranks the same way, or with `--launcher ray` hands them to W Ray
actors (`--gpus-per-worker G` each) that load the models once. `cache` takes the autoencoder, text encoder
and precision of a DiT config (configs/dit.yaml unless --config), or --vae/--text-encoder.
Checkpoints go to RUN/checkpoints, TensorBoard logs to RUN/tb, per-step metrics to RUN/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trainer.cache import CacheError, CacheSettings, build_cache
from trainer.checkpoint import CheckpointError, CheckpointWriteError
from trainer.launch import check_out, default_nproc, exec_torchrun, run_ray, run_ray_cache, torchrun_command
from trainer.parallel import ParallelError
from trainer.progress import add_no_progress_option, hidden_bars
from trainer.shards import NoBatchError, list_shards
from trainer.tasks import DiTTask, TrainSetupError
from trainer.train import load_job_config, main
from trainer.typedconfig import ConfigError, default_config
from trainer.vae import AutoencoderSource

# what a user can fix: one line and exit 2, no traceback (FileNotFoundError: a VAE, model or
# shard path that is not there; ShardError and MissingModelError are kinds of it)
USER_ERRORS = (ConfigError, TrainSetupError, NoBatchError, CacheError, CheckpointError, CheckpointWriteError,
               ParallelError, FileNotFoundError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["vae", "dit", "cache", "export-weights"],
                        help="vae or dit: train that model; cache: encode the shards once for the DiT; "
                             "export-weights: plain safetensors weights of a run's checkpoint")
    parser.add_argument("run_dir", nargs="?", metavar="RUN", help="export-weights: the run directory")
    parser.add_argument("--config", help="YAML config (default: configs/<kind>.yaml; cache: configs/dit.yaml); "
                                          "a file given replaces that one: keys it leaves out take the "
                                          "built-in defaults")
    parser.add_argument("--data",
                        help="exported shards (a directory, a glob, an fsspec URL or a comma list) or a latent cache")
    parser.add_argument("--out", help="run directory (checkpoints, logs), or the cache's folder; "
                                      "export-weights: where the files go (default: the checkpoint's folder)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--step", type=int, metavar="N", help="export-weights: that step's checkpoint (default: the last)")
    launch = parser.add_argument_group("launching on several processes (vae, dit; cache: --launcher ray)")
    launch.add_argument("--launcher", choices=["none", "torchrun", "ray"], default="none",
                        help="none: this process (or the ranks torchrun started); torchrun: start torchrun; "
                             "ray: Ray Train workers")
    launch.add_argument("--nproc-per-node", type=int, metavar="N",
                        help="torchrun: processes on this node (default: its GPUs, else 1)")
    launch.add_argument("--nnodes", type=int, default=1, metavar="N",
                        help="torchrun: nodes in the job; run the same command on each (default 1)")
    launch.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT",
                        help="torchrun: rendezvous address every node reaches (needed with --nnodes > 1)")
    launch.add_argument("--rdzv-id", default="recap", metavar="ID", help="torchrun: the job's rendezvous id")
    launch.add_argument("--max-restarts", type=int, default=3, metavar="N",
                        help="restarts of the worker group after a failure, each from the last checkpoint "
                             "(torchrun --max-restarts, Ray Train FailureConfig; cache: restarts of each Ray "
                             "worker, its shard redone; default 3)")
    launch.add_argument("--ray-address", default="", metavar="ADDR",
                        help="ray: a cluster ('auto' or host:port); empty starts a local Ray for the job")
    launch.add_argument("--num-workers", type=int, default=1, metavar="W", help="ray: training workers, or cache actors (default 1)")
    launch.add_argument("--gpus-per-worker", type=float, metavar="G",
                        help="ray: GPUs per worker (default: 1 when the cluster has GPUs, else 0)")
    launch.add_argument("--cpus-per-worker", type=float, default=1, metavar="C", help="ray: CPUs per worker (default 1)")
    launch.add_argument("--auto-resume", action="store_true", help=argparse.SUPPRESS)   # set by the launchers
    cache = parser.add_argument_group("cache")
    cache.add_argument("--vae", metavar="RUN_OR_ID",
                       help="autoencoder: a `recap train vae` run or .safetensors, a diffusers id or folder, or "
                            "'pixel' (default: the config's vae)")
    cache.add_argument("--text-encoder", metavar="ID", help="text encoder id or folder (default: the config's)")
    cache.add_argument("--latents", choices=["mean", "mean_logvar"], default="mean",
                       help="keep the posterior mean only, or its log-variance too (for data.sample_posterior)")
    cache.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                       help="how latents and token states are stored (default float32)")
    cache.add_argument("--batch-size", type=int, default=8, metavar="N", help="samples encoded at once (default 8)")
    add_no_progress_option(parser)


def vae_source(text: str) -> AutoencoderSource:
    """`--vae`: 'pixel', a recap run or .safetensors file, else a diffusers id or folder."""
    if text == "pixel":
        return AutoencoderSource(kind="pixel")
    path = Path(text).expanduser()
    if path.suffix == ".safetensors" or (path / "checkpoints").is_dir():
        return AutoencoderSource(kind="recap", path=text)
    return AutoencoderSource(kind="diffusers", path=text)


def worker_args(args: argparse.Namespace) -> list[str]:
    """This job's arguments as each rank gets them (the launcher's own left out)."""
    out = [args.kind, "--data", args.data, "--out", args.out, "--auto-resume"]
    if args.config:
        out += ["--config", args.config]
    for item in args.overrides:
        out += ["--set", item]
    return out


def preflight(kind: str, cfg: Any, out: str, resume: bool) -> None:
    """The checks every rank would make first, made once before launching them: under torchrun a
    rank's mistake (no shards, no VAE) was printed by each rank, at each of --max-restarts
    restarts, and then by torchrun as a traceback."""
    check_out(out, resume)
    shards = list_shards(cfg.data.shards, cfg.data.split)
    if kind == "dit":
        DiTTask.check_encoders(cfg, shards)


def export(args: argparse.Namespace) -> int:
    # lazy: torch.distributed.checkpoint only for this subcommand
    from trainer.sharded import export_weights
    if not args.run_dir:
        raise ConfigError("export-weights needs the run: recap train export-weights RUN")
    for path in export_weights(args.run_dir, args.step, args.out):
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.kind == "export-weights":
            return export(args)
        if not args.data or not args.out:
            raise ConfigError(f"recap train {args.kind} needs --data and --out")
        if Path(args.out).exists() and not Path(args.out).is_dir():   # was mkdir's traceback, once the models loaded
            raise ConfigError(f"--out {args.out} is a file, not a folder; choose another --out")
        kind = "dit" if args.kind == "cache" else args.kind
        config = args.config or default_config(f"{kind}.yaml")
        cfg = load_job_config(kind, config, args.overrides)
        cfg.data.shards = args.data    # set as given, not parsed as YAML (URLs may hold ':' or braces)
        if args.kind != "cache":
            if args.vae or args.text_encoder:
                raise ConfigError("--vae and --text-encoder are options of `recap train cache`; a DiT run takes "
                                  "--set vae.path=... and --set text.encoder=...")
            if args.launcher != "none":
                preflight(kind, cfg, args.out, args.resume)
            if args.launcher == "torchrun":
                exec_torchrun(torchrun_command(worker_args(args), args.nproc_per_node or default_nproc(),
                                               args.nnodes, args.rdzv_endpoint, args.rdzv_id, args.max_restarts))
            if args.launcher == "ray":
                return run_ray(kind, cfg, args.out, args.ray_address, args.num_workers, args.gpus_per_worker,
                               args.cpus_per_worker, args.max_restarts)
            return main(kind, cfg, args.out, resume="auto" if args.auto_resume else args.resume)
        if args.batch_size < 1:
            raise ConfigError("--batch-size must be >= 1")
        source = vae_source(args.vae) if args.vae else cfg.vae
        encoder, settings = args.text_encoder or cfg.text.encoder, CacheSettings(args.latents, args.dtype, args.batch_size)
        if args.launcher == "ray":    # Ray actors, each with the models loaded once, taking whole shards
            return run_ray_cache(args.data, args.out, source, encoder, cfg.text.max_length, cfg.train.precision,
                                 settings, args.ray_address, args.num_workers, args.gpus_per_worker,
                                 args.cpus_per_worker, args.max_restarts)
        if args.launcher == "torchrun":
            raise ConfigError("recap train cache: start torchrun yourself (torchrun --nproc-per-node N -m trainer.cli "
                              "cache ...), or use --launcher ray")
        return build_cache(args.data, args.out, source, encoder, cfg.text.max_length, cfg.train.precision, settings)
    except USER_ERRORS as e:
        print(f"recap train {args.kind}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":   # torchrun -m trainer.cli dit ...
    _parser = argparse.ArgumentParser(prog="trainer.cli", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    _args = _parser.parse_args()
    with hidden_bars(_args.no_progress):
        _status = run(_args)
    sys.exit(_status)

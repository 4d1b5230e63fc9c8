"""Train the video VAE (stage 1) or the DiT (stage 2) on exported shards.

  recap train vae --config configs/vae.yaml --data SHARDS --out RUN [--resume] [--set k=v ...]
  recap train dit --config configs/dit.yaml --data SHARDS --out RUN [--resume] [--set k=v ...]

Several processes or GPUs: torchrun --nproc-per-node N -m trainer.cli dit --config ... (DDP).
Checkpoints go to RUN/checkpoints, TensorBoard logs to RUN/tb, per-step metrics to RUN/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import sys

from trainer.train import load_job_config, main
from trainer.typedconfig import ConfigError, default_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["vae", "dit"], help="which model to train")
    parser.add_argument("--config", help="YAML config (default: configs/<kind>.yaml)")
    parser.add_argument("--data", help="shards: a directory, a glob, an fsspec URL or a comma list")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)")


def run(args: argparse.Namespace) -> int:
    config = args.config or default_config(f"{args.kind}.yaml")
    try:
        cfg = load_job_config(args.kind, config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.data:   # set as given, not parsed as YAML (URLs may hold ':' or braces)
        cfg.data.shards = args.data
    return main(args.kind, cfg, args.out, resume=args.resume)


if __name__ == "__main__":   # torchrun -m trainer.cli dit ...
    _parser = argparse.ArgumentParser(prog="trainer.cli", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))

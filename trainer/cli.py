"""Train the video VAE (stage 1) or the DiT (stage 2) on exported shards, or cache their latents.

  recap train vae --config configs/vae.yaml --data SHARDS --out RUN [--resume] [--set k=v ...]
  recap train dit --config configs/dit.yaml --data SHARDS --out RUN [--resume] [--set k=v ...]
  recap train cache --data SHARDS --vae RUN_OR_ID --text-encoder ID --out CACHE
  recap train dit --config configs/dit.yaml --data CACHE --out RUN   # no VAE or text encoder loaded

Several processes or GPUs: torchrun --nproc-per-node N -m trainer.cli dit --config ... (DDP); the
cache splits its input shards between the ranks the same way. `cache` takes the autoencoder, text
encoder and precision of a DiT config (configs/dit.yaml unless --config), or --vae/--text-encoder.
Checkpoints go to RUN/checkpoints, TensorBoard logs to RUN/tb, per-step metrics to RUN/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.cache import CacheError, CacheSettings, build_cache
from trainer.checkpoint import CheckpointError
from trainer.shards import NoBatchError
from trainer.tasks import TrainSetupError
from trainer.train import load_job_config, main
from trainer.typedconfig import ConfigError, default_config
from trainer.vae import AutoencoderSource

# what a user can fix: one line and exit 2, no traceback (FileNotFoundError: a VAE, model or
# shard path that is not there; ShardError and MissingModelError are kinds of it)
USER_ERRORS = (ConfigError, TrainSetupError, NoBatchError, CacheError, CheckpointError, FileNotFoundError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["vae", "dit", "cache"],
                        help="vae or dit: train that model; cache: encode the shards once for the DiT")
    parser.add_argument("--config", help="YAML config (default: configs/<kind>.yaml; cache: configs/dit.yaml)")
    parser.add_argument("--data", required=True,
                        help="exported shards (a directory, a glob, an fsspec URL or a comma list) or a latent cache")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs), or the cache's folder")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)")
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


def vae_source(text: str) -> AutoencoderSource:
    """`--vae`: 'pixel', a recap run or .safetensors file, else a diffusers id or folder."""
    if text == "pixel":
        return AutoencoderSource(kind="pixel")
    path = Path(text).expanduser()
    if path.suffix == ".safetensors" or (path / "checkpoints").is_dir():
        return AutoencoderSource(kind="recap", path=text)
    return AutoencoderSource(kind="diffusers", path=text)


def run(args: argparse.Namespace) -> int:
    kind = "dit" if args.kind == "cache" else args.kind
    config = args.config or default_config(f"{kind}.yaml")
    try:
        cfg = load_job_config(kind, config, args.overrides)
        cfg.data.shards = args.data    # set as given, not parsed as YAML (URLs may hold ':' or braces)
        if args.kind != "cache":
            if args.vae or args.text_encoder:
                raise ConfigError("--vae and --text-encoder are options of `recap train cache`; a DiT run takes "
                                  "--set vae.path=... and --set text.encoder=...")
            return main(kind, cfg, args.out, resume=args.resume)
        if args.batch_size < 1:
            raise ConfigError("--batch-size must be >= 1")
        source = vae_source(args.vae) if args.vae else cfg.vae
        return build_cache(args.data, args.out, source, args.text_encoder or cfg.text.encoder, cfg.text.max_length,
                           cfg.train.precision, CacheSettings(args.latents, args.dtype, args.batch_size))
    except USER_ERRORS as e:
        print(f"recap train {args.kind}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":   # torchrun -m trainer.cli dit ...
    _parser = argparse.ArgumentParser(prog="trainer.cli", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))

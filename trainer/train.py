"""Training: stage 1 the video VAE, stage 2 the DiT on its latents. One loop for both.

Run on one process (`recap train dit ...`) or many (`torchrun --nproc-per-node N -m trainer.cli dit
...`): DDP over NCCL on GPUs, gloo on CPU. Every rank reads its own share of the shards; all
randomness comes from per-rank generators saved in each checkpoint, so a resumed run continues
with exactly the losses the uninterrupted run would have had.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from trainer.checkpoint import latest_checkpoint, load_state, load_weights, save_checkpoint
from trainer.dit import DiT, DiTConfig, count_params
from trainer.rf import FlowConfig, flow_loss, resolution_shift, sample_condition_masks, sample_timesteps
from trainer.shards import Batch, BucketLoader, list_shards
from trainer.text import DEFAULT_TEXT_ENCODER, TextEncoder
from trainer.typedconfig import ConfigError, load_config, to_dict
from trainer.vae import AutoencoderSource, CausalVAE, VAEConfig, kl_loss, load_autoencoder, psnr

# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

@dataclass
class DataConfig:
    shards: str = ""                    # dir, glob, fsspec URL or comma list (`--data` sets it)
    split: str = "train"
    batch_size: int = 4                 # per rank, unless the bucket has its own below
    bucket_batch_sizes: dict[str, int] = field(default_factory=dict)   # "WxHxF" -> batch size
    buckets: list[str] = field(default_factory=list)                   # train only these ([] = all)
    shuffle_buffer: int = 256
    prefetch: int = 2                   # decoded batches kept ready by the loader thread

    def __post_init__(self) -> None:
        if self.batch_size < 1 or any(v < 1 for v in self.bucket_batch_sizes.values()):
            raise ConfigError("data: batch sizes must be >= 1")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.1           # cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0              # max global grad norm; 0 = no clipping


@dataclass
class LoopConfig:
    steps: int = 100_000
    seed: int = 0
    ema_decay: float = 0.9999
    precision: Literal["bf16", "fp32"] = "bf16"   # bf16 autocast on GPU; CPU always runs fp32
    activation_checkpointing: bool = False        # recompute DiT block activations in backward
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    stop_at: int = 0                    # stop after this step as if preempted (0 = run to `steps`)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.log_every < 1 or self.ckpt_every < 1 or self.keep_last < 1:
            raise ConfigError("train: steps, log_every, ckpt_every and keep_last must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("train.ema_decay must be in [0, 1)")


@dataclass
class TextConfig:
    encoder: str = DEFAULT_TEXT_ENCODER  # transformers id or path (T5, umT5, CLIP text, BERT-like)
    max_length: int = 77


@dataclass
class VAELossConfig:
    l1: float = 1.0
    l2: float = 0.0
    kl: float = 1e-6


@dataclass
class VAEJobConfig:
    model: VAEConfig = field(default_factory=VAEConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)


@dataclass
class DiTJobConfig:
    model: DiTConfig = field(default_factory=DiTConfig)
    vae: AutoencoderSource = field(default_factory=lambda: AutoencoderSource(kind="pixel"))
    text: TextConfig = field(default_factory=TextConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)


JOB_CONFIGS = {"vae": VAEJobConfig, "dit": DiTJobConfig}


def load_job_config(kind: str, path: str | Path | Traversable | None, overrides: list[str] | None = None):
    """Typed config for `kind` from defaults <- YAML <- `--set` overrides; unknown keys fail."""
    return load_config(JOB_CONFIGS[kind], path, overrides)


# ---------------------------------------------------------------------------------------------
# The two tasks: how a batch becomes a loss
# ---------------------------------------------------------------------------------------------

def video_tensor(batch: Batch, device: torch.device) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float in [-1, 1]."""
    x = torch.from_numpy(batch.video).to(device, non_blocking=True)
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


class VAETask:
    """Stage 1: reconstruction (L1/L2) + KL; tracks latent statistics to normalise latents later."""

    def __init__(self, cfg: VAEJobConfig, device: torch.device):
        self.cfg = cfg
        self.model = CausalVAE(cfg.model).to(device)
        self.device = device

    def metadata(self) -> dict[str, str]:
        return {"format": "recap.vae", "config": json.dumps(to_dict(self.cfg.model))}

    def tokens(self, batch: Batch) -> int:
        return batch.video.shape[0] * batch.video.shape[1] * batch.video.shape[2] * batch.video.shape[3]

    def check_bucket(self, batch: Batch) -> None:
        s = self.cfg.model.spatial_compression
        if batch.bucket.width % s or batch.bucket.height % s:
            raise ValueError(f"bucket {batch.bucket.name}: width and height must be multiples of {s}")

    def loss(self, model: nn.Module, batch: Batch, gen: torch.Generator, step: int):
        x = video_tensor(batch, self.device)
        recon, mean, logvar = model(x, generator=gen)
        recon = recon.float()
        l1 = (recon - x).abs().mean()
        l2 = F.mse_loss(recon, x)
        kl = kl_loss(mean.float(), logvar.float())
        loss = self.cfg.loss.l1 * l1 + self.cfg.loss.l2 * l2 + self.cfg.loss.kl * kl
        self.update_latent_stats(mean.detach().float(), step)
        return loss, None, None, {"l1": l1.item(), "kl": kl.item(), "psnr": psnr(recon.detach(), x)}

    @torch.no_grad()
    def update_latent_stats(self, mean: torch.Tensor, step: int) -> None:
        """Running mean/std of the posterior mean: DiT latents are (z - shift) * scale ~ unit variance."""
        m = self.model
        momentum = max(0.01, 1.0 / (step + 1))
        m.latent_shift.lerp_(mean.mean(), momentum)
        var = 1.0 / m.latent_scale.pow(2)
        var = var + momentum * (mean.var() - var)
        m.latent_scale.copy_(var.clamp_min(1e-8).rsqrt())


class DiTTask:
    """Stage 2: rectified flow on the frozen autoencoder's latents, conditioned on captions."""

    def __init__(self, cfg: DiTJobConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.vae = load_autoencoder(cfg.vae).to(device).eval()
        self.text = TextEncoder(cfg.text.encoder, cfg.text.max_length).to(device)
        self.model = DiT(cfg.model, in_channels=self.vae.latent_channels, text_dim=self.text.dim).to(device)

    def metadata(self) -> dict[str, str]:
        return {"format": "recap.dit", "config": json.dumps(to_dict(self.cfg.model)),
                "in_channels": str(self.vae.latent_channels), "text_dim": str(self.text.dim),
                "text": json.dumps(to_dict(self.cfg.text)), "vae": json.dumps(to_dict(self.cfg.vae)),
                "flow": json.dumps(to_dict(self.cfg.flow))}

    def latent_grid(self, batch: Batch) -> tuple[int, int, int]:
        b = batch.bucket
        s = self.vae.spatial_compression
        return self.model.token_grid((self.vae.latent_frames(b.frames), b.height // s, b.width // s))

    def check_bucket(self, batch: Batch) -> None:
        b, s = batch.bucket, self.vae.spatial_compression
        ph, pw = self.cfg.model.patch_size[1:]
        if b.width % (s * pw) or b.height % (s * ph):
            raise ValueError(f"bucket {b.name}: width/height must be multiples of {s * pw}/{s * ph} "
                             f"(autoencoder x{s}, patch {self.cfg.model.patch_size})")
        self.latent_grid(batch)

    def tokens(self, batch: Batch) -> int:
        return batch.video.shape[0] * math.prod(self.latent_grid(batch))

    def loss(self, model: nn.Module, batch: Batch, gen: torch.Generator, step: int):
        flow = self.cfg.flow
        with torch.no_grad():
            latents = self.vae.encode(video_tensor(batch, self.device)).float()
        n, frames = latents.shape[0], latents.shape[2]
        drop = torch.rand(n, generator=gen) < flow.caption_dropout
        captions = ["" if d else c for c, d in zip(batch.captions, drop.tolist())]
        context, context_mask = self.text(captions)
        shift = resolution_shift(math.prod(self.latent_grid(batch)), flow)
        t = sample_timesteps(n, flow, shift, gen).to(self.device)
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        cond = sample_condition_masks(n, frames, flow, gen).to(self.device)
        per_sample = flow_loss(model, latents, context, context_mask, t, noise, cond)
        return per_sample.mean(), per_sample.detach(), t, {}


# ---------------------------------------------------------------------------------------------
# Helpers of the loop
# ---------------------------------------------------------------------------------------------

def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().float(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"generator": gen.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


TIMESTEP_BINS = (0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def main(kind: str, cfg: Any, out: str | Path, resume: bool = False) -> int:
    rank, world, device = setup_distributed()
    out = Path(out)
    is_main = rank == 0
    if not cfg.data.shards:
        raise ConfigError("data.shards is empty: pass --data SHARDS")
    shards = list_shards(cfg.data.shards, cfg.data.split)

    # Model, EMA, optimizer, schedule (identical initialisation on every rank).
    torch.manual_seed(cfg.train.seed)
    task = VAETask(cfg, device) if kind == "vae" else DiTTask(cfg, device)
    model = task.model
    if kind == "dit":
        model.grad_checkpointing = cfg.train.activation_checkpointing
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay, eps=cfg.optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
        s, cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio))
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + rank)
    loader = BucketLoader(shards, cfg.data.batch_size, seed=cfg.train.seed, rank=rank, world_size=world,
                          shuffle_buffer=cfg.data.shuffle_buffer, bucket_batch_sizes=cfg.data.bucket_batch_sizes,
                          buckets=cfg.data.buckets or None, prefetch=cfg.data.prefetch)

    # Resume: weights, optimizer, schedule, this rank's RNG and data position.
    start_step = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise FileExistsError(f"{out} already has checkpoints: pass --resume, or choose a new --out")
    if resume and ckpt is None and is_main:
        print(f"no checkpoint in {out}: starting from scratch", file=sys.stderr)
    if ckpt is not None:
        model.load_state_dict(load_weights(ckpt / "model.safetensors")[0])
        ema.load_state_dict(load_weights(ckpt / "ema.safetensors")[0])
        state = load_state(ckpt)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_step = int(state["step"])
        if state["world_size"] == world:
            set_rng_state(gen, state["ranks"][rank]["rng"])
            loader.load_state_dict(state["ranks"][rank]["loader"])
        else:   # a different world size cannot replay the same per-rank streams: start a fresh epoch
            print(f"resuming on {world} ranks from {state['world_size']}: the data order changes",
                  file=sys.stderr)
            gen.manual_seed(cfg.train.seed * 1_000_003 + rank + start_step)
            loader.load_state_dict({"epoch": max(r["loader"]["epoch"] for r in state["ranks"]) + 1, "batches": 0})
        if is_main:
            print(f"resumed from {ckpt} at step {start_step}", file=sys.stderr)

    train_model: nn.Module = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=device.type == "cuda" and cfg.train.precision == "bf16")

    writer = metrics_file = bar = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"kind": kind, **to_dict(cfg)}, indent=2))
        # lazy: tensorboard loads only on the rank that writes logs
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)
        metrics_path = out / "metrics.jsonl"
        if metrics_path.exists():   # drop records a crashed run wrote after its last checkpoint
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
            metrics_path.write_text("".join(line + "\n" for line in kept))
        metrics_file = open(metrics_path, "a")
        bar = tqdm(total=cfg.train.steps, initial=start_step, desc=f"train {kind}", dynamic_ncols=True)
        print(f"{kind}: {count_params(model) / 1e6:.2f}M parameters, {len(shards)} shards, "
              f"{world} rank(s) on {device}", file=sys.stderr)

    end_step = min(cfg.train.steps, cfg.train.stop_at or cfg.train.steps)
    window = {"loss": 0.0, "n": 0, "tokens": 0, "t0": time.perf_counter(),
              "bins": [[0.0, 0] for _ in TIMESTEP_BINS]}
    model.train()
    data = iter(loader)
    step = start_step
    while step < end_step:
        batch = next(data)
        task.check_bucket(batch)
        try:
            with autocast:
                loss, per_sample, t, extra = task.loss(train_model, batch, gen, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except torch.OutOfMemoryError as e:
            raise RuntimeError(f"out of memory at step {step} on bucket {batch.bucket.name} with batch "
                               f"size {len(batch.captions)}: lower data.bucket_batch_sizes."
                               f"{batch.bucket.name}") from e
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
        opt.step()
        sched.step()
        update_ema(ema, model, min(cfg.train.ema_decay, (1 + step) / (10 + step)))
        step += 1

        window["loss"] += loss.item()
        window["n"] += 1
        window["tokens"] += task.tokens(batch)
        if t is not None:
            for lo, value in zip(t.tolist(), per_sample.tolist()):
                i = next(k for k, edge in enumerate(TIMESTEP_BINS) if lo <= edge)
                window["bins"][i][0] += value
                window["bins"][i][1] += 1
        if step % cfg.train.log_every == 0 or step == end_step:
            stats = torch.tensor([window["loss"], window["n"], window["tokens"], sum(loader.skipped.values())],
                                 dtype=torch.float64)
            if world > 1:
                dist.all_reduce(stats)
            elapsed = time.perf_counter() - window["t0"]
            record = {"step": step, "loss": stats[0].item() / stats[1].item(), "lr": sched.get_last_lr()[0],
                      "grad_norm": grad_norm.item(), "tokens_per_s": stats[2].item() / elapsed,
                      "skipped": int(stats[3].item()), "bucket": batch.bucket.name, **extra}
            if is_main:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                for key in ("loss", "lr", "grad_norm", "tokens_per_s", *extra):
                    writer.add_scalar(f"train/{key}", record[key], step)
                writer.add_scalar("data/skipped_samples", record["skipped"], step)
                for (total, count), edge in zip(window["bins"], TIMESTEP_BINS):
                    if count:
                        writer.add_scalar(f"loss_by_t/t<={edge:.2f}", total / count, step)
                bar.set_postfix(loss=f"{record['loss']:.4f}", skipped=record["skipped"])
            window = {"loss": 0.0, "n": 0, "tokens": 0, "t0": time.perf_counter(),
                      "bins": [[0.0, 0] for _ in TIMESTEP_BINS]}
        if is_main:
            bar.update(1)

        if step % cfg.train.ckpt_every == 0 or step == end_step:
            ranks = gather({"rng": rng_state(gen), "loader": loader.state_dict()}, world)
            if is_main:
                state = {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "world_size": world, "ranks": ranks, "kind": kind}
                save_checkpoint(out, step, {"model": model.state_dict(), "ema": ema.state_dict()},
                                task.metadata(), state, cfg.train.keep_last)
            if world > 1:
                dist.barrier()

    data.close()   # stops the loader thread
    if is_main:
        bar.close()
        writer.close()
        metrics_file.close()
        if loader.skipped:
            print(f"skipped samples: {dict(loader.skipped)}", file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()
    return 0


__all__ = ["main", "load_job_config", "VAEJobConfig", "DiTJobConfig", "DataConfig", "OptimConfig",
           "LoopConfig", "TextConfig", "VAELossConfig", "warmup_cosine", "JOB_CONFIGS"]

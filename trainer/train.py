"""Training: stage 1 the video VAE, stage 2 the DiT on its latents. One loop for both.

Run on one process (`recap train dit ...`) or many (`--launcher torchrun` or `--launcher ray`,
trainer/launch.py): DDP or FSDP2 over NCCL on GPUs, gloo on CPU, optionally with context
parallelism (trainer/parallel.py). Every data-parallel rank reads its own share of the shards;
all randomness comes from per-rank generators saved in each checkpoint, so a resumed run
continues with exactly the losses the uninterrupted run would have had. FSDP runs write sharded
checkpoints (trainer/sharded.py), which resume on any number of ranks.

What a batch's loss is lives in `trainer/tasks.py` (VAE, DiT on shards or a latent cache). On a
GPU the model step runs without waiting on the host: noise and timesteps are drawn on the device,
losses add up on the device (`Window`), the EMA is one fused update, and only logging steps read
numbers back. A bucket whose step would not fit the device's memory is refused before it runs.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from trainer.checkpoint import checkpoint_metadata, latest_checkpoint, load_latest_valid, save_checkpoint, set_aside
from trainer.dit import DiTConfig, count_params
from trainer.memory import GB, device_memory
from trainer.parallel import (
    ContextParallel,
    ParallelError,
    check_heads,
    clip_grad_norm,
    local,
    make_layout,
    shard_model,
)
from trainer.progress import progress_bar
from trainer.rf import FlowConfig
from trainer.runtime import Generators, attention_kernels, gather, init_distributed
from trainer.sharded import ShardedCheckpointer, build_from_meta, load_sharded, load_whole_into_sharded
from trainer.shards import Bucket, BucketLoader, list_shards
from trainer.tasks import DiTTask, TrainSetupError, VAETask, bf16_autocast, compiles
from trainer.text import DEFAULT_TEXT_ENCODER
from trainer.typedconfig import ConfigError, load_config, to_dict
from trainer.vae import AutoencoderSource, VAEConfig

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
    prefetch: int = 2                   # batches decoded (or being decoded) ahead of the step
    decode_workers: int = 0             # threads decoding videos per rank (0: the CPUs / local ranks, at most 8)
    sample_posterior: bool = False      # DiT: latents drawn from the VAE posterior, not its mean

    def __post_init__(self) -> None:
        if self.batch_size < 1 or any(v < 1 for v in self.bucket_batch_sizes.values()):
            raise ConfigError("data: batch sizes must be >= 1")
        if self.shuffle_buffer < 0 or self.prefetch < 0:
            raise ConfigError("data: shuffle_buffer and prefetch must be >= 0")
        if self.decode_workers < 0:
            raise ConfigError("data.decode_workers must be >= 0 (0: one per CPU, at most 8)")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.1           # cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0              # max global grad norm; 0 = no clipping

    def __post_init__(self) -> None:
        if self.lr < 0 or not all(0 <= b < 1 for b in self.betas) or self.eps <= 0:   # lr 0: an untrained baseline
            raise ConfigError("optim: lr >= 0, 0 <= betas < 1 and eps > 0")
        if self.weight_decay < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or self.grad_clip < 0:
            raise ConfigError("optim: weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1, grad_clip >= 0")


@dataclass
class LoopConfig:
    steps: int = 100_000
    seed: int = 0
    ema_decay: float = 0.9999
    precision: Literal["bf16", "fp32"] = "bf16"   # bf16 autocast on GPU; CPU always runs fp32
    activation_checkpointing: bool = False        # recompute DiT block activations in backward ...
    activation_checkpointing_every: int = 1       # ... of every k-th block (1: all; 2: half of them)
    parallel: Literal["ddp", "fsdp"] = "ddp"      # whole model per rank, or FSDP2-sharded per DiT block
    cpu_offload: bool = False                     # fsdp: keep the shards (weights, grads, AdamW) in host memory
    context_parallel: int = 1                     # ranks that split each sample's tokens (Ulysses all-to-all)
    async_checkpoint: bool | None = None          # fsdp: write checkpoints in the background (null: on CUDA)
    compile: bool | None = None         # torch.compile the model (null: on CUDA yes, on CPU no)
    attention_kernel: Literal["auto", "cudnn", "flash", "efficient", "math"] = "auto"   # SDPA backend tried first
    max_memory_gb: float = 0.0          # refuse a bucket whose step needs more (0: the device's memory)
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    stop_at: int = 0                    # stop after this step as if preempted (0 = run to `steps`)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.log_every < 1 or self.ckpt_every < 1 or self.keep_last < 1:
            raise ConfigError("train: steps, log_every, ckpt_every and keep_last must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("train.ema_decay must be in [0, 1)")
        if self.max_memory_gb < 0:
            raise ConfigError("train.max_memory_gb must be >= 0")
        if self.activation_checkpointing_every < 1 or self.context_parallel < 1:
            raise ConfigError("train.activation_checkpointing_every and train.context_parallel must be >= 1")
        if self.cpu_offload and self.parallel != "fsdp":
            raise ConfigError("train.cpu_offload needs train.parallel: fsdp")


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
# Helpers of the loop
# ---------------------------------------------------------------------------------------------

def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of a model's weights, one fused `_foreach_lerp_` per step (on
    this rank's shards when both are FSDP-sharded alike)."""

    def __init__(self, ema: nn.Module, model: nn.Module):
        self.ema_params, self.params = list(ema.parameters()), list(model.parameters())
        self.ema_buffers, self.buffers = list(ema.buffers()), list(model.buffers())

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(local(self.ema_params), local(self.params), 1.0 - decay)
        if self.buffers:
            torch._foreach_copy_(self.ema_buffers, self.buffers)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    EMA(ema, model).update(decay)


def check_resumable(ckpt: Path, want: dict[str, str], model: nn.Module) -> None:
    """TrainSetupError unless `ckpt` holds the model this run builds (`want`: its metadata):
    resuming a VAE run as a DiT, or with another model size, failed inside load_state_dict with a
    page of tensor names. Settings that leave the weights' shapes alone may change."""
    have = checkpoint_metadata(ckpt)
    kinds = {"recap.vae": "VAE", "recap.dit": "DiT"}
    if have.get("format") != want["format"]:
        raise TrainSetupError(f"{ckpt} is a checkpoint of a {kinds.get(have.get('format', ''), 'other')} run and "
                              f"this run trains a {kinds[want['format']]}: choose another --out")
    try:
        with torch.device("meta"):   # names and shapes only
            theirs = {k: tuple(v.shape) for k, v in build_from_meta(have).state_dict().items()}
    except Exception:   # metadata this version cannot rebuild from: loading the weights says what is wrong
        return
    if theirs == {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        return
    old, new = json.loads(have.get("config", "{}")), json.loads(want["config"])
    changes = [f"model.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]
    changes += [f"{k} (from the autoencoder or text encoder): {have.get(k)} -> {want[k]}"
                for k in ("in_channels", "text_dim") if k in want and have.get(k) != want[k]]
    raise TrainSetupError(f"{ckpt} holds a model of another shape than this config builds ("
                          + ("; ".join(changes) or "its weights' shapes differ") + "): resume with the run's "
                          "own settings (its config.json), or train the new model into a new --out")


def apply_optim_config(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
                       ocfg: OptimConfig) -> list[str]:
    """Give a resumed optimizer this run's optim settings; returns what changed. Loading the
    checkpoint's optimizer and schedule brought back the old lr, betas, weight decay and eps, so
    `--resume --set optim.lr=...` went on with the old lr while config.json said the new one."""
    changes = []
    if any(base != ocfg.lr for base in sched.base_lrs):
        changes.append(f"optim.lr {sched.base_lrs[0]:g} -> {ocfg.lr:g}")
        sched.base_lrs = [ocfg.lr for _ in sched.base_lrs]
    for group in opt.param_groups:
        for key, value in (("betas", tuple(ocfg.betas)), ("weight_decay", ocfg.weight_decay), ("eps", ocfg.eps)):
            old = tuple(group[key]) if key == "betas" else group[key]
            if old != value:
                changes.append(f"optim.{key} {old} -> {value}")
                group[key] = value
        group["initial_lr"] = ocfg.lr
    lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs    # what get_last_lr() reports until the next step
    return list(dict.fromkeys(changes))


TIMESTEP_BINS = (0.25, 0.5, 0.75, 1.0)


class Window:
    """What a logging window adds up, on the device: read back only when it is logged."""

    def __init__(self, device: torch.device):
        self.device = device
        self.edges = torch.tensor(TIMESTEP_BINS, device=device)
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.bin_loss = torch.zeros(len(TIMESTEP_BINS), device=self.device)
        self.bin_count = torch.zeros(len(TIMESTEP_BINS), device=self.device)
        self.n, self.tokens, self.data_wait = 0, 0, 0.0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, per_sample: torch.Tensor | None, t: torch.Tensor | None, tokens: int) -> None:
        self.loss += loss.detach().float()
        self.n += 1
        self.tokens += tokens
        if t is not None and per_sample is not None:
            index = torch.bucketize(t.float(), self.edges).clamp_(max=len(TIMESTEP_BINS) - 1)
            self.bin_loss.index_add_(0, index, per_sample.float())
            self.bin_count.index_add_(0, index, torch.ones_like(per_sample, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def main(kind: str, cfg: Any, out: str | Path, resume: bool | Literal["auto"] = False,
         device: torch.device | None = None) -> int:
    """Train `kind` into `out`. `resume`: continue from the run's last checkpoint; "auto" (what
    the launchers pass their workers, so a restarted worker group resumes): when there is one.
    `device`: the one a launcher assigned (Ray Train), else the LOCAL_RANK-th GPU or the CPU."""
    rank, world, device, made_group = init_distributed(device)
    out = Path(out)
    is_main = rank == 0
    tcfg = cfg.train

    def say(message: str) -> None:
        if is_main:
            tqdm.write(message, file=sys.stderr)

    if not cfg.data.shards:
        raise TrainSetupError("no training data: pass --data SHARDS (exported shards or a latent cache)")
    if kind == "vae" and (tcfg.parallel == "fsdp" or tcfg.context_parallel > 1):
        raise TrainSetupError("train.parallel: fsdp and train.context_parallel are for the DiT: the VAE trains with ddp")
    shards = list_shards(cfg.data.shards, cfg.data.split)
    last = latest_checkpoint(out)
    if last is not None and not resume:
        raise TrainSetupError(f"{out} already has checkpoints (last: {last.name}): pass --resume to continue "
                              "that run, or choose a new --out")
    fsdp = tcfg.parallel == "fsdp"
    if tcfg.cpu_offload and device.type != "cuda":
        raise TrainSetupError("train.cpu_offload moves the FSDP shards from the GPU to host memory, and this run "
                              f"has no GPU ({device}): leave it off")
    try:
        if kind == "dit":
            check_heads(cfg.model.num_heads, tcfg.context_parallel)
        layout = make_layout(rank, world, device, tcfg.context_parallel, made_group, fsdp and world > 1)
    except ParallelError as e:
        raise TrainSetupError(str(e)) from e
    cp = layout.cp

    # Model, EMA, optimizer, schedule (identical initialisation on every rank).
    torch.manual_seed(tcfg.seed)
    task = VAETask(cfg, device, shards) if kind == "vae" else DiTTask(cfg, device, shards)
    model = task.model
    if kind == "dit":
        model.grad_checkpointing = tcfg.activation_checkpointing
        model.checkpoint_every = tcfg.activation_checkpointing_every
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if cp > 1:
        model.enable_context_parallel(ContextParallel(layout.cp_group))
    compiled = compiles(cfg, device)
    if compiled:     # before sharding: FSDP's hooks go around each compiled block
        task.compile()
    bf16 = bf16_autocast(cfg, device)
    if layout.mesh is not None:
        for module in (model, ema):
            shard_model(module, module.blocks, layout.mesh, bf16, tcfg.cpu_offload)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay, eps=cfg.optim.eps,
                            fused=True if device.type == "cuda" and layout.mesh is None else None,
                            foreach=True if layout.mesh is not None else None)
    ema_update = EMA(ema, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
        s, cfg.optim.warmup_steps, tcfg.steps, cfg.optim.min_lr_ratio))
    # data and randomness follow the data-parallel rank: a context-parallel group shares both
    gens = Generators.seeded(tcfg.seed * 1_000_003 + layout.dp_rank, device)
    loader = BucketLoader(shards, cfg.data.batch_size, seed=tcfg.seed, rank=layout.dp_rank, world_size=layout.dp,
                          shuffle_buffer=cfg.data.shuffle_buffer, bucket_batch_sizes=cfg.data.bucket_batch_sizes,
                          buckets=cfg.data.buckets or None, prefetch=cfg.data.prefetch,
                          decode_workers=cfg.data.decode_workers, pin_memory=device.type == "cuda")
    checkpointer = ShardedCheckpointer(out, rank, tcfg.async_checkpoint if tcfg.async_checkpoint is not None
                                       else device.type == "cuda") if fsdp else None

    # Resume: weights, optimizer, schedule, this rank's RNG and data position, from the newest
    # checkpoint that loads (a damaged newer one is named, set aside and skipped).
    start_step = 0
    found = load_latest_valid(out, warn=say) if resume else None
    if resume is True and found is None:
        say(f"no checkpoint in {out}: starting from scratch")
    if found is not None:
        ckpt, model_sd, ema_sd, state, damaged = found
        check_resumable(ckpt, task.metadata(), model)
        if model_sd is None:          # sharded: each rank reads what its shards need
            load_sharded(ckpt, model, ema, opt)
        elif layout.mesh is not None:
            load_whole_into_sharded(model, ema, opt, model_sd, ema_sd, state["optimizer"])
        else:
            model.load_state_dict(model_sd)
            ema.load_state_dict(ema_sd)
            opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        for change in apply_optim_config(opt, sched, cfg.optim):
            say(f"resuming with {change} (this run's config)")
        start_step = int(state["step"])
        old_cp = int(state.get("context_parallel", 1))
        old_dp = int(state.get("data_parallel", state["world_size"]))
        if old_dp == layout.dp:       # the same data-parallel ranks: each continues its own streams
            mine = state["ranks"][layout.dp_rank * old_cp]
            gens.load_state(mine["rng"], tcfg.seed * 1_000_003 + layout.dp_rank + start_step)
            loader.load_state_dict(mine["loader"])
        else:   # a different data-parallel size cannot replay the same per-rank streams: start a fresh epoch
            say(f"resuming on {layout.dp} data-parallel rank(s) from {old_dp}: the data order changes")
            gens.reseed(tcfg.seed * 1_000_003 + layout.dp_rank + start_step)
            loader.load_state_dict({"epoch": max(r["loader"]["epoch"] for r in state["ranks"]) + 1, "batches": 0})
        if world > 1:
            dist.barrier()          # every rank has read the checkpoints before any is moved
        for bad in damaged if is_main else []:
            say(f"set the damaged checkpoint aside as {set_aside(bad)}")
        say(f"resumed from {ckpt} at step {start_step}")

    train_model: nn.Module = model
    if world > 1 and layout.mesh is None:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    params = list(model.parameters())

    # Memory per step, per bucket: every bucket known now, the others when they first come.
    limit = int(tcfg.max_memory_gb * GB) if tcfg.max_memory_gb else device_memory(device)
    checked: set[str] = set()

    def check_memory(name: str) -> None:
        checked.add(name)
        bucket = Bucket.parse(name)
        size = cfg.data.bucket_batch_sizes.get(name, cfg.data.batch_size)
        estimate = task.memory(bucket, size, layout)
        say(f"bucket {name}: {estimate.describe()}; {limit / GB:.1f} GB available on {device}")
        if estimate.total > limit:
            raise TrainSetupError(
                f"bucket {name} needs ~{estimate.total / GB:.1f} GB per step ({estimate.tokens_per_sample:,} tokens "
                f"per sample, batch {size}), more than the {limit / GB:.1f} GB available on {device}: lower "
                f"data.bucket_batch_sizes.{name} (or data.batch_size), leave the bucket out with data.buckets, "
                + ("turn on train.activation_checkpointing, " if kind == "dit"
                   and not tcfg.activation_checkpointing else "")
                + ("shard the model (train.parallel: fsdp) or split samples (train.context_parallel), "
                   if kind == "dit" and world > 1 else "") + "or export smaller buckets")

    known = cfg.data.buckets or (sorted(task.cache_buckets) if kind == "dit" else [])
    for name in known:
        check_memory(name)

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
        source = "a latent cache" if kind == "dit" and task.cached_only else f"{len(shards)} shards"
        mesh = f" ({tcfg.parallel} x {layout.dp}, context parallel {cp})" if cp > 1 else \
            (f" ({tcfg.parallel})" if world > 1 or fsdp else "")
        say(f"{kind}: {count_params(model) / 1e6:.2f}M parameters, {source}, {world} rank(s){mesh} on {device}"
            + (", compiled" if compiled else ""))
        bar = progress_bar(total=tcfg.steps, initial=start_step, desc=f"train {kind}")

    end_step = min(tcfg.steps, tcfg.stop_at or tcfg.steps)
    window = Window(device)
    model.train()
    data = iter(loader)
    step = start_step
    try:
        while step < end_step:
            waited = time.perf_counter()
            batch = next(data)
            window.data_wait += time.perf_counter() - waited
            task.check_bucket(batch)
            first_of_bucket = batch.bucket.name not in checked
            if first_of_bucket:
                check_memory(batch.bucket.name)
                started = time.perf_counter()
            try:
                with autocast, attention_kernels(tcfg.attention_kernel):
                    loss, per_sample, t, extra = task.loss(train_model, batch, gens, step)
                opt.zero_grad(set_to_none=True)
                # a context group's ranks each back-propagate their token slice of the same loss:
                # scaled by cp, the mean over all ranks of DDP/FSDP is the sum over the group
                (loss * cp if cp > 1 else loss).backward()
            except torch.OutOfMemoryError as e:
                raise RuntimeError(f"out of memory at step {step} on bucket {batch.bucket.name} with batch "
                                   f"size {len(batch)}: lower data.bucket_batch_sizes."
                                   f"{batch.bucket.name}") from e
            grad_norm = clip_grad_norm(params, cfg.optim.grad_clip or float("inf"), device)
            opt.step()
            sched.step()
            ema_update.update(min(tcfg.ema_decay, (1 + step) / (10 + step)))
            step += 1
            window.add(loss, per_sample, t, task.tokens(batch) // cp)
            if checkpointer is not None:
                checkpointer.poll()
            if first_of_bucket and compiled:   # the step that compiled (or recompiled) for this shape
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                say(f"first step on bucket {batch.bucket.name} (compiling): {time.perf_counter() - started:.1f} s")

            if step % tcfg.log_every == 0 or step == end_step:   # the only steps that read the device
                stats = torch.stack([window.loss.double(), *(torch.tensor(float(v), dtype=torch.float64, device=device)
                                     for v in (window.n, window.tokens, sum(loader.skipped.values()) / cp))])
                bins = torch.stack([window.bin_loss, window.bin_count]).double()
                if world > 1:
                    dist.all_reduce(stats)
                    dist.all_reduce(bins)
                stats, bins = stats.tolist(), bins.tolist()
                elapsed = time.perf_counter() - window.t0
                record = {"step": step, "loss": stats[0] / stats[1], "lr": sched.get_last_lr()[0],
                          "grad_norm": grad_norm.item(), "tokens_per_s": stats[2] / elapsed,
                          "skipped": int(round(stats[3])), "bucket": batch.bucket.name,
                          "data_wait": window.data_wait / elapsed, **{k: float(v) for k, v in extra.items()}}
                if device.type == "cuda":
                    record["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / GB
                if is_main:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "data_wait", *extra):
                        writer.add_scalar(f"train/{key}", record[key], step)
                    writer.add_scalar("data/skipped_samples", record["skipped"], step)
                    for total, count, edge in zip(*bins, TIMESTEP_BINS):
                        if count:
                            writer.add_scalar(f"loss_by_t/t<={edge:.2f}", total / count, step)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", skipped=record["skipped"])
                window.reset()
            if is_main:
                bar.update(1)

            if step % tcfg.ckpt_every == 0 or step == end_step:
                ranks = gather({"rng": gens.state(), "loader": loader.state_dict()}, world)
                state = {"step": step, "scheduler": sched.state_dict(), "world_size": world, "data_parallel": layout.dp,
                         "context_parallel": cp, "parallel": tcfg.parallel, "ranks": ranks, "kind": kind}
                if checkpointer is not None:     # every rank writes its shards
                    checkpointer.save(step, model, ema, opt, task.metadata(), state, tcfg.keep_last)
                elif is_main:
                    save_checkpoint(out, step, {"model": model.state_dict(), "ema": ema.state_dict()},
                                    task.metadata(), {**state, "optimizer": opt.state_dict()}, tcfg.keep_last)
                if world > 1 and checkpointer is None:
                    dist.barrier()
        if checkpointer is not None:
            checkpointer.wait()          # the last checkpoint is on disk before the run ends
    finally:   # also when a step fails: the loader thread stops, logs are flushed, the bar ends
        data.close()
        if is_main:
            bar.close()
            writer.close()
            metrics_file.close()
    if is_main and loader.skipped:
        say(f"skipped samples: {dict(loader.skipped)}")
    if made_group:
        dist.barrier()
        dist.destroy_process_group()
    return 0


__all__ = ["main", "load_job_config", "VAEJobConfig", "DiTJobConfig", "DataConfig", "OptimConfig",
           "LoopConfig", "TextConfig", "VAELossConfig", "warmup_cosine", "JOB_CONFIGS", "TrainSetupError",
           "VAETask", "DiTTask", "EMA", "update_ema"]

"""Memory of one training step, estimated before it runs.

The model is built on the meta device (no memory, no compute) and run forward on a batch of the
bucket's shape; what autograd saves for backward is summed. SDPA on the meta device would count
the full attention matrix of the math path, which neither CUDA (flash / memory-efficient) nor the
CPU (flash for CPU) keeps, so attention is counted as those kernels save it: q, k, v, the output
and a log-sum-exp per query row. bf16 autocast is modelled by a bf16 model plus the bf16 copies
of the weights that autocast keeps. To that come the float32 training states (weights,
gradients, two AdamW moments, the EMA copy) and the batch itself.

Across ranks: FSDP divides the states by the number of ranks (none stay on the GPU with CPU
offload) and adds the blocks it gathers whole for a moment (the current one, the next one
prefetched, and their gradients before the reduce-scatter); context parallelism runs the forward
on one rank's slice of the tokens, with the all-to-alls stood in for by shape changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks
from torch.overrides import TorchFunctionMode

from trainer.dit import DiT, DiTConfig
from trainer.rf import flow_loss
from trainer.vae import CausalConv3d, CausalVAE, VAEConfig

GB = 1024 ** 3
STATE_BYTES_PER_PARAM = 4 + 4 + 8 + 4     # fp32 weight, gradient, AdamW exp_avg + exp_avg_sq, EMA


@dataclass
class MemoryEstimate:
    tokens_per_sample: int   # DiT: latent patches; VAE: pixels (what tokens/s counts in each)
    batch_size: int
    states: int              # bytes of weights, gradients, optimizer moments and EMA
    activations: int         # bytes saved for backward (and recomputed, under checkpointing)
    inputs: int              # bytes of the batch and what encodes it on the fly

    @property
    def total(self) -> int:
        return self.states + self.activations + self.inputs

    def describe(self) -> str:
        return (f"{self.tokens_per_sample:,} tokens per sample, batch {self.batch_size}: ~{self.total / GB:.2f} GB "
                f"per step (states {self.states / GB:.2f} + activations {self.activations / GB:.2f} + "
                f"batch {self.inputs / GB:.2f})")


class _FlashLikeAttention(torch.autograd.Function):
    """Saves what flash / memory-efficient attention saves, in place of the math path's matrix."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _EfficientAttention(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return _FlashLikeAttention.apply(*args[:3])
        return func(*args, **(kwargs or {}))


def saved_bytes(forward: Callable[[], Any], exclude: set[int]) -> int:
    """Bytes autograd saves for backward while `forward()` runs (each storage once; tensors whose
    id is in `exclude`, the parameters, not at all)."""
    seen: dict[int, int] = {}
    keep: list[torch.Tensor] = []        # holds saved tensors so their ids stay unique

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(t) not in exclude and id(base) not in exclude:
            seen[id(base)] = max(seen.get(id(base), 0), base.numel() * base.element_size())
            keep.append(base)
        return t

    with saved_tensors_hooks(pack, lambda t: t), _EfficientAttention():
        out = forward()
    del out
    return sum(seen.values())


def _param_ids(model: torch.nn.Module) -> set[int]:
    return {id(p) for p in model.parameters()}


class _Reshaped(torch.autograd.Function):
    """An all-to-all or gather on the meta device: a new shape, and a place in the graph."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        ctx.shape = x.shape
        return x.new_empty(shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.new_empty(ctx.shape), None


class MetaContextParallel:
    """`trainer.parallel.ContextParallel` as rank 0 of `size` sees shapes, without communicating."""

    def __init__(self, size: int):
        self.size, self.rank = size, 0

    def check_tokens(self, tokens_per_frame: int) -> None:
        if tokens_per_frame % self.size:
            raise ValueError(f"{tokens_per_frame} tokens per frame do not split between {self.size} ranks")

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.chunk(self.size, dim=dim)[0]

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        n, h, length, d = x.shape
        return _Reshaped.apply(x, (n, h // self.size, length * self.size, d))

    def sequence_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, h, length, d = x.shape
        return _Reshaped.apply(x, (n, h * self.size, length // self.size, d))

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] *= self.size
        return _Reshaped.apply(x, tuple(shape))


# What the compiled blocks keep for backward, against the eager saved tensors counted on the meta
# device: inductor fuses the norms, modulations and GELU and saves fewer of their outputs. Measured
# on an H100 (L at 512x288x65, bf16, batch 2 and 4: 0.763 and 0.756 of the count; BENCHMARKS.md),
# rounded up to leave a margin.
COMPILED_SAVED_SHARE = 0.8


def dit_step(model_cfg: DiTConfig, in_channels: int, text_dim: int, latent_shape: tuple[int, int, int],
             batch: int, text_tokens: int, bf16: bool, checkpointing: bool, input_bytes: int = 0,
             shards: int = 1, context_parallel: int = 1, cpu_offload: bool = False,
             checkpoint_every: int = 1, compiled: bool = False) -> MemoryEstimate:
    """One DiT training step on latents of shape (T, H, W) per sample, on one rank: `shards` > 1
    is FSDP over that many ranks, `context_parallel` the ranks each sample's tokens are split over,
    `compiled` the blocks under torch.compile (measured on CUDA in bf16 only, so applied there)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    with torch.device("meta"):
        model = DiT(model_cfg, in_channels, text_dim).to(dtype).train()
        x = torch.empty(batch, in_channels, *latent_shape, dtype=dtype)
        ctx = torch.empty(batch, text_tokens, text_dim, dtype=dtype)
        mask = torch.ones(batch, text_tokens, dtype=torch.bool)
        t, cond = torch.empty(batch, dtype=dtype), torch.zeros(batch, latent_shape[0], dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    grid = model.token_grid(latent_shape)
    if context_parallel > 1:
        model.enable_context_parallel(MetaContextParallel(context_parallel))

    def step() -> torch.Tensor:
        return flow_loss(model, x, ctx, mask, t, torch.empty_like(x), cond)

    acts = saved_bytes(step, _param_ids(model))
    if checkpointing:   # block inputs only, plus one block's activations while it is recomputed
        model.grad_checkpointing, model.checkpoint_every = True, checkpoint_every
        acts = saved_bytes(step, _param_ids(model)) + acts // max(1, model_cfg.depth)
    elif compiled and bf16:
        acts = int(acts * COMPILED_SAVED_SHARE)
    if shards <= 1:
        if bf16:
            acts += 2 * params   # autocast's bf16 copies of the weights, kept for backward
        return MemoryEstimate(math.prod(grid), batch, STATE_BYTES_PER_PARAM * params, acts, input_bytes)
    # FSDP: a shard of the states; whole for a moment: this block and the prefetched next one,
    # the root (embedders, final layer), and one block's gradients before the reduce-scatter
    per = 2 if bf16 else 4
    block = sum(p.numel() for p in model.blocks[0].parameters())
    root = params - block * len(model.blocks)
    gathered = (2 * block + root) * per + block * (per + 4)
    states = 0 if cpu_offload else -(-STATE_BYTES_PER_PARAM * params // shards)
    return MemoryEstimate(math.prod(grid), batch, states + gathered, acts, input_bytes)


def vae_step(vae_cfg: VAEConfig, frames: int, height: int, width: int, batch: int, bf16: bool,
             cpu: bool) -> MemoryEstimate:
    """One VAE training step on videos (frames, height, width); `cpu`: the CPU convolution path."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    with torch.device("meta"):
        model = CausalVAE(vae_cfg).to(dtype).train()
        x = torch.empty(batch, 3, frames, height, width, dtype=dtype)
    for m in model.modules():
        if isinstance(m, CausalConv3d):
            m.cpu_path = cpu
    params = sum(p.numel() for p in model.parameters())

    def step() -> torch.Tensor:
        recon, mean, logvar = model(x)
        return (recon.float() - x.float()).abs().mean() + (mean.float() ** 2 + logvar.float().exp()).mean()

    acts = saved_bytes(step, _param_ids(model)) + (2 * params if bf16 else 0)
    video = batch * frames * height * width * 3      # uint8, float32, and the float32 reconstruction
    return MemoryEstimate(frames * height * width, batch, STATE_BYTES_PER_PARAM * params, acts, video * (1 + 4 + 4))


def encode_transient(vae_cfg: VAEConfig | None, frames: int, height: int, width: int, batch: int,
                     bf16: bool) -> int:
    """Peak of an on-the-fly VAE encode (no grad): about three full-resolution feature maps."""
    if vae_cfg is None:
        return 0
    per = 2 if bf16 else 4
    return 3 * batch * vae_cfg.channels * (frames + 2) * height * width * per


def device_memory(device: torch.device) -> int:
    """Bytes this process can use on `device`: what is free plus what it holds already."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device)
    return psutil.virtual_memory().available + psutil.Process().memory_info().rss


__all__ = ["MemoryEstimate", "MetaContextParallel", "dit_step", "vae_step", "encode_transient", "device_memory", "saved_bytes", "GB",
           "STATE_BYTES_PER_PARAM"]

"""How a training run spreads over processes: one device mesh of data parallel x context parallel.

- **Data parallel** (`train.parallel`): `ddp` keeps a whole model per rank and averages gradients
  (small models); `fsdp` shards every DiT block (and the rest, as the root unit) with FSDP2
  (`torch.distributed.fsdp.fully_shard`): fp32 master weights, gradients and AdamW moments live
  sharded over all ranks; on CUDA with bf16 the blocks compute in bf16 and gradients are reduced
  in fp32; `train.cpu_offload` keeps the shards in host memory.
- **Context parallel** (`train.context_parallel: N`): the N ranks of a group hold the same samples,
  each a 1/N slice of every frame's tokens. Self-attention swaps a token slice for a head slice
  with an all-to-all (Ulysses), attends over the whole clip, and swaps back; the output tokens are
  gathered before the loss, so every rank of the group computes the loss of the whole sample.
  A group's ranks are consecutive (within a node, where the all-to-all is fast).

Rank r is data-parallel rank r // N and context rank r % N; the data loader and the random
generators follow the data-parallel rank, so a context group draws one stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor


class ParallelError(ValueError):
    """A parallel layout that cannot run (world size, heads or tokens not divisible): one line for the user."""


@dataclass
class Layout:
    """Where this rank sits: its global rank, its data-parallel and context-parallel coordinates."""

    rank: int
    world: int
    device: torch.device
    cp: int = 1                                   # context-parallel group size
    owns_group: bool = False                      # this process made the process group (and ends it)
    cp_group: dist.ProcessGroup | None = None
    mesh: DeviceMesh | None = None                # 1-D over the world: FSDP shards over it

    @property
    def dp(self) -> int:
        return self.world // self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp


def make_layout(rank: int, world: int, device: torch.device, cp: int, owns_group: bool, fsdp: bool) -> Layout:
    """The mesh of a run: `cp` consecutive ranks per context group, FSDP over the whole world."""
    if cp < 1 or world % cp:
        raise ParallelError(f"train.context_parallel={cp} must divide the {world} process(es) of the job")
    layout = Layout(rank, world, device, cp, owns_group)
    if world == 1:
        return layout
    if cp > 1:
        grid = init_device_mesh(device.type, (world // cp, cp), mesh_dim_names=("dp", "cp"))
        layout.cp_group = grid.get_group("cp")
    if fsdp:
        layout.mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return layout


def check_heads(num_heads: int, cp: int) -> None:
    if cp > 1 and num_heads % cp:
        raise ParallelError(f"train.context_parallel={cp} splits attention heads between ranks, and the model has "
                            f"{num_heads} heads, not a multiple of {cp}: choose a context_parallel that divides "
                            f"{num_heads} (or set model.num_heads)")


# ---------------------------------------------------------------------------------------------
# FSDP2
# ---------------------------------------------------------------------------------------------

def shard_model(model: nn.Module, blocks: nn.ModuleList, mesh: DeviceMesh, bf16: bool, cpu_offload: bool) -> None:
    """FSDP2 per block, then the root (embedders, final layer); weights stay fp32 (the master
    copy), blocks all-gather in bf16 when `bf16`, gradients reduce in fp32. Inputs are not cast:
    the model casts its own (timesteps and RoPE tables stay fp32)."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32, cast_forward_inputs=False)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for i, block in enumerate(blocks):
        # the last block is not resharded after forward: backward starts with it at once
        fully_shard(block, mesh=mesh, mp_policy=policy, offload_policy=offload,
                    reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def local(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's shard of each tensor (the tensor itself when it is not a DTensor)."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def clip_grad_norm(params: list[nn.Parameter], max_norm: float, device: torch.device) -> torch.Tensor:
    """Clip gradients to a global L2 norm; returns the norm before clipping (a 0-d tensor on `device`).

    Sharded (FSDP) gradients: each rank sums the squares of its shards, one all-reduce on `device`
    adds them up (also when CPU offload keeps the shards in host memory, where NCCL cannot reach)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not isinstance(grads[0], DTensor):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    shards = local(grads)
    squares = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in shards]).pow(2).sum()
    squares = squares.to(device)
    dist.all_reduce(squares, group=grads[0].device_mesh.get_group())
    norm = squares.sqrt()
    if math.isfinite(max_norm):
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(shards, scale.to(shards[0].device))
    return norm


# ---------------------------------------------------------------------------------------------
# Context parallelism
# ---------------------------------------------------------------------------------------------

def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    n = dist.get_world_size(group)
    inputs = [c.contiguous() for c in x.chunk(n, dim=scatter_dim)]
    outputs = [torch.empty_like(c) for c in inputs]
    dist.all_to_all(outputs, inputs, group=group)     # NCCL and gloo both have it
    return torch.cat(outputs, dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """Scatter `scatter_dim` across the group, gather `gather_dim`; backward is the reverse swap."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup, scatter_dim: int, gather_dim: int) -> torch.Tensor:
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, ctx.group, gather_dim, scatter_dim), None, None, None


class _GatherTokens(torch.autograd.Function):
    """Every rank's slice, concatenated along `dim`. Each rank goes on to compute the same loss
    from the whole, so backward keeps this rank's slice of the gradient (no communication)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.n, ctx.rank, ctx.dim = n, rank, dim
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.chunk(ctx.n, dim=ctx.dim)[ctx.rank].contiguous(), None, None


class ContextParallel:
    """What the DiT calls to run on a slice of each frame's tokens (see the module docstring)."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def check_tokens(self, tokens_per_frame: int) -> None:
        if tokens_per_frame % self.size:
            raise ParallelError(f"context_parallel={self.size} splits each frame's {tokens_per_frame} tokens between "
                                f"ranks, and {tokens_per_frame} is not a multiple of {self.size}: choose a bucket or "
                                "context_parallel that divides it")

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's slice of `dim` (gradients flow back into that slice only)."""
        return x.chunk(self.size, dim=dim)[self.rank]

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(N, heads, L/n, hd) -> (N, heads/n, L, hd): all tokens, this rank's heads."""
        return _AllToAll.apply(x, self.group, 1, 2)

    def sequence_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, heads/n, L, hd) -> (N, heads, L/n, hd): back to this rank's tokens, all heads."""
        return _AllToAll.apply(x, self.group, 2, 1)

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return _GatherTokens.apply(x, self.group, dim)


__all__ = ["Layout", "make_layout", "ParallelError", "check_heads", "shard_model", "is_sharded", "local",
           "clip_grad_norm", "ContextParallel"]

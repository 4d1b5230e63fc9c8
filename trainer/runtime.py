"""Where a training or caching process runs: its rank, device and random generators.

Two generators per rank: `host` (CPU) draws the decisions the host acts on (caption dropout,
condition masks), `device` (on the rank's device) draws noise and timesteps where they are used,
so nothing waits on a copy. On a CPU run they are one generator (the draws of earlier versions). A draw never mixes devices: a CUDA generator cannot fill a CPU tensor
nor a CPU generator a CUDA one, so `randn`/`rand` draw on the generator's own device and move.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun."""
    rank, world, device, _ = init_distributed()
    return rank, world, device


def init_distributed(device: torch.device | None = None) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, whether this call made the process group). Under torchrun the
    group is made here from the environment; under Ray Train it exists already, and `device`
    is the one Ray assigned this worker."""
    if dist.is_initialized():     # Ray Train (or a caller) made the group
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    made = world > 1 and not dist.is_initialized()
    if made:
        # CUDA: NCCL for tensors on the GPU, gloo for the few on the host (the background
        # checkpoint writer, gathered RNG states)
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return rank, world, device, made


# train.attention_kernel -> the SDPA backend tried first; the others stay allowed behind it, so
# inputs the first cannot take (a masked cross-attention, the CPU) still run
ATTENTION_KERNELS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                     "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def attention_kernels(first: str) -> contextlib.AbstractContextManager:
    """A context in which SDPA tries `first` (a key of ATTENTION_KERNELS) before the others;
    "auto": torch's own order (flash, memory-efficient, math, and cuDNN last)."""
    if first == "auto":
        return contextlib.nullcontext()
    order = [ATTENTION_KERNELS[first], *(b for name, b in ATTENTION_KERNELS.items() if name != first)]
    return sdpa_kernel(order, set_priority=True)


def gather(obj: Any, world: int) -> list[Any]:
    """Every rank's `obj`, in rank order (all ranks must call it)."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def randn(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
          device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise for a tensor on `device`, drawn in float32 on the generator's device
    (the same numbers whatever `device` and `dtype` are)."""
    where = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=where).to(device, dtype, non_blocking=True)


def rand(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
         device: torch.device | str) -> torch.Tensor:
    """Uniform [0, 1) draws for `device` from a generator on any device (as `randn`)."""
    where = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=where).to(device, non_blocking=True)


@dataclass
class Generators:
    """A rank's two generators (see the module docstring)."""

    host: torch.Generator
    device: torch.Generator

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> "Generators":
        host = torch.Generator().manual_seed(seed)
        on_device = host if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed + 7919)
        return cls(host, on_device)

    def reseed(self, seed: int) -> None:
        self.host.manual_seed(seed)
        if self.device is not self.host:
            self.device.manual_seed(seed + 7919)

    def state(self) -> dict[str, Any]:
        """Plain tensors and containers (checkpoints load with `weights_only=True`)."""
        state = {"generator": self.host.get_state(), "device_generator": self.device.get_state(),
                 "torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device.device)
        return state

    def load_state(self, state: dict[str, Any], fallback_seed: int) -> None:
        self.host.set_state(state["generator"])
        if self.device is self.host:
            pass
        elif "device_generator" in state and state["device_generator"].numel() == self.device.get_state().numel():
            self.device.set_state(state["device_generator"])
        else:   # a checkpoint from before the device generator, or from a CPU run: a fresh stream
            self.device.manual_seed(fallback_seed + 7919)
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        if "cuda" in state and self.device.device.type == "cuda":
            state_cuda = state["cuda"]
            if isinstance(state_cuda, (list, tuple)):   # older checkpoints kept every visible GPU's
                state_cuda = state_cuda[self.device.device.index or 0]
            torch.cuda.set_rng_state(state_cuda, self.device.device)


__all__ = ["setup_distributed", "init_distributed", "gather", "randn", "rand", "Generators"]

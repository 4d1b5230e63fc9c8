"""Sharded checkpoints (`torch.distributed.checkpoint`) for runs whose weights are split (FSDP).

`RUN/checkpoints/step_NNNNNNNN/` holds

- `dcp/`: the model, its EMA and the optimizer, each rank writing its own shards in parallel
  (on CUDA in the background: the step goes on while the files are written);
- `state.pt`: step, scheduler, mesh and every rank's RNG and data position (as the whole-model
  format, `trainer/checkpoint.py`), and `meta.json`: what the weights are (the safetensors metadata).

DCP stores every tensor with its global shape, so a checkpoint loads onto any number of ranks,
sharded or not: 8 ranks -> 4, FSDP -> one process. The directory is written under a hidden name
and renamed into place by rank 0 only once every rank's shards and the metadata are on disk.
`export_weights` turns one into plain `model.safetensors` / `ema.safetensors` files.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from safetensors.torch import save_file
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from trainer.checkpoint import CheckpointError, fsync_dir, list_checkpoints, prune

DCP_DIR = "dcp"
META_FILE = "meta.json"


def is_sharded_checkpoint(ckpt: str | Path) -> bool:
    return (Path(ckpt) / DCP_DIR / ".metadata").is_file()


def check_sharded(ckpt: Path) -> None:
    """CheckpointError unless the DCP metadata reads and every file it names is whole."""
    folder = ckpt / DCP_DIR
    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except Exception as e:   # a truncated or garbage .metadata: unpickling errors of every kind
        raise CheckpointError(f"{folder / '.metadata'} cannot be read ({type(e).__name__})") from e
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in needed.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size < size:
            raise CheckpointError(f"{path} is missing or cut short")
    try:
        json.loads((ckpt / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / META_FILE} cannot be read ({type(e).__name__})") from e


def _dcp_load(state: dict[str, Any], folder: Path) -> None:
    if dist.is_initialized():
        dcp.load(state, checkpoint_id=str(folder))
        return
    with warnings.catch_warnings():   # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)


def read_meta(ckpt: str | Path) -> dict[str, str]:
    return json.loads((Path(ckpt) / META_FILE).read_text())


def _state(model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer | None) -> dict[str, Any]:
    state: dict[str, Any] = {"ema": get_model_state_dict(ema)}
    if opt is None:
        state["model"] = get_model_state_dict(model)
    else:
        state["model"], state["optim"] = get_state_dict(model, opt)
    return state


def load_sharded(ckpt: Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer | None) -> None:
    """Fill `model`, `ema` and `opt` (sharded or whole) from a DCP checkpoint of any mesh."""
    state = _state(model, ema, opt)
    _dcp_load(state, ckpt / DCP_DIR)
    if opt is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    set_model_state_dict(ema, state["ema"])


def load_whole_into_sharded(model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                            model_sd: dict[str, torch.Tensor], ema_sd: dict[str, torch.Tensor],
                            optim_sd: dict[str, Any]) -> None:
    """A whole-model checkpoint (safetensors + `opt.state_dict()`) into FSDP-sharded modules:
    the optimizer's state is keyed by parameter index there, by parameter name here."""
    names = [name for name, _ in model.named_parameters()]
    by_name = {"state": {names[int(i)]: s for i, s in optim_sd["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in optim_sd["param_groups"]]}
    whole = StateDictOptions(full_state_dict=True)
    set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=by_name, options=whole)
    set_model_state_dict(ema, ema_sd, options=whole)


class ShardedCheckpointer:
    """Saves DCP checkpoints, at most one in flight; `wait()` before reading or leaving."""

    def __init__(self, run_dir: Path, rank: int, use_async: bool):
        self.root, self.rank, self.use_async = run_dir / "checkpoints", rank, use_async
        self.pending: tuple[Future, Callable[[], None]] | None = None
        # the background writer talks over its own gloo group, never the training one
        self.group = dist.new_group(backend="gloo") if use_async and dist.is_initialized() else None

    def save(self, step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
             metadata: dict[str, str], state: dict[str, Any], keep_last: int) -> None:
        self.wait()
        tmp, final = self.root / f".tmp_step_{step:08d}", self.root / f"step_{step:08d}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if dist.is_initialized():
            dist.barrier()

        def finish() -> None:   # rank 0, once every rank's shards and the metadata are written
            if self.rank != 0:
                return
            torch.save(state, tmp / "state.pt")
            (tmp / META_FILE).write_text(json.dumps(metadata))
            for f in [*tmp.iterdir(), *(tmp / DCP_DIR).iterdir()]:
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.root)
            prune(self.root.parent, keep_last)

        tensors = _state(model, ema, opt)
        if self.use_async:
            future = dcp.async_save(tensors, checkpoint_id=str(tmp / DCP_DIR), process_group=self.group)
            self.pending = (future, finish)
        elif dist.is_initialized():
            dcp.save(tensors, checkpoint_id=str(tmp / DCP_DIR))
            finish()
        else:
            with warnings.catch_warnings():   # "assuming the intent is to save in a single process": it is
                warnings.simplefilter("ignore", UserWarning)
                dcp.save(tensors, checkpoint_id=str(tmp / DCP_DIR), no_dist=True)
            finish()

    def poll(self) -> None:
        """Finish a background save that is done (rename it into place)."""
        if self.pending is not None and self.pending[0].done():
            self.wait()

    def wait(self) -> None:
        if self.pending is not None:
            future, finish = self.pending
            self.pending = None
            future.result()
            finish()


def export_weights(run_dir: str | Path, step: int | None = None, out: str | Path | None = None) -> list[Path]:
    """Plain `model.safetensors` and `ema.safetensors` (with their metadata) of a sharded checkpoint,
    written into the checkpoint's folder or `out`; returns the files."""
    found = [c for c in list_checkpoints(run_dir) if step is None or c.name == f"step_{step:08d}"]
    if not found:
        raise FileNotFoundError(f"no checkpoint{f' at step {step}' if step is not None else ''} in {run_dir}")
    ckpt = found[-1]
    target = Path(out) if out else ckpt
    if not is_sharded_checkpoint(ckpt):
        if target == ckpt:
            return [ckpt / "model.safetensors", ckpt / "ema.safetensors"]
        target.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy2(ckpt / name, target / name)) for name in ("model.safetensors", "ema.safetensors")]
    check_sharded(ckpt)
    weights, meta = load_sharded_weights(ckpt)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, tensors in weights.items():
        path = target / f"{stem}.safetensors"
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        written.append(path)
    return written


def load_sharded_weights(ckpt: Path, stems: tuple[str, ...] = ("model", "ema")
                         ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """Whole tensors of `stems` from a DCP checkpoint, in this process (no process group): the
    model is rebuilt from the checkpoint's metadata to know the names and shapes to read."""
    meta = read_meta(ckpt)
    with torch.device("meta"):     # names, shapes and dtypes only
        shapes = build_from_meta(meta).state_dict()
    state = {stem: {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()} for stem in stems}
    _dcp_load(state, ckpt / DCP_DIR)
    return state, meta


def build_from_meta(meta: dict[str, str]) -> nn.Module:
    """An empty DiT or VAE of the shape a checkpoint's metadata describes."""
    # lazy: the models import trainer.checkpoint, which this module's callers import first
    from trainer.dit import DiT, DiTConfig
    from trainer.typedconfig import from_dict
    from trainer.vae import CausalVAE, VAEConfig

    if meta.get("format") == "recap.dit":
        return DiT(from_dict(DiTConfig, json.loads(meta["config"])), int(meta["in_channels"]), int(meta["text_dim"]))
    if meta.get("format") == "recap.vae":
        return CausalVAE(from_dict(VAEConfig, json.loads(meta["config"])))
    raise CheckpointError(f"not a recap checkpoint (format {meta.get('format')!r})")


__all__ = ["ShardedCheckpointer", "is_sharded_checkpoint", "check_sharded", "load_sharded", "load_whole_into_sharded",
           "export_weights", "load_sharded_weights", "build_from_meta", "read_meta", "DCP_DIR", "META_FILE"]

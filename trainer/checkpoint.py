"""Run checkpoints: `RUN/checkpoints/step_NNNNNNNN/` holding

- `model.safetensors`, `ema.safetensors`: weights, with the model config in the file's metadata,
  so `safetensors` alone can read them and `trainer.vae.load_vae` / the sampler can rebuild them;
- `state.pt`: optimizer, scheduler, step, and per-rank RNG and data position, plain tensors and
  containers only, so `torch.load(weights_only=True)` reads it.

A run whose weights are sharded (FSDP) writes the same folders in the sharded format of
`trainer/sharded.py` (`dcp/`, `state.pt`, `meta.json`); both load here, either into any mesh.

A checkpoint is written into a hidden temporary directory and renamed into place, so a crash
never leaves a half checkpoint that resume would pick; only the last N are kept. A checkpoint
damaged afterwards (a truncated file, a bad header, a garbage `state.pt`) is found when it is
loaded: `load_latest_valid` says which file is bad and falls back to the newest one that loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainer.diskfull import no_space_errno

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, dict[str, torch.Tensor]],
                    metadata: dict[str, str], state: dict[str, Any], keep_last: int) -> Path:
    """Write `weights` (file stem -> state dict) and `state` for `step`; prune to `keep_last`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for stem, tensors in weights.items():
            tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
            save_file(tensors, str(tmp / f"{stem}.safetensors"), metadata=metadata)
        # through a Python file: a failed write's OSError (its errno) is kept as the context of
        # torch's own error ('unexpected pos ...'), which says nothing of the disk
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)     # half a checkpoint holds the room the next one needs
        code = no_space_errno(e)
        if not code:
            raise
        last = latest_checkpoint(run_dir)
        raise CheckpointWriteError(
            f"cannot write checkpoint {final}: {os.strerror(code)}; the run stopped at step {step}. Free space "
            "(or keep fewer: train.keep_last), then rerun with --resume: it continues from "
            + (f"{last.name}" if last else "the start (no checkpoint was written yet)")) from None
    if final.exists():                     # re-saving the same step (e.g. after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    prune(run_dir, keep_last)
    return final


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of one `.safetensors` file."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def load_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    return torch.load(Path(checkpoint_dir) / "state.pt", map_location="cpu", weights_only=True)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written for want of room (a full disk, a quota, a file size limit)."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read: missing, truncated, a bad header, not what recap wrote."""


WEIGHT_FILES = ("model.safetensors", "ema.safetensors")


def _damage(path: Path, e: Exception) -> CheckpointError:
    if not path.exists():
        return CheckpointError(f"{path} is missing")
    return CheckpointError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")


Weights = dict[str, torch.Tensor]


def load_checkpoint(checkpoint_dir: str | Path) -> tuple[Weights | None, Weights | None, dict[str, Any]]:
    """(model weights, EMA weights, state) of one checkpoint; CheckpointError names a bad file.
    A sharded checkpoint is checked and its state read, and its weights are None: they load
    straight into the (sharded or whole) modules with `trainer.sharded.load_sharded`."""
    ckpt = Path(checkpoint_dir)
    weights: list[Weights | None] = []
    if (ckpt / "dcp").is_dir():
        # lazy: torch.distributed.checkpoint only for runs that wrote sharded checkpoints
        from trainer.sharded import check_sharded
        check_sharded(ckpt)
        weights = [None, None]
    for name in WEIGHT_FILES if not weights else ():
        try:
            weights.append(load_file(str(ckpt / name)))
        except Exception as e:   # safetensors raises its own error types for every kind of damage
            raise _damage(ckpt / name, e) from e
    try:
        state = load_state(ckpt)
    except Exception as e:       # zip, unpickling and EOF errors of a damaged file
        raise _damage(ckpt / "state.pt", e) from e
    needed = {"step", "scheduler", "ranks"} | ({"optimizer"} if weights[0] is not None else set())
    if not isinstance(state, dict) or not needed <= set(state):
        raise CheckpointError(f"{ckpt / 'state.pt'} is not a recap training state")
    return weights[0], weights[1], state


def load_latest_valid(run_dir: str | Path, warn: Callable[[str], object] = print
                      ) -> tuple[Path, Weights | None, Weights | None, dict[str, Any], list[Path]] | None:
    """The newest checkpoint that loads: (its dir, model weights, EMA weights, state, the newer
    damaged ones). None when the run has no checkpoint; CheckpointError when none loads."""
    damaged: list[Path] = []
    problems: list[str] = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            model, ema, state = load_checkpoint(ckpt)
        except CheckpointError as e:
            damaged.append(ckpt)
            problems.append(str(e))
            warn(f"checkpoint {ckpt.name} is damaged: {e}; trying the one before")
            continue
        return ckpt, model, ema, state, damaged
    if problems:
        raise CheckpointError(f"no checkpoint of {run_dir} can be loaded: " + "; ".join(problems))
    return None


def checkpoint_metadata(checkpoint_dir: str | Path) -> dict[str, str]:
    """What a checkpoint's weights are (format, model config...): the safetensors metadata of a
    whole checkpoint, `meta.json` of a sharded one; {} when neither can be read."""
    ckpt = Path(checkpoint_dir)
    try:
        if (ckpt / "dcp").is_dir():
            return json.loads((ckpt / "meta.json").read_text())
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            return f.metadata() or {}
    except Exception:   # safetensors and json errors of a damaged file, which loading the weights names
        return {}


def set_aside(checkpoint_dir: Path) -> Path:
    """Rename a damaged checkpoint to `step_N.damaged`, kept for inspection and never picked again."""
    target = checkpoint_dir.with_name(checkpoint_dir.name + ".damaged")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(checkpoint_dir, target)
    return target


__all__ = ["save_checkpoint", "CheckpointWriteError", "prune", "fsync_dir", "Weights", "list_checkpoints", "latest_checkpoint", "load_weights", "load_state",
           "CheckpointError", "load_checkpoint", "load_latest_valid", "checkpoint_metadata", "set_aside"]

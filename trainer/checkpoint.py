"""Run checkpoints: `RUN/checkpoints/step_NNNNNNNN/` holding

- `model.safetensors`, `ema.safetensors`: weights, with the model config in the file's metadata,
  so `safetensors` alone can read them and `trainer.vae.load_vae` / the sampler can rebuild them;
- `state.pt`: optimizer, scheduler, step, and per-rank RNG and data position, plain tensors and
  containers only, so `torch.load(weights_only=True)` reads it.

A checkpoint is written into a hidden temporary directory and renamed into place, so a crash
never leaves a half checkpoint that resume would pick; only the last N are kept.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _fsync_dir(path: Path) -> None:
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
    for stem, tensors in weights.items():
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / f"{stem}.safetensors"), metadata=metadata)
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():                     # re-saving the same step (e.g. after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


__all__ = ["save_checkpoint", "list_checkpoints", "latest_checkpoint", "load_weights", "load_state"]

"""Aesthetic score: a CLIP/SigLIP image embedding (L2-normalised) fed to a small linear/MLP head,
as in the LAION improved aesthetic predictor (CLIP ViT-L/14 + `sac+logos+ava1-l14-linearMSE`,
scores ~1-10). Open-Sora and Open-Sora-Plan filter with exactly that pair.

The encoder is any transformers model with `get_image_features` (CLIPModel, SiglipModel, ...),
from an HF id or a local path. The head is a state dict of Linear layers applied in key order
(the LAION file's `layers.0/2/4/6/7.weight` layout; its MLP has no activations between layers).
Without configured weights there is no score: the column stays null, never a made-up value.

Cost: the encoder dominates. One 224 px image through a ViT-L/14 costs ~2.1 s of one CPU thread
(ViT-B/32: ~0.11 s), so on CPU even one frame every `every_s` = 2 s is several times the
decode; with `device: cuda` a batch of 16 takes milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ingest.signals.config import AestheticConfig
from pipeline.ingest.signals.series import DetailSchedule, SampleList
from trainer.typedconfig import ConfigError

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def check_model(cfg: AestheticConfig) -> None:
    """ConfigError naming `signals.aesthetic.model` unless the model can be loaded without a
    download: a local folder, or an HF id already in the Hugging Face cache. Called where a job
    starts, so a missing model fails once, before any video, not once per video after decoding."""
    if not cfg.model:
        return
    local = Path(cfg.model).expanduser()
    if local.is_dir():
        return
    if local.exists() or not _HF_ID.match(cfg.model):
        raise ConfigError(f"signals.aesthetic.model: {cfg.model!r} is not a model folder nor a Hugging Face id")
    # lazy: huggingface_hub is only needed when an aesthetic model is configured
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(cfg.model, "config.json"), str):
        raise ConfigError(f"signals.aesthetic.model: {cfg.model!r} is not a local folder and not in the Hugging "
                          f"Face cache: fetch it first (`hf download {cfg.model}`) or give the path of a copy")


def load_head(path: str | Path, activation: str = "none"):
    """A torch Sequential of the Linear layers in a state dict (keys ordered by their numbers)."""
    # lazy: torch takes ~1.5 s to import; only this model path needs it
    import torch
    from torch import nn

    path = Path(path)
    if path.suffix == ".safetensors":
        # lazy: imports torch; only this model path needs it
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)

    def order(key: str) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", key)]

    weights = sorted((k for k, v in state.items() if k.endswith("weight") and v.ndim == 2), key=order)
    if not weights:
        raise ValueError(f"{path}: no Linear weights in this state dict")
    layers: list[nn.Module] = []
    for i, key in enumerate(weights):
        w = state[key]
        linear = nn.Linear(w.shape[1], w.shape[0])
        linear.weight.data.copy_(w)
        linear.bias.data.copy_(state[key[: -len("weight")] + "bias"])
        layers.append(linear)
        if activation == "relu" and i < len(weights) - 1:
            layers.append(nn.ReLU())
    if layers[-1].out_features != 1:
        raise ValueError(f"{path}: the head must end in one output, not {layers[-1].out_features}")
    return nn.Sequential(*layers).eval()


class AestheticScorer:
    """Image encoder + head; `score(list of RGB uint8 arrays) -> (n,) float32`."""

    def __init__(self, cfg: AestheticConfig):
        # lazy: torch takes ~1.5 s to import; only this model path needs it
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.torch = torch
        self.device = torch.device(cfg.device)
        self.processor = AutoImageProcessor.from_pretrained(cfg.model)
        self.model = AutoModel.from_pretrained(cfg.model).to(self.device).eval()
        self.head = load_head(cfg.head, cfg.head_activation).to(self.device)

    def score(self, images: list[np.ndarray]) -> np.ndarray:
        torch = self.torch
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pixels)
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output  # (N, D)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            if emb.shape[-1] != self.head[0].in_features:
                raise ValueError(f"aesthetic head expects {self.head[0].in_features}-d embeddings, "
                                 f"the model gives {emb.shape[-1]}")
            return self.head(emb.float()).squeeze(-1).cpu().numpy().astype(np.float32)


class AestheticAnalyzer:
    """Scores the sampled detail frames in batches; the last partial batch runs on first read."""

    name = "aesthetic"

    def __init__(self, cfg: AestheticConfig, scorer: AestheticScorer | None = None):
        self.cfg = cfg
        self.scorer = scorer if scorer is not None else AestheticScorer(cfg)
        self.schedule = DetailSchedule(cfg.every_s)
        self.samples = SampleList()
        self._pending: list[tuple[int, np.ndarray]] = []

    def update(self, frame) -> None:
        detail = getattr(frame, "detail", None)
        if detail is None or not self.schedule.due(frame.pts_s):
            return
        self._pending.append((frame.index, np.ascontiguousarray(detail[..., ::-1])))  # BGR -> RGB
        if len(self._pending) >= self.cfg.batch_size:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            scores = self.scorer.score([img for _, img in self._pending])
            for (index, _), s in zip(self._pending, scores):
                self.samples.add(index, float(s))
            self._pending = []

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]:
        self._flush()
        values = self.samples.window(start_frame, end_frame)
        return {"aesthetic_score": float(np.mean(values)) if values else None}

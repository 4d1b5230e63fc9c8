"""The NumPy MiniLM that embeds queries gives the vectors sentence-transformers gives for the same
bundled model (the one `recap index` stores), and loads once per process."""

from __future__ import annotations

import numpy as np
import pytest

from index.embedders import TextEmbedder, embed_query, query_encoder
from index.minilm import MAX_TOKENS, MiniLMQueryEncoder

TEXTS = [
    "a static shot",
    "A golden retriever runs along a sandy beach at sunset, waves rolling in behind it.",
    "",
    "Ünïcödé façade — 東京の夜景 🚀, tabs\tand\nnewlines",
    "UPPER case and punctuation!!! (brackets) [more] {and more} 3.14159",
    "word " * 400,                       # longer than the model's 256 tokens: truncated the same way
]


@pytest.mark.slow   # importing sentence-transformers alone takes ~6 s here
def test_numpy_minilm_matches_sentence_transformers():
    ours = MiniLMQueryEncoder().embed_texts(TEXTS)
    theirs = TextEmbedder(device="cpu").embed_texts(TEXTS)
    assert ours.shape == theirs.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    # the long text really was cut: its vector equals that of its first 256 tokens' worth of words
    enc = MiniLMQueryEncoder()
    assert len(enc.tokenizer.encode(TEXTS[-1]).ids) == MAX_TOKENS
    assert np.allclose(enc.embed_texts(["word " * 254])[0], ours[-1], atol=1e-6)


def test_the_query_encoder_loads_once_per_process():
    a = query_encoder("text", "bundled")
    assert query_encoder("text", "bundled") is a and isinstance(a, MiniLMQueryEncoder)
    q = embed_query(a, "a dog running on a beach")
    assert q.shape == (384,) and abs(float(np.linalg.norm(q)) - 1) < 1e-6

"""Aesthetic score through the real loading path, with a tiny random CLIP saved locally."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.ingest.signals.aesthetic import AestheticScorer, load_head
from pipeline.ingest.signals.analyzers import clip_signals, make_analyzers
from pipeline.ingest.signals.config import SignalsConfig
from trainer.typedconfig import ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A 2-layer CLIP (16-d image embeddings) and a LAION-layout head, both saved to disk."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    root = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config={**small, "vocab_size": 99, "max_position_embeddings": 16,
                                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
                        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    CLIPModel(config).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    # same key layout as LAION's sac+logos+ava1-l14-linearMSE.pth (Dropout at the odd indices)
    head = {"layers.0.weight": torch.randn(8, 16), "layers.0.bias": torch.randn(8),
            "layers.2.weight": torch.randn(1, 8), "layers.2.bias": torch.tensor([5.0])}
    save_file(head, str(root / "head.safetensors"))
    return root / "clip", root / "head.safetensors"


def detail_frames(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (90, 160, 3), dtype=np.uint8) for _ in range(n)]


def test_score_matches_encoder_plus_head(tiny_weights):
    model_dir, head_path = tiny_weights
    cfg = SignalsConfig()
    cfg.aesthetic.model, cfg.aesthetic.head = str(model_dir), str(head_path)
    scorer = AestheticScorer(cfg.aesthetic)
    images = [f[..., ::-1].copy() for f in detail_frames()]
    scores = scorer.score(images)

    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=pixels).pooler_output
        emb = emb / emb.norm(dim=-1, keepdim=True)
        expected = load_head(head_path)(emb).squeeze(-1).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    assert len(set(np.round(scores, 4))) == 3  # different images, different scores


def frame_with_detail(index: int, bgr: np.ndarray, detail: np.ndarray | None):
    import cv2

    from pipeline.ingest.analysis import AnalysisFrame

    kwargs = dict(index=index, pts_s=index / 30.0, bgr=bgr, luma=cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    if "detail" in AnalysisFrame.__dataclass_fields__:
        return AnalysisFrame(**kwargs, detail=detail)
    frame = AnalysisFrame(**kwargs)
    object.__setattr__(frame, "detail", detail)  # until AnalysisFrame declares the detail field
    return frame


def test_clip_column_from_sampled_frames(tiny_weights):
    from pipeline.ingest.signals.series import DetailSchedule

    model_dir, head_path = tiny_weights
    cfg = SignalsConfig()
    cfg.text.enabled = False
    cfg.aesthetic.model, cfg.aesthetic.head, cfg.aesthetic.batch_size = str(model_dir), str(head_path), 2
    cfg.aesthetic.every_s = 1.0
    analyzers = make_analyzers(cfg, (160, 90))
    schedule = DetailSchedule(cfg.detail_every_s)
    (image,) = detail_frames(1)
    for i in range(95):  # details at frames 0, 30, 60, 90: one full batch of 2, one partial
        frame = frame_with_detail(i, image, image if schedule.due(i / 30.0) else None)
        for a in analyzers:
            a.update(frame)
    row = clip_signals(analyzers, 0, 95)
    assert row["aesthetic_score"] is not None and math.isfinite(row["aesthetic_score"])
    assert clip_signals(analyzers, 1, 29)["aesthetic_score"] is None  # no sampled frame inside


def test_model_without_head_is_a_config_error():
    from trainer.typedconfig import from_dict

    with pytest.raises(ConfigError):
        from_dict(SignalsConfig, {"aesthetic": {"model": "openai/clip-vit-large-patch14"}})

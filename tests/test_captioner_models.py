"""Tiny random-weight models of each supported family, built from configs and loaded by path
through the real code path: batching, token accounting, checks and retries, missing weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from captioner.config import GenerationConfig, ModelConfig
from captioner.model import ClipRequest, MissingModelError, TransformersBackend
from tests.captioner_lib import fast_config, tiny_model

FAMILIES = ["qwen2_5_vl", "qwen3_vl", "llava_onevision"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    path = tiny_model(tmp_path_factory, request.param)
    return request.param, path, TransformersBackend(ModelConfig(id=str(path), device="cpu"), frames_mode="auto")


def requests_of_mixed_shapes() -> list[ClipRequest]:
    rng = np.random.default_rng(0)
    return [ClipRequest("a", rng.integers(0, 255, (2, 56, 84, 3), np.uint8), "Describe."),
            ClipRequest("b", rng.integers(0, 255, (3, 56, 84, 3), np.uint8), "Describe this clip in detail, please."),
            ClipRequest("c", rng.integers(0, 255, (1, 84, 56, 3), np.uint8), "What happens?")]


def test_loads_by_path_with_its_own_classes(family_model):
    family, path, backend = family_model
    assert backend.model.config.model_type == family
    saved = json.loads((path / "processor_config.json").read_text())
    assert saved["processor_class"] == type(backend.processor).__name__
    assert backend.device == "cpu" and str(backend.model.dtype) == "torch.float32"
    assert backend.as_video is False  # no torchvision here: frames go in as images


def test_a_batch_gives_what_each_clip_gets_alone(family_model):
    _, _, backend = family_model
    reqs = requests_of_mixed_shapes()
    gen = GenerationConfig(max_new_tokens=10)
    batch = backend.generate(reqs, gen)
    alone = [backend.generate([r], gen)[0] for r in reqs]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert [g.n_input_tokens for g in batch] == [g.n_input_tokens for g in alone]
    # more frames and a longer prompt mean more input tokens; padding is not counted
    assert batch[1].n_input_tokens > batch[0].n_input_tokens
    for g in batch:
        assert 0 <= g.n_output_tokens <= 10
        assert g.hit_token_limit == (g.n_output_tokens == 10)


def test_sampling_is_seeded(family_model):
    _, _, backend = family_model
    reqs = requests_of_mixed_shapes()[:1]
    gen = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3)
    assert backend.generate(reqs, gen)[0].text == backend.generate(reqs, gen)[0].text


def test_degenerate_outputs_are_flagged_and_retried(tmp_path_factory):
    """A repetition penalty far below 1 rewards repeating: the tiny model loops, the check flags it,
    the captioner retries (greedy again here, so it loops again) and stores the last verdict."""
    from captioner.captioner import Captioner

    path = tiny_model(tmp_path_factory, "llava_onevision")
    cfg = fast_config(path, "generation.repetition_penalty=0.05", "generation.max_new_tokens=30",
                      "checks.max_retries=1", "checks.retry_repetition_penalty=0.05",
                      "checks.retry_temperature=0.0")
    rows = Captioner(cfg).caption(requests_of_mixed_shapes())
    assert [r["clip_id"] for r in rows] == ["a", "b", "c"]
    flagged = [r for r in rows if r["status"] == "flagged"]
    assert flagged and all(r["reason"] in ("repetition", "empty", "too_short", "truncated") for r in flagged)
    looped = [r for r in flagged if r["reason"] == "repetition"]
    assert looped and all(r["attempts"] == 2 for r in looped)
    for r in rows:
        assert r["model_id"] == str(path) and r["backend"] == "transformers" and len(r["version"]) == 12
        assert json.loads(r["params"])["generation"]["repetition_penalty"] == 0.05


def test_missing_weights_name_the_model_and_how_to_fetch_it(tmp_path, tmp_path_factory):
    with pytest.raises(MissingModelError, match=r"does not exist; check the path") as missing:
        TransformersBackend(ModelConfig(id=str(tmp_path / "nowhere")))
    assert f"hf download {tmp_path}" not in str(missing.value)      # a local path is not a hub id
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingModelError, match="no config.json"):
        TransformersBackend(ModelConfig(id=str(empty)))
    # config present, weights missing (an interrupted copy)
    src = tiny_model(tmp_path_factory, "qwen2_5_vl")
    partial = tmp_path / "partial"
    shutil.copytree(src, partial, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(MissingModelError, match=r"partial.*could not be loaded.*check the path"):
        TransformersBackend(ModelConfig(id=str(partial)))
    with pytest.raises(MissingModelError, match="no model configured"):
        TransformersBackend(ModelConfig(id=""))

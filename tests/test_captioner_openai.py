"""The OpenAI-compatible backend against a real HTTP server started here (a thread speaking the
chat-completions API and serving the tiny model), not a mock."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from captioner.config import GenerationConfig, ModelConfig, OpenAIConfig
from captioner.model import ClipRequest, MissingModelError, TransformersBackend
from captioner.openai_backend import OpenAIBackend, RequestError, chat_body
from pipeline.library.captions import CaptionStore
from tests.captioner_lib import make_library, tiny_model
from tests.support.vlm_server import make_server, parse_request
from tests.test_captioner_versions import FAST, caption

SERVED = "tiny-qwen"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base_url, in-process backend) of a chat-completions server running the tiny Qwen2.5-VL."""
    path = tiny_model(tmp_path_factory, "qwen2_5_vl")
    backend = TransformersBackend(ModelConfig(id=str(path), device="cpu"), frames_mode="images")
    server = make_server(backend, SERVED)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", backend
    server.shutdown()
    server.server_close()


def clip(seed: int, n: int) -> ClipRequest:
    frames = np.random.default_rng(seed).integers(0, 255, (n, 56, 84, 3), np.uint8)
    return ClipRequest(f"c{seed}", frames, "Describe this clip.")


def test_request_carries_frames_in_order_and_the_prompt():
    req = clip(0, 3)
    body = chat_body("m", req, GenerationConfig(max_new_tokens=7, temperature=0.0))
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]
    assert body["max_tokens"] == 7 and body["model"] == "m"
    parsed, gen = parse_request(body)       # what the server reads back
    assert parsed.frames.shape == req.frames.shape and parsed.prompt == "Describe this clip."
    # JPEG is lossy, but each frame comes back as itself, in order
    errors = [[np.abs(a.astype(int) - b.astype(int)).mean() for b in req.frames] for a in parsed.frames]
    assert [int(np.argmin(row)) for row in errors] == [0, 1, 2]


def test_server_answers_like_the_in_process_backend(served):
    url, local = served
    client = OpenAIBackend(SERVED, OpenAIConfig(base_url=url, concurrency=4))
    assert client.check_server() == [SERVED]
    reqs = [clip(i, n) for i, n in enumerate((1, 2, 3))]
    gen = GenerationConfig(max_new_tokens=9)
    remote = client.generate(reqs, gen)
    expected = [local.generate([r], gen)[0] for r in reqs]
    # same image sizes and prompt, so the same prompt length; answers end the same way
    assert [g.n_input_tokens for g in remote] == [g.n_input_tokens for g in expected]
    assert [g.hit_token_limit for g in remote] == [g.n_output_tokens == 9 for g in remote]
    assert all(g.latency_s > 0 and 0 <= g.n_output_tokens <= 9 for g in remote)


def test_caption_command_with_the_openai_backend(served, tmp_path):
    url, _ = served
    lib, clips = make_library(tmp_path)
    assert caption(lib, "--backend", "openai", "--model", SERVED, "--base-url", url, "--local", *FAST) == 0
    rows = CaptionStore(lib).read().to_pylist()
    assert {r["clip_id"] for r in rows} == {c["clip_id"] for c in clips}
    for r in rows:
        assert r["backend"] == "openai" and r["model_id"] == SERVED and r["status"] in ("ok", "flagged")
        assert r["n_input_tokens"] > 0 and r["n_frames"] == 2
    assert caption(lib, "--backend", "openai", "--model", SERVED, "--base-url", url, "--local", *FAST) == 0
    assert len(CaptionStore(lib).read(latest=False)) == 3                     # rerun skipped them all


def test_no_server_or_wrong_model_fails_before_writing(served, tmp_path, capsys):
    url, _ = served
    lib, _ = make_library(tmp_path)
    assert caption(lib, "--backend", "openai", "--model", SERVED, "--base-url", "http://127.0.0.1:9/v1", *FAST) == 2
    assert "no OpenAI-compatible server at http://127.0.0.1:9/v1" in capsys.readouterr().err
    assert caption(lib, "--backend", "openai", "--model", "other-model", "--base-url", url, *FAST) == 2
    assert "not 'other-model'" in capsys.readouterr().err
    assert not CaptionStore(lib).parts()
    with pytest.raises(MissingModelError):
        from captioner.captioner import make_backend
        from tests.captioner_lib import fast_config

        make_backend(fast_config("other-model", "model.backend=openai", f"openai.base_url={url}"))
    with pytest.raises(RequestError, match="HTTP 404"):
        OpenAIBackend("other-model", OpenAIConfig(base_url=url)).generate([clip(0, 1)], GenerationConfig())


def test_a_failing_request_costs_only_its_own_clip(served):
    """The server rejects a clip without frames (HTTP 400): the batch is retried clip by clip, the
    good clip is captioned and the bad one becomes an error row with the server's reason."""
    from captioner.captioner import Captioner
    from tests.captioner_lib import fast_config

    url, _ = served
    cfg = fast_config(SERVED, "model.backend=openai", f"openai.base_url={url}")
    empty = ClipRequest("empty", np.zeros((0, 56, 84, 3), np.uint8), "Describe this clip.")
    good, bad = Captioner(cfg).caption([clip(1, 2), empty])
    assert good["clip_id"] == "c1" and good["status"] in ("ok", "flagged") and good["n_input_tokens"] > 0
    assert bad["status"] == "error" and "HTTP 400" in bad["reason"] and "image_url" in bad["reason"]

"""The openai backend against a real HTTP server that misbehaves on purpose: each test scripts what
the server answers (an odd body, an error status); the client and the captioner see real sockets."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import numpy as np
import pytest

from captioner.captioner import Captioner
from captioner.config import GenerationConfig, OpenAIConfig
from captioner.model import ClipRequest
from captioner.openai_backend import AuthError, OpenAIBackend
from pipeline.library.captions import CaptionStore
from tests.captioner_lib import fast_config, make_library
from tests.test_captioner_versions import FAST, caption

CAPTION = "A red ball rolls slowly across a wooden floor toward a bright window."


def completion(content: Any, finish: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 14}}


class Scripted:
    """A chat-completions server whose answer to the n-th POST is `answer(n, handler)`: a
    (status, body) or (status, body, headers), or None when the function wrote the response itself."""

    def __init__(self, answer: Callable[[int, BaseHTTPRequestHandler], tuple | None]):
        self.posts = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self.send(200, {"data": [{"id": "m"}]})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    n = outer.posts
                    outer.posts += 1
                out = answer(n, self)
                if out is not None:
                    self.send(*out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Scripted:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def clip(i: int) -> ClipRequest:
    return ClipRequest(f"c{i}", np.full((2, 32, 32, 3), i * 20, np.uint8), "Describe this clip.")


def captioner(url: str, *extra: str) -> Captioner:
    cfg = fast_config("m", "model.backend=openai", f"openai.base_url={url}", *extra)
    return Captioner(cfg, OpenAIBackend("m", cfg.openai))


@pytest.mark.parametrize("body, said", [
    ({"choices": []}, "no choices"),
    ({"error": {"message": "model overloaded", "code": 500}}, "model overloaded"),   # an error with status 200
    ([1, 2], "not a chat completion"),
    (completion({"text": CAPTION}), "not text"),
])
def test_an_answer_that_is_not_a_completion_is_an_error_row_saying_what_came(body, said):
    with Scripted(lambda n, h: (200, body)) as server:
        rows = captioner(server.url).caption([clip(0), clip(1)])
    assert [r["status"] for r in rows] == ["error", "error"]
    assert all("RequestError" in r["reason"] and said in r["reason"] for r in rows), rows[0]["reason"]


def test_content_given_as_text_parts_is_the_caption():
    """Some servers answer `content` as a list of parts: that was a traceback that ended the job."""
    parts = [{"type": "text", "text": CAPTION[:20]}, {"type": "text", "text": CAPTION[20:]}]
    with Scripted(lambda n, h: (200, completion(parts))) as server:
        out = OpenAIBackend("m", OpenAIConfig(base_url=server.url)).generate([clip(0)], GenerationConfig())
        rows = captioner(server.url).caption([clip(0)])
    assert out[0].text == CAPTION and out[0].n_output_tokens == 14
    assert rows[0]["status"] == "ok" and rows[0]["text"] == CAPTION


def first_ok_then_refused(n: int, h: BaseHTTPRequestHandler) -> tuple[int, Any]:
    return (200, completion(CAPTION)) if n == 0 else (401, {"error": {"message": "Invalid API key"}})


def test_a_refused_key_stops_the_job_at_the_first_refusal():
    """A 401/403 was an error row per clip and the job went on through every remaining clip (each
    refused too): it now stops at the first one, naming the server and the key's setting."""
    with Scripted(first_ok_then_refused) as server:
        with pytest.raises(AuthError) as e:
            captioner(server.url, "openai.concurrency=1").caption([clip(i) for i in range(5)])
        assert server.posts == 2
    said = str(e.value)
    assert server.url in said and "OPENAI_API_KEY" in said and "openai.api_key_env" in said and "401" in said
    with Scripted(lambda n, h: (403, {"error": "forbidden"})) as server:
        with pytest.raises(AuthError, match="HTTP 403"):
            OpenAIBackend("m", OpenAIConfig(base_url=server.url)).generate([clip(0)], GenerationConfig())


def test_a_refused_key_mid_run_keeps_the_captions_made(tmp_path, capsys):
    lib, clips = make_library(tmp_path)
    with Scripted(first_ok_then_refused) as server:
        code = caption(lib, "--backend", "openai", "--model", "m", "--base-url", server.url, "--local",
                       "--set", "openai.concurrency=1", *FAST)
        assert server.posts == 2 and len(clips) == 3              # the third clip was not sent
    err = capsys.readouterr().err
    assert code == 2 and server.url in err and "OPENAI_API_KEY" in err and "are kept" in err, err
    rows = CaptionStore(lib).read().to_pylist()
    assert [(r["status"], r["text"]) for r in rows] == [("ok", CAPTION)]


def test_a_key_refused_at_the_start_says_so_and_writes_nothing(tmp_path, capsys):
    lib, _ = make_library(tmp_path)
    with Scripted(lambda n, h: (401, {"error": "no key"})) as server:
        server.server.RequestHandlerClass.do_GET = lambda h: h.send(401, {"error": "no key"})
        code = caption(lib, "--backend", "openai", "--model", "m", "--base-url", server.url, *FAST)
    err = capsys.readouterr().err
    assert code == 2 and "refused the API key" in err and "no OpenAI-compatible server" not in err, err
    assert not CaptionStore(lib).parts()


def test_a_failing_request_is_not_sent_again_nor_are_the_others():
    """One clip the server rejects (HTTP 400) costs only that clip: the batch's other requests are
    not sent a second time, one by one (each request stands alone)."""
    def answer(n, h):
        return (400, {"error": {"message": "bad image"}}) if n == 0 else (200, completion(CAPTION))
    with Scripted(answer) as server:
        rows = captioner(server.url, "openai.concurrency=4", "checks.max_retries=0").caption(
            [clip(i) for i in range(4)])
        posts = server.posts
    assert sorted(r["status"] for r in rows) == ["error", "ok", "ok", "ok"]
    assert "HTTP 400" in next(r["reason"] for r in rows if r["status"] == "error")
    assert posts == 4


def test_ctrl_c_keeps_the_finished_captions_and_stops_at_once(tmp_path):
    """Ctrl-C while a request hangs: the process ends promptly (not when the request times out)
    and the captions already answered are in the library (they were thrown away with the part
    that had not reached `commit_every`). The job is started as a terminal starts it, also from a
    test process that holds SIGINT ignored (as `pytest ... &` from a script does): such a child
    inherited the ignored SIGINT, never saw the Ctrl-C and waited for the request (a CI hang)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipeline.library.captions import CaptionStore
    from tests.captioner_lib import make_library
    from tests.conftest import RECAP_FROM_A_TERMINAL

    lib, _ = make_library(tmp_path)
    release = threading.Event()

    def answer(n, h):
        if n >= 2:
            release.wait(600)       # the third clip's answer never comes (until the job has ended)
            return None
        return 200, completion(CAPTION)

    with Scripted(answer) as server:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        cmd = [*RECAP_FROM_A_TERMINAL, "caption", str(lib), "--backend", "openai", "--model", "m",
               "--base-url", server.url, "--local", "--no-progress", "--set", "openai.concurrency=1",
               "--set", "frames.num_frames=2", "--set", "frames.max_pixels=12544"]
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)   # the child inherits it ignored, every run
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, before)
        try:
            deadline = time.monotonic() + 120
            while server.posts < 3 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            if server.posts != 3:
                proc.kill()
                pytest.fail(f"{server.posts} requests, not 3, before the job ended or 120 s passed; it said: "
                            f"{proc.communicate()[1]}")
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            # read while waiting: a child blocked on a full pipe would look like one that hangs.
            # The hung request is answered only after this: a child that waited for it never ends here
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"the job did not end within 60 s of Ctrl-C; it said: {proc.communicate()[1]}")
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130 and "interrupted" in err, err
    rows = CaptionStore(lib).read(latest=False).to_pylist()
    assert len(rows) == 2 and all(r["status"] == "ok" and r["text"] == CAPTION for r in rows)


def test_busy_answers_and_dropped_connections_are_sent_again():
    """429 (with Retry-After), 503 (without) and a connection the server drops are sent again
    after a wait; a 401 is not (it will not change); past openai.max_retries the clip is an
    error row saying how often it was sent. These were error rows at the first busy answer."""
    import socket
    import struct
    import time

    def answer(n, h):
        if n == 0:
            return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"}
        if n == 1:
            return 503, {"error": {"message": "loading"}}
        if n == 2:     # reset: the connection closed with nothing answered
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return None
        return 200, completion(CAPTION)

    cfg = OpenAIConfig(concurrency=1, retry_wait_s=0.01)
    with Scripted(answer) as server:
        t0 = time.monotonic()
        out = OpenAIBackend("m", OpenAIConfig(**{**vars(cfg), "base_url": server.url})).generate([clip(0)],
                                                                                               GenerationConfig())
        waited = time.monotonic() - t0
        assert out[0].text == CAPTION and server.posts == 4 and waited >= 1.0     # Retry-After: 1 was kept
    with Scripted(lambda n, h: (401, {"error": {"message": "bad key"}})) as server:
        with pytest.raises(AuthError, match="HTTP 401"):
            captioner(server.url, "openai.retry_wait_s=0.01").caption([clip(0)])
        assert server.posts == 1
    with Scripted(lambda n, h: (503, {"error": {"message": "loading"}})) as server:
        rows = captioner(server.url, "openai.retry_wait_s=0.01", "openai.max_retries=2").caption([clip(0)])
        assert server.posts == 3 and rows[0]["status"] == "error" and "(sent 3 times)" in rows[0]["reason"]

"""A minimal OpenAI-compatible chat-completions server around the in-process backend.

For tests (the openai backend against a real HTTP server) and for trying the openai path on a
machine without vLLM. Serves `POST /v1/chat/completions` (user messages with `image_url` data
URLs and text; non-streaming) and `GET /v1/models`, one request at a time.

    python -m tests.support.vlm_server MODEL [--port 8000]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from captioner.config import GenerationConfig
from captioner.model import ClipRequest


def decode_image_url(url: str) -> np.ndarray:
    from PIL import Image

    if not url.startswith("data:"):
        raise ValueError("only data: URLs are served here")
    payload = url.split(",", 1)[1]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))


def parse_request(body: dict[str, Any]) -> tuple[ClipRequest, GenerationConfig]:
    frames, texts = [], []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "image_url":
                frames.append(decode_image_url(part["image_url"]["url"]))
            elif part.get("type") == "text":
                texts.append(part["text"])
    if not frames:
        raise ValueError("a request needs at least one image_url part")
    shape = frames[0].shape
    if any(f.shape != shape for f in frames):
        raise ValueError("all images of a request must have the same size")
    gen = GenerationConfig(max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
                           temperature=float(body.get("temperature") or 0.0), top_p=float(body.get("top_p") or 1.0),
                           repetition_penalty=float(body.get("repetition_penalty") or 1.0),
                           seed=int(body.get("seed") or 0))
    return ClipRequest("request", np.stack(frames), "\n".join(texts)), gen


def make_server(backend, model_name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server (not started) serving `backend` as `model_name`; port 0 picks a free port."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if body.get("model") != model_name:
                    self._send(404, {"error": {"message": f"model {body.get('model')!r} is not served here"}})
                    return
                req, gen = parse_request(body)
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, {"error": {"message": str(e)}})
                return
            with lock:
                out = backend.generate([req], gen)[0]
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                             "finish_reason": "length" if out.hit_token_limit else "stop"}],
                "usage": {"prompt_tokens": out.n_input_tokens, "completion_tokens": out.n_output_tokens,
                          "total_tokens": (out.n_input_tokens or 0) + (out.n_output_tokens or 0)},
            })

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return ThreadingHTTPServer((host, port), Handler)


if __name__ == "__main__":
    from captioner.config import ModelConfig
    from captioner.model import TransformersBackend

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    server = make_server(TransformersBackend(ModelConfig(id=a.model), frames_mode="images"), a.model, a.host, a.port)
    print(f"serving {a.model} at http://{a.host}:{server.server_address[1]}/v1")
    server.serve_forever()

"""Caption generation through an OpenAI-compatible chat-completions endpoint (what `vllm serve`
exposes): same prompts and outputs as the in-process backend, throughput from the server.

Each clip is one request: its frames as JPEG data URLs (`image_url` parts, in order) followed by
the prompt text. Requests of a batch run concurrently (`openai.concurrency`) so the server can
batch them; each stands alone, so one that fails costs only its own clip. They run on daemon
threads: Ctrl-C stops the job at once instead of waiting for the answers in flight. Standard
library HTTP only.
"""

from __future__ import annotations

import base64
import http.client as http_client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import cv2
import numpy as np

from captioner.config import GenerationConfig, OpenAIConfig
from captioner.model import ClipRequest, Generation


class RequestError(RuntimeError):
    """The server answered with an error or not at all."""


class AuthError(RequestError):
    """The server refused the API key (HTTP 401/403): every further request would fail the same
    way, so the job stops here instead of writing an error row per remaining clip."""


AUTH_REFUSED = (401, 403)                        # a refused key: every later request fails the same way
RETRY_STATUS = (408, 429, 500, 502, 503, 504)   # busy, rate-limited or restarting: worth sending again
MAX_RETRY_AFTER_S = 120.0


def retry_after(header: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (seconds; an HTTP date is not parsed), at most
    MAX_RETRY_AFTER_S; `default` without one."""
    try:
        return min(max(0.0, float(header)), MAX_RETRY_AFTER_S) if header else default
    except ValueError:
        return default


def jpeg_data_url(frame: np.ndarray, quality: int = 90) -> str:
    ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def chat_body(model: str, req: ClipRequest, gen: GenerationConfig, jpeg_quality: int = 90) -> dict[str, Any]:
    """The chat-completions request for one clip."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": jpeg_data_url(f, jpeg_quality)}}
                                     for f in req.frames]
    content.append({"type": "text", "text": req.prompt})
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}],
                            "max_tokens": gen.max_new_tokens, "temperature": gen.temperature, "seed": gen.seed,
                            "repetition_penalty": gen.repetition_penalty}  # vLLM's extra sampling parameter
    if gen.temperature > 0:
        body["top_p"] = gen.top_p
    return body


def read_answer(answer: Any) -> tuple[str, str | None, dict[str, Any]]:
    """(text, finish_reason, usage) of a chat-completions answer; RequestError for anything else
    (a 200 carrying an error object, no choices, content that is not text), so a server that
    answers garbage costs that clip an error row with what it said, not the job a traceback."""
    if not isinstance(answer, dict):
        raise RequestError(f"not a chat completion: {json.dumps(answer)[:300]}")
    choices = answer.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        said = answer.get("error") or answer
        raise RequestError(f"no choices in the answer: {json.dumps(said)[:300]}")
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):   # content parts ({"type": "text", "text": ...}), as some servers answer
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    if content is not None and not isinstance(content, str):
        raise RequestError(f"the answer's content is not text: {json.dumps(content)[:300]}")
    usage = answer.get("usage")
    usage = {k: v if isinstance(v, int) else None for k, v in usage.items()} if isinstance(usage, dict) else {}
    return content or "", choices[0].get("finish_reason"), usage


class OpenAIBackend:
    """Client of one chat-completions server; `generate` captions a batch of clips."""

    name = "openai"

    def __init__(self, model_id: str, cfg: OpenAIConfig):
        if not model_id:
            raise ValueError("the openai backend needs --model: the model name the server serves")
        self.model_id = model_id
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.revision = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def check_server(self) -> list[str]:
        """Model names the server lists (GET /models); RequestError when it cannot be reached."""
        req = urllib.request.Request(self.cfg.base_url.rstrip("/") + "/models", headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=min(30.0, self.cfg.timeout_s)) as r:
                return [m["id"] for m in json.loads(r.read()).get("data", [])]
        except urllib.error.HTTPError as e:
            if e.code in AUTH_REFUSED:
                raise self.auth_error(e.code, e.read().decode(errors="replace")[:300]) from e
            raise RequestError(f"no OpenAI-compatible server at {self.cfg.base_url}: {e}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RequestError(f"no OpenAI-compatible server at {self.cfg.base_url}: {e}") from e

    def _one(self, req: ClipRequest, gen: GenerationConfig) -> Generation:
        body = json.dumps(chat_body(self.model_id, req, gen, self.cfg.jpeg_quality)).encode()
        t0 = time.perf_counter()
        for attempt in range(self.cfg.max_retries + 1):
            wait = self.cfg.retry_wait_s * 2 ** attempt * (0.5 + random.random())  # jitter: no synchronized storm
            http = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(http, timeout=self.cfg.timeout_s) as r:
                    answer = json.loads(r.read())
                break
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300]
                if e.code in AUTH_REFUSED:
                    raise self.auth_error(e.code, detail) from e
                error = RequestError(f"{self.url}: HTTP {e.code}: {detail}")
                if e.code not in RETRY_STATUS:
                    raise error from e
                wait = retry_after(e.headers.get("Retry-After"), wait)
            except (ConnectionError, http_client.RemoteDisconnected, http_client.IncompleteRead) as e:
                error = RequestError(f"{self.url}: {e}")       # the server went away mid-request
            except urllib.error.URLError as e:
                if not isinstance(e.reason, ConnectionError):  # refused or reset: sent again; a bad host is not
                    raise RequestError(f"{self.url}: {e}") from e
                error = RequestError(f"{self.url}: {e}")
            except (OSError, ValueError) as e:                 # timed out (not sent again), not JSON
                raise RequestError(f"{self.url}: {e}") from e
            if attempt == self.cfg.max_retries:
                raise RequestError(f"{error} (sent {attempt + 1} times)")
            time.sleep(wait)
        text, finish, usage = read_answer(answer)
        return Generation(text, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                          hit_token_limit=finish == "length", latency_s=time.perf_counter() - t0)

    def auth_error(self, code: int, detail: str) -> AuthError:
        """What to do about a refused key: which server, which setting holds the key."""
        env = self.cfg.api_key_env
        given = f"${env} is set" if os.environ.get(env) else f"${env} is not set"
        return AuthError(f"the server at {self.cfg.base_url} refused the API key (HTTP {code}: {detail}); "
                         f"{given}: set it to a key this server accepts, or name another variable with "
                         "--set openai.api_key_env=NAME")

    def outcomes(self, requests: list[ClipRequest], gen: GenerationConfig) -> list[Generation | Exception | None]:
        """Each request's generation, or the exception it ended in; `openai.concurrency` at once.
        After a refused key (AuthError) no further request is sent: those left are None."""
        out: list[Generation | Exception | None] = [None] * len(requests)
        todo = iter(range(len(requests)))
        lock = threading.Lock()
        refused = threading.Event()

        def work() -> None:
            while not refused.is_set():
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    out[i] = self._one(requests[i], gen)
                except AuthError as e:  # every later request would be refused too
                    out[i] = e
                    refused.set()
                except Exception as e:  # this clip's failure, not the batch's
                    out[i] = e

        # daemon threads, joined here (interruptibly): an executor's workers would hold the
        # process after Ctrl-C until every request in flight answered or timed out
        threads = [threading.Thread(target=work, daemon=True, name="openai-request")
                   for _ in range(min(max(1, self.cfg.concurrency), len(requests)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def generate(self, requests: list[ClipRequest], gen: GenerationConfig) -> list[Generation]:
        """Generations of all `requests`; raises the first failure (after all have finished)."""
        outs = self.outcomes(requests, gen)
        failed = next((o for o in outs if isinstance(o, Exception)), None)
        if failed is not None:
            raise failed
        return outs  # type: ignore[return-value]

"""The captioner: clip rows in, caption rows (one per clip, for one version) out. No Ray here; the
pipeline wraps `prepare_clip` in CPU tasks and `Captioner` in a GPU actor pool.

    prepare_clip(row, ...)  -> ClipRequest      frames sampled with decord, prompt with hints (CPU)
    Captioner(cfg).caption(requests) -> rows     batched generation, checks, retries (GPU)
    signal_rows(rows, ...)  -> rows              the deterministic signal caption (no model)

Flagged outputs that a retry can fix (empty, too short, repetition loop) are generated again with
sampling (`checks.retry_temperature`, `checks.retry_repetition_penalty`), up to
`checks.max_retries` times; the last verdict is stored with its reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from captioner import signal_caption as sc
from captioner.checks import check_caption
from captioner.config import CaptionConfig
from captioner.frames import FrameReader, clip_source, sample_indices, sampled_fps
from captioner.model import ClipRequest, Generation, MissingModelError, TransformersBackend
from captioner.openai_backend import AuthError, OpenAIBackend
from captioner.prompts import PromptTemplate, load_prompt, signal_facts


def version_id(spec: dict[str, Any]) -> str:
    """Stable id of a caption version spec (backend, model_id, revision, prompt_id, prompt_sha,
    params): the hash of everything that shapes the text (12 hex chars)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def version_spec(cfg: CaptionConfig, prompt: PromptTemplate) -> dict[str, Any]:
    """Everything that shapes a caption's text, i.e. what identifies its version."""
    if cfg.model.backend == "signals":
        return signal_spec()
    params = {"frames": dataclasses.asdict(cfg.frames), "generation": dataclasses.asdict(cfg.generation),
              "hints": cfg.prompt.hints, "checks": dataclasses.asdict(cfg.checks)}
    return {"backend": cfg.model.backend, "model_id": cfg.model.id, "revision": cfg.model.revision,
            "prompt_id": prompt.id, "prompt_sha": prompt.sha, "params": params}


def signal_spec() -> dict[str, Any]:
    """The signal captioner's version: its wording rules are its revision."""
    return {"backend": "signals", "model_id": sc.MODEL_ID, "revision": sc.REVISION,
            "prompt_id": sc.PROMPT_ID, "prompt_sha": sc.REVISION, "params": {}}


def spec_columns(spec: dict[str, Any]) -> dict[str, Any]:
    """The version columns every caption row of `spec` carries."""
    return {"version": version_id(spec), "backend": spec["backend"], "model_id": spec["model_id"],
            "revision": spec["revision"], "prompt_id": spec["prompt_id"], "prompt_sha": spec["prompt_sha"],
            "params": json.dumps(spec["params"], sort_keys=True)}


def prepare_clip(row: dict[str, Any], lib_root: str | Path, video_uri: str | None, cfg: CaptionConfig,
                 prompt: PromptTemplate, reader: FrameReader | None = None) -> ClipRequest:
    """Sample the clip's frames and render its prompt (raises on unreadable media); pass one
    `reader` for a sequence of clips so a source video is opened once."""
    source = clip_source(row, lib_root, video_uri)
    n = source.end - source.start
    indices = sample_indices(n, source.fps, cfg.frames.num_frames, cfg.frames.fps, cfg.frames.max_frames)
    frames = (reader or FrameReader()).read(source, indices, cfg.frames.max_pixels)
    facts = signal_facts(row) if cfg.prompt.hints else []
    return ClipRequest(row["clip_id"], frames, prompt.render(facts), fps=sampled_fps(source, indices),
                       indices=indices, clip_frames=n)


def error_row(clip_id: str, columns: dict[str, Any], reason: str) -> dict[str, Any]:
    return {"clip_id": clip_id, **columns, "text": "", "status": "error", "reason": reason[:500], "attempts": 0}


class Captioner:
    """A caption backend (transformers or openai) plus the checks; loads the model once."""

    def __init__(self, cfg: CaptionConfig, backend=None):
        self.cfg = cfg
        self.prompt = load_prompt(cfg.prompt.id)
        self.backend = backend or make_backend(cfg)
        spec = version_spec(cfg, self.prompt)
        self.version = version_id(spec)
        self.columns = spec_columns(spec)
        resolved = getattr(self.backend, "revision", None)
        if resolved:  # the commit actually loaded, recorded (the version keys on what was asked for)
            self.columns["revision"] = resolved

    def caption(self, requests: list[ClipRequest]) -> list[dict[str, Any]]:
        """Caption rows for `requests` (same order), after checks and retries."""
        gen = self.cfg.generation
        checks = self.cfg.checks
        rows: list[dict[str, Any] | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        for attempt in range(1 + max(0, checks.max_retries)):
            if not todo:
                break
            if attempt:
                gen = dataclasses.replace(gen, temperature=checks.retry_temperature, seed=gen.seed + attempt,
                                          repetition_penalty=checks.retry_repetition_penalty)
            outs = self._generate([requests[i] for i in todo], gen)
            retry = []
            for i, out in zip(todo, outs):
                if isinstance(out, str):
                    if rows[i] is None:  # a failed retry keeps the earlier verdict
                        rows[i] = error_row(requests[i].clip_id, self.columns, out)
                    continue
                verdict = check_caption(out.text, out.hit_token_limit, checks.min_words)
                spent = (rows[i] or {}).get("latency_s") or 0.0  # generation time of all attempts
                rows[i] = {"clip_id": requests[i].clip_id, **self.columns, "text": verdict.text,
                           "status": verdict.status, "reason": verdict.reason, "attempts": attempt + 1,
                           "n_input_tokens": out.n_input_tokens, "n_output_tokens": out.n_output_tokens,
                           "n_frames": len(requests[i].frames), "latency_s": spent + out.latency_s}
                if verdict.retryable:
                    retry.append(i)
            todo = retry
        return rows  # type: ignore[return-value]

    def _generate(self, requests: list[ClipRequest], gen) -> list[Generation | str]:
        """The backend's generations in batches of cfg.batch_size. A batch that fails (out of
        memory, a server error) is retried clip by clip; what still fails becomes an error reason.
        A backend whose requests stand alone (a server: `outcomes`) gives each clip its own
        outcome, so a failing clip costs no other clip a second request."""
        outcomes = getattr(self.backend, "outcomes", None)
        if outcomes is not None:
            done = outcomes(requests, gen)
            refused = next((o for o in done if isinstance(o, AuthError)), None)
            if refused is not None:     # a refused key fails every clip: the job ends here
                raise refused
            return [o if isinstance(o, Generation) else f"generate: {type(o).__name__}: {o}" for o in done]
        out: list[Generation | str] = []
        size = self.cfg.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            try:
                out.extend(self.backend.generate(chunk, gen))
                continue
            except Exception as e:  # one bad batch must not end the job
                if len(chunk) == 1:
                    out.append(f"generate: {type(e).__name__}: {e}")
                    continue
            for req in chunk:
                try:
                    out.extend(self.backend.generate([req], gen))
                except Exception as e:
                    out.append(f"generate: {type(e).__name__}: {e}")
        return out


def make_backend(cfg: CaptionConfig):
    """The configured backend, loaded and checked (MissingModelError / RequestError before any work)."""
    if cfg.model.backend == "transformers":
        return TransformersBackend(cfg.model, cfg.frames.mode)
    if cfg.model.backend == "openai":
        backend = OpenAIBackend(cfg.model.id, cfg.openai)
        served = backend.check_server()
        if cfg.model.id not in served:
            raise MissingModelError(f"the server at {cfg.openai.base_url} serves {served}, not {cfg.model.id!r}")
        return backend
    raise ValueError(f"backend {cfg.model.backend!r} has no model; use signal_rows for the signal captioner")


def signal_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Signal-caption rows for clips/ rows (deterministic, no model)."""
    columns = spec_columns(signal_spec())
    out = []
    for row in rows:
        text = sc.signal_caption(row)
        out.append({"clip_id": row["clip_id"], **columns, "text": text, "status": "ok", "reason": None,
                    "attempts": 1, "n_frames": 0, "latency_s": 0.0})
    return out

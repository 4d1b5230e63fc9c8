"""Caption versions in the library: `LIB/captions/`, a side table next to `clips/`.

    LIB/captions/part-<batch>.parquet   caption rows (CAPTION_SCHEMA), one file per commit
    LIB/captions/default.json           the version export uses: {"version": ..., "set_at": ...}

A version is the hash of everything that shapes the text: backend, model id, requested revision,
prompt id and template text, frame sampling and generation parameters (`version_id`). A new
model or prompt adds a version and never overwrites one; a run skips clips that already have a
final row (`ok` or `flagged`) for its version. Each part file is written under a temporary name
and renamed into place, so a crash leaves whole parts or none: rerun and the missing clips are
captioned. When a clip has several rows for one version (an `error` row, then a retry), the
latest wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FOLDER = "captions"
DEFAULT_FILE = "default.json"
FINAL = ("ok", "flagged")     # statuses a rerun does not redo; `error` rows are retried

def _columns():
    from pipeline.schema import Column

    return [
        Column("clip_id", pa.string(), "Clip captioned (`clips/`)."),
        Column("version", pa.string(), "Caption version: hash of backend, model, revision, prompt and parameters (12 hex chars)."),
        Column("backend", pa.string(), "`transformers`, `openai` (a chat-completions server such as vLLM) or `signals`."),
        Column("model_id", pa.string(), "HF id, local folder or served model name (`recap/signals` for the signal caption)."),
        Column("revision", pa.string(), "Model commit hash when known (else the revision asked for).", True),
        Column("prompt_id", pa.string(), "Prompt template (`configs/prompts/<id>.txt`)."),
        Column("prompt_sha", pa.string(), "Hash of the template text: an edited template is a new version."),
        Column("params", pa.string(), "JSON: frame sampling, generation and check parameters."),
        Column("text", pa.string(), "The caption, boilerplate openings stripped ('' when none)."),
        Column("status", pa.string(), "`ok`, `flagged` (checked and not usable) or `error` (not captioned; retried on rerun)."),
        Column("reason", pa.string(), "Why flagged or error (`empty`, `too_short`, `repetition`, `truncated`, `frames: ...`, "
                                      "`generate: ...`), or `trimmed` (cut back to its last sentence).", True),
        Column("attempts", pa.int32(), "Generations tried (retries are sampled)."),
        Column("n_input_tokens", pa.int32(), "Prompt tokens, frames included.", True),
        Column("n_output_tokens", pa.int32(), "Generated tokens.", True),
        Column("n_frames", pa.int32(), "Frames given to the model.", True),
        Column("latency_s", pa.float32(), "Generation seconds for the clip, all attempts (a batch's time shared by its clips).", True),
        Column("created_at", pa.timestamp("ms", tz="UTC"), "When the row was written."),
        Column("batch_id", pa.string(), "Part file that holds the row (`part-<batch_id>.parquet`)."),
    ]


CAPTION_COLUMNS = _columns()
CAPTION_SCHEMA = pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in CAPTION_COLUMNS])


def markdown_reference() -> str:
    """The captions table's column reference (for the README)."""
    lines = ["#### `captions/`", "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.type}{' (nullable)' if c.nullable else ''} | {c.doc} |" for c in CAPTION_COLUMNS]
    return "\n".join(lines) + "\n"


def version_id(spec: dict[str, Any]) -> str:
    """Stable id of a caption version spec (backend, model_id, revision, prompt_id, prompt_sha, params)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


STALE_TMP_S = 600  # far longer than writing one part takes


class CaptionStore:
    """Read and append caption rows of one library; mark the default version."""

    def __init__(self, lib_root: str | Path):
        self.root = Path(lib_root) / FOLDER
        self.root.mkdir(parents=True, exist_ok=True)
        from pipeline.library import TMP_SUFFIX

        # a crash mid-write leaves only temp files; a young one may be another process's write
        for stray in self.root.glob(f"*{TMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - stray.stat().st_mtime > STALE_TMP_S:
                    stray.unlink(missing_ok=True)

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def read(self, version: str | None = None, columns: list[str] | None = None, latest: bool = True) -> pa.Table:
        """Rows of `version` (all versions when None); with `latest`, one row per (clip, version)."""
        filters = [("version", "=", version)] if version else None
        tables = [pq.read_table(p, schema=CAPTION_SCHEMA, filters=filters) for p in self.parts()]
        table = pa.concat_tables(tables) if tables else CAPTION_SCHEMA.empty_table()
        if latest and table.num_rows:
            table = table.sort_by([("created_at", "ascending")])
            keys = [f"{c}\0{v}" for c, v in zip(table.column("clip_id").to_pylist(),
                                                 table.column("version").to_pylist())]
            last = {k: i for i, k in enumerate(keys)}
            table = table.take(sorted(last.values()))
        return table.select(columns) if columns else table

    def done(self, version: str) -> set[str]:
        """Clip ids with a final row (ok or flagged) for `version`: what a rerun skips."""
        t = self.read(version, ["clip_id", "status"])
        mask = pc.is_in(t.column("status"), pa.array(FINAL))
        return set(t.filter(mask).column("clip_id").to_pylist())

    def append(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write `rows` as one new part file, atomically; return its path."""
        if not rows:
            return None
        from pipeline.library import atomic_write_table, new_batch_id, utcnow

        batch = new_batch_id()
        now = utcnow()
        for row in rows:
            row.setdefault("created_at", now)
            row["batch_id"] = batch
        table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in CAPTION_SCHEMA} for r in rows],
                                     schema=CAPTION_SCHEMA)
        path = self.root / f"part-{batch}.parquet"
        atomic_write_table(path, table)
        return path

    def versions(self) -> list[dict[str, Any]]:
        """One summary per version: spec fields, clip counts by status, first and last write."""
        t = self.read(columns=["version", "backend", "model_id", "revision", "prompt_id", "params", "status",
                               "created_at"])
        out: dict[str, dict[str, Any]] = {}
        for r in t.to_pylist():
            v = out.setdefault(r["version"], {k: r[k] for k in ("version", "backend", "model_id", "revision",
                                                                   "prompt_id", "params")}
                               | {"counts": {}, "first": r["created_at"], "last": r["created_at"]})
            v["counts"][r["status"]] = v["counts"].get(r["status"], 0) + 1
            v["first"], v["last"] = min(v["first"], r["created_at"]), max(v["last"], r["created_at"])
        return sorted(out.values(), key=lambda v: v["first"])

    # ---- the version export uses ---------------------------------------------------------------
    def default(self) -> str | None:
        path = self.root / DEFAULT_FILE
        return json.loads(path.read_text())["version"] if path.exists() else None

    def set_default(self, version: str) -> None:
        from pipeline.library import atomic_write_bytes, utcnow

        if version not in {v["version"] for v in self.versions()}:
            raise KeyError(f"no caption version {version!r} in {self.root}")
        atomic_write_bytes(self.root / DEFAULT_FILE,
                           json.dumps({"version": version, "set_at": utcnow().isoformat()}).encode())


def read_captions(lib_root: str | Path, version: str | None = None, only_ok: bool = True) -> pa.Table:
    """clip_id -> text (and status, version) of one version: the default when `version` is None.
    What export reads; raises LookupError when the library has no default version yet."""
    store = CaptionStore(lib_root)
    version = version or store.default()
    if version is None:
        raise LookupError(f"{lib_root}: no default caption version (run `recap caption`)")
    t = store.read(version, ["clip_id", "version", "text", "status", "reason"])
    if only_ok:
        t = t.filter(pc.equal(t.column("status"), "ok"))
    return t

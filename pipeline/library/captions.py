"""Caption versions in the library: `LIB/captions/`, a side table next to `clips/`.

    LIB/captions/part-<batch>.parquet   caption rows (CAPTION_SCHEMA), one file per write
    LIB/captions/default.json           the version export uses: {"version": ..., "set_at": ...}

A version is the hash of everything that shapes the text (the captioner's `version_id`): a new
model or prompt adds a version and never overwrites one; a run skips clips that already have a
final row (`ok` or `flagged`) for its version. Each part file is written under a temporary name
and renamed into place, so a crash leaves whole parts or none: rerun and the missing clips are
captioned. When a clip has several rows for one version (an `error` row, then a retry), the
latest wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.library.files import (
    atomic_write_bytes,
    atomic_write_table,
    merge_parts,
    new_batch_id,
    read_again_if_merged,
    reading,
    remove_stale_temp_files,
    writable_folder,
)
from pipeline.library.layout import utcnow
from pipeline.library.schema import CAPTION_SCHEMA

FOLDER = "captions"
DEFAULT_FILE = "default.json"
FINAL = ("ok", "flagged")     # statuses a rerun does not redo; `error` rows are retried

class CaptionStore:
    """Read and append caption rows of one library; mark the default version."""

    def __init__(self, lib_root: str | Path):
        self.root = Path(lib_root) / FOLDER      # created by the first append: reading writes nothing

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def read(self, version: str | None = None, columns: list[str] | None = None, latest: bool = True) -> pa.Table:
        """Rows of `version` (all versions when None); with `latest`, one row per (clip, version)."""
        filters = [("version", "=", version)] if version else None

        def read_all() -> pa.Table:
            tables = []
            for p in self.parts():
                with reading(p):
                    tables.append(pq.read_table(p, schema=CAPTION_SCHEMA, filters=filters))
            return pa.concat_tables(tables) if tables else CAPTION_SCHEMA.empty_table()
        table = read_again_if_merged(read_all)
        if latest and table.num_rows:
            table = table.sort_by([("created_at", "ascending")])
            keys = [f"{c}\0{v}" for c, v in zip(table.column("clip_id").to_pylist(),
                                                 table.column("version").to_pylist())]
            last = {k: i for i, k in enumerate(keys)}
            table = table.take(sorted(last.values()))
        return table.select(columns) if columns else table

    def latest_ok(self, version: str | None = None) -> pa.Table:
        """clip_id, text, version: each clip's most recent `ok` caption of `version` (of any
        version when None)."""
        t = self.read(version, ["clip_id", "version", "text", "status", "created_at"])
        t = t.filter(pc.equal(t.column("status"), "ok")).sort_by([("created_at", "ascending")])
        last = {c: i for i, c in enumerate(t.column("clip_id").to_pylist())}
        return t.take(pa.array(sorted(last.values()), pa.int64())).select(["clip_id", "text", "version"])

    def done(self, version: str) -> set[str]:
        """Clip ids with a final row (ok or flagged) for `version`: what a rerun skips."""
        t = self.read(version, ["clip_id", "status"])
        mask = pc.is_in(t.column("status"), pa.array(FINAL))
        return set(t.filter(mask).column("clip_id").to_pylist())

    def append(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write `rows` as one new part file, atomically; return its path."""
        if not rows:
            return None
        writable_folder(self.root, check=False)
        remove_stale_temp_files(self.root)
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

    def compact(self) -> Path | None:
        """Past `COMPACT_PARTS` parts, one part with all their rows (see `merge_parts`)."""
        return merge_parts(self.root, self.parts(), CAPTION_SCHEMA)

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

"""`index.ClipIndex`: a library's Milvus collection, kept equal to its Parquet, and search over it.

    index = ClipIndex("lib", load_index_config())  # pipeline.embed.load_index_config: configs/index.yaml
    index.repair()                                 # sync Milvus from Parquet (`recap index` embeds first)
    for hit in index.search("a dog running on a beach", where="duration_s > 3", top_k=5):
        print(hit.rank, hit.score, hit.clip_id, hit.caption)
    index.search(like=hit.clip_id)                 # more like this one

Parquet is the truth: embeddings are written to `LIB/embeddings/` first (by the embed stage in
`pipeline.embed`, through `save_embeddings`), and the collection is only ever made to match
Parquet (`check` reports the differences, `repair` removes them), so it can be dropped and
rebuilt at any time without loading a model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from index.catalog import DERIVED, known_columns, known_values
from index.config import BUNDLED_MINILM, EmbedderConfig, IndexConfig
from index.embedders import load_embedder
from index.store import PK, ROW_HASH, VARCHAR_MAX, MilvusStore, ScalarSpec, has_field, row_hash, vector_field
from index.where import Field, WhereError, compile_where
from pipeline.library import Library, LibraryError
from pipeline.library.embeddings import drop_other_models, read_embeddings, vectors_of, write_embeddings

Mode = Literal["auto", "caption", "visual", "hybrid"]
DISPLAY = ["video_id", "source", "start_s", "end_s", "duration_s", "caption", "path"]
CLIP_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
# columns of the clip table that are never filters (bookkeeping, free text)
NOT_FILTERS = {"batch_id", "caption", "ocr_text", "file_bytes", "file_start_frame", "file_n_frames"}


class SearchError(ValueError):
    """A search request that cannot be answered (no such clip, no vectors for that mode, ...)."""


@dataclass
class Hit:
    rank: int
    score: float
    clip_id: str
    video_id: str | None = None
    source: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    duration_s: float | None = None
    caption: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reconcile:
    """How the collection differs from Parquet."""
    missing: list[str] = field(default_factory=list)    # in Parquet, not in Milvus
    extra: list[str] = field(default_factory=list)      # in Milvus, not in Parquet
    stale: list[str] = field(default_factory=list)      # in both, different content
    unembedded: dict[str, int] = field(default_factory=dict)   # embedder -> clips without a vector
    schema_changed: bool = False
    rows: int = 0

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.schema_changed)


def input_hash(model_id: str, payload: str) -> str:
    """What a vector was made from: the model and its input (a caption, or a clip's frames' address)."""
    return hashlib.blake2b(f"{model_id}\n{payload}".encode(), digest_size=12).hexdigest()


def model_id_of(cfg: EmbedderConfig) -> str:
    return "sentence-transformers/all-MiniLM-L6-v2" if cfg.model == BUNDLED_MINILM else cfg.model


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return None


class ClipIndex:
    """The index side of one library folder (Parquet + `LIB/milvus.db` or a Milvus server)."""

    def __init__(self, path: str | Path, config: IndexConfig, milvus_uri: str | None = None,
                 token: str | None = None):
        self.root = Path(path)
        try:
            self.library = Library(self.root)
        except LibraryError as e:
            raise FileNotFoundError(str(e)) from None
        self.cfg = config
        if milvus_uri is not None:
            self.cfg.milvus.uri = milvus_uri
        if token is not None:
            self.cfg.milvus.token = token
        self._store: MilvusStore | None = None
        self._models: dict[str, Any] = {}

    # ---- plumbing -------------------------------------------------------------------------------
    @property
    def store(self) -> MilvusStore:
        if self._store is None:
            self._store = MilvusStore(self.root, self.cfg.milvus)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "ClipIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def model(self, name: str):
        """The loaded embedder `name` (loaded once), for queries."""
        if name not in self._models:
            e = self.cfg.embedders[name]
            self._models[name] = load_embedder(e.kind, e.model, e.device, e.batch_size)
        return self._models[name]

    def clip_table(self) -> pa.Table:
        """The library's clip table with the configured caption version."""
        return self.library.clip_table(self.cfg.captions.version)

    # ---- embeddings -----------------------------------------------------------------------------
    def payloads(self, clips: pa.Table, name: str) -> dict[str, str]:
        """clip_id -> what embedder `name` embeds for it (clips it cannot embed are left out)."""
        e = self.cfg.embedders[name]
        ids = clips.column("clip_id").to_pylist()
        if e.kind == "text":
            if "caption" not in clips.column_names:
                return {}
            return {c: t for c, t in zip(ids, clips.column("caption").to_pylist()) if t}
        cols = {k: clips.column(k).to_pylist() if k in clips.column_names else [None] * len(ids)
                for k in ("path", "file_start_frame", "n_frames", "start_s", "end_s", "source")}
        return {c: f"{cols['path'][i] or cols['source'][i]}|{cols['file_start_frame'][i]}|{cols['n_frames'][i]}|"
                   f"{cols['start_s'][i]}|{cols['end_s'][i]}|frames={e.frames}" for i, c in enumerate(ids)}

    def stale_embeddings(self, clips: pa.Table, name: str) -> dict[str, str]:
        """clip_id -> input hash, for the clips whose vector of embedder `name` is missing or stale."""
        mid = model_id_of(self.cfg.embedders[name])
        want = {c: input_hash(mid, p) for c, p in self.payloads(clips, name).items()}
        have = read_embeddings(self.root, name, mid)
        have_hash = dict(zip(have.column("clip_id").to_pylist(), have.column("input_hash").to_pylist())) if have else {}
        return {c: h for c, h in want.items() if have_hash.get(c) != h}

    def save_embeddings(self, name: str, clip_ids: list[str], vectors: np.ndarray, hashes: list[str]) -> None:
        """One part of embedder `name`'s vectors in `LIB/embeddings/<name>/`."""
        write_embeddings(self.root, name, model_id_of(self.cfg.embedders[name]), clip_ids, vectors, hashes)

    def drop_superseded(self, name: str) -> int:
        """Remove vectors of embedder `name` made by an earlier model, once its model covers the clips."""
        return drop_other_models(self.root, name, model_id_of(self.cfg.embedders[name]))

    # ---- Parquet -> rows -----------------------------------------------------------------------
    def desired(self) -> tuple[list[ScalarSpec], dict[str, int], dict[str, dict[str, Any]], dict[str, int]]:
        """What the collection should hold: scalar fields, vector dims, rows by clip_id, and the
        number of clips each embedder has no vector for."""
        clips = self.clip_table()
        scalars = [ScalarSpec(f.name, k) for f in clips.schema
                   if f.name != PK and (k := _kind(f.type)) and (f.name not in NOT_FILTERS or f.name == "caption")]
        ids = clips.column(PK).to_pylist()
        rows = {c: {PK: c} for c in ids}
        for s in scalars:
            limit = VARCHAR_MAX.get(s.name, 1024) if s.kind == "string" else None
            for c, v in zip(ids, clips.column(s.name).to_pylist()):
                if limit and v is not None and len(v.encode()) > limit:     # Milvus counts bytes
                    v = v.encode()[:limit].decode(errors="ignore")
                rows[c][s.name] = v
        dims: dict[str, int] = {}
        unembedded: dict[str, int] = {}
        for name, e in self.cfg.enabled().items():
            mid = model_id_of(e)
            emb = read_embeddings(self.root, name, mid)
            vecs = {}
            if emb is not None:
                dims[name] = emb.column("vector").type.list_size
                # only vectors of what the clip is now (a re-captioned clip's old vector is stale)
                current = {c: input_hash(mid, p) for c, p in self.payloads(clips, name).items()}
                vecs = {c: v for c, v, h in zip(emb.column("clip_id").to_pylist(), vectors_of(emb),
                                                emb.column("input_hash").to_pylist()) if current.get(c) == h}
            unembedded[name] = sum(c not in vecs for c in ids)
            if name not in dims:
                continue
            for c in ids:
                v = vecs.get(c)
                rows[c][has_field(name)] = v is not None
                rows[c][vector_field(name)] = v
        for r in rows.values():
            r[ROW_HASH] = row_hash(r)
            for name in dims:
                if r[vector_field(name)] is not None:
                    r[vector_field(name)] = r[vector_field(name)].tolist()
        return scalars, dims, rows, unembedded

    # ---- check / repair / index -------------------------------------------------------------------
    def check(self) -> Reconcile:
        """Compare the collection with Parquet; change nothing."""
        scalars, dims, rows, unembedded = self.desired()
        rec = Reconcile(unembedded=unembedded, rows=len(rows))
        if not self.store.exists():
            rec.schema_changed = True
            rec.missing = sorted(rows)
            return rec
        if self.store.describe() != self.store.wanted(scalars, dims):
            rec.schema_changed = True
        stored = self.store.row_hashes()
        rec.missing = sorted(set(rows) - set(stored))
        rec.extra = sorted(set(stored) - set(rows))
        rec.stale = sorted(c for c in set(rows) & set(stored) if rows[c][ROW_HASH] != stored[c])
        return rec

    def repair(self, log=print) -> Reconcile:
        """Make the collection match Parquet (recreating it when its fields changed); returns what
        was found before repairing."""
        scalars, dims, rows, unembedded = self.desired()
        store = self.store
        rec = Reconcile(unembedded=unembedded, rows=len(rows))
        if not store.exists() or store.describe() != store.wanted(scalars, dims):
            rec.schema_changed = True
            if store.exists():
                log("collection fields differ from the library's columns: rebuilding it")
            store.drop()
            store.create(scalars, dims)
            stored: dict[str, str] = {}
        else:
            stored = store.row_hashes()
        rec.missing = sorted(set(rows) - set(stored))
        rec.extra = sorted(set(stored) - set(rows))
        rec.stale = sorted(c for c in set(rows) & set(stored) if rows[c][ROW_HASH] != stored[c])
        if rec.extra:
            store.delete(rec.extra)
        if stored:
            store.upsert([rows[c] for c in rec.missing + rec.stale])
        elif rec.missing:
            store.insert([rows[c] for c in rec.missing])    # a new collection: nothing to replace
        store.flush()
        return rec

    # ---- search ---------------------------------------------------------------------------------
    def fields(self) -> dict[str, Field]:
        """The fields `where` may use: the collection's scalar fields."""
        kinds = {"INT64": "number", "DOUBLE": "number", "VARCHAR": "string", "BOOL": "bool"}
        out: dict[str, Field] = {}
        values = known_values()
        for name, (tname, _) in self.store.describe().items():
            if name in (ROW_HASH, "caption") or name.startswith("has_") or tname not in kinds:
                continue
            out[name] = Field(name, kinds[tname], values.get(name))  # type: ignore[arg-type]
        for name, of in DERIVED.items():
            if of in out:
                out[name] = Field(name, "bool", not_null_of=of)
        return out

    def vector_fields(self) -> list[str]:
        return [n for n, (t, _) in self.store.describe().items() if t == "FLOAT_VECTOR"]

    def _embedders_in_collection(self) -> dict[str, str]:
        """kind ('text'/'clip') -> embedder name, for embedders with a vector field."""
        present = set(self.vector_fields())
        return {e.kind: n for n, e in self.cfg.enabled().items() if vector_field(n) in present}

    def _resolve_mode(self, mode: Mode, have: dict[str, str]) -> list[str]:
        want = {"caption": ["text"], "visual": ["clip"], "hybrid": ["text", "clip"]}
        if mode == "auto":
            kinds = [k for k in ("text", "clip") if k in have]
        else:
            kinds = want[mode]
            missing = [k for k in kinds if k not in have]
            if missing:
                what = {"text": "caption", "clip": "visual"}
                raise SearchError(f"mode {mode!r} needs {' and '.join(what[k] for k in missing)} vectors, which this "
                                  "index does not have (enable the embedder in configs/index.yaml and run `recap index`)")
        if not kinds:
            raise SearchError("the index has no vectors yet: run `recap index LIB`")
        return [have[k] for k in kinds]

    def search(self, text: str | None = None, *, like: str | None = None, top_k: int = 10,
               where: str | None = None, mode: Mode = "auto") -> list[Hit]:
        """Clips closest to `text` (or to clip `like`), best first, among those matching `where`."""
        if (text is None) == (like is None):
            raise SearchError("give either a text query or like=CLIP_ID")
        if not self.store.exists():
            raise SearchError(f"{self.root} has no index yet: run `recap index {self.root}`")
        expr = compile_where(where, self.fields(), set(known_columns())).milvus() if where else ""
        names = self._resolve_mode(mode, self._embedders_in_collection())
        if like is not None:
            if not CLIP_ID.fullmatch(like):
                raise SearchError(f"{like!r} is not a clip id")
            got = self.store.get([like], [vector_field(n) for n in names] + [has_field(n) for n in names])
            if not got:
                raise SearchError(f"no clip {like!r} in the index")
            names = [n for n in names if got[0].get(has_field(n))]
            if not names:
                raise SearchError(f"clip {like!r} has no vectors for this mode")
            queries = {n: list(got[0][vector_field(n)]) for n in names}
            expr = f'({PK} != "{like}")' + (f" and {expr}" if expr else "")
        else:
            queries = {n: self.model(n).embed_texts([text])[0].tolist() for n in names}
        fields = [f for f in DISPLAY if f in self.store.describe()]
        if len(queries) == 1:
            (name, q), = queries.items()
            raw = self.store.search(name, [q], top_k, expr, fields)[0]
        else:
            raw = self.store.hybrid(queries, top_k, expr, fields, self.cfg.rrf_k)
        return [Hit(rank=i + 1, score=float(h["distance"]), clip_id=h[PK] if PK in h else h["id"],
                    **{k: h["entity"].get(k) for k in fields}) for i, h in enumerate(raw)]


__all__ = ["ClipIndex", "Hit", "Reconcile", "SearchError", "WhereError"]

"""`index.ClipIndex`: a library's Milvus collection, kept equal to its Parquet, and search over it.

    index = ClipIndex("lib", load_index_config())  # pipeline.embed.load_index_config: configs/index.yaml
    index.repair()                                 # sync Milvus from Parquet (`recap index` embeds first)
    for hit in index.search("a dog running on a beach", where="duration_s > 3", top_k=5):
        print(hit.rank, hit.score, hit.clip_id, hit.caption)
    index.search(like=hit.clip_id[:8])             # more like this one (any unique prefix of its id)

Parquet is the truth: embeddings are written to `LIB/embeddings/` first (by the embed stage in
`pipeline.embed`, through `save_embeddings`), and the collection is only ever made to match
Parquet (`check` reports the differences, `repair` removes them), so it can be dropped and
rebuilt at any time without loading a model; a damaged Milvus Lite store is removed and rebuilt.

Search (`index.search`, mixed into ClipIndex) scans the Parquet vectors exactly on Milvus Lite up
to `milvus.exact_max_clips` clips, and goes through Milvus otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from index import exact, lite
from index.config import BUNDLED_MINILM, EmbedderConfig, IndexConfig, check_milvus
from index.embedders import query_encoder
from index.ledger import WRITING, ledger_path, read_ledger, same_rows, write_ledger
from index.rows import ClipPositions, RowSource, ScratchVectors, current_mask, load_vectors
from index.search import Hit, Mode, NothingToIndex, SearchError, Searching
from index.store import PK, MilvusStore, ScalarSpec, StoreBusy, StoreDamaged, StoreError
from index.where import WhereError
from pipeline.library import Library, LibraryError
from pipeline.library.embeddings import (
    compact_embeddings,
    drop_other_models,
    read_embeddings,
    vectors_of,
    write_embeddings,
)
from pipeline.library.layout import MILVUS_LITE
from trainer.progress import progress_bar

# columns of the clip table never written to Milvus (bookkeeping); every other scalar column is a
# `--where` field, in search as in export and caption
NOT_FILTERS = {"batch_id"}
HASH_SLICE = 8192      # clips whose input hashes are computed at a time


@dataclass
class Reconcile:
    """How the collection differs from Parquet."""
    missing: list[str] = field(default_factory=list)    # in Parquet, not in Milvus
    extra: list[str] = field(default_factory=list)      # in Milvus, not in Parquet
    stale: list[str] = field(default_factory=list)      # in both, different content
    unembedded: dict[str, int] = field(default_factory=dict)   # embedder -> clips without a vector
    schema_changed: bool = False
    rows: int = 0
    damaged: str = ""          # why the Lite store could not be read (it was rebuilt by `repair`)
    rebuilt: bool = False      # the Lite store was removed and built again from Parquet

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.schema_changed or self.damaged)


@dataclass
class Desired:
    """What the collection should hold, read from Parquet (`ClipIndex.desired`)."""
    scalars: list[ScalarSpec]
    dims: dict[str, int]                 # embedder -> vector dim (embedders with vectors only)
    source: RowSource                    # the rows, a batch at a time
    positions: ClipPositions             # clip_id -> row of the clip table
    unembedded: dict[str, int]           # embedder -> clips without a current vector


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


class ClipIndex(Searching):
    """The index side of one library folder (Parquet + `LIB/milvus.db` or a Milvus server)."""

    def __init__(self, path: str | Path, config: IndexConfig, milvus_uri: str | None = None,
                 token: str | None = None, notify: Callable[[str], None] | None = None):
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
        if milvus_uri is not None:
            # the config was checked when it was built; a uri given here must pass the same check
            # (else a typo is taken for a Lite path: ignored by search, "damaged" to `recap index`)
            check_milvus(self.cfg.milvus)
        # waiting for another process's Lite store is said on stderr (stdout may be --json)
        self.notify = notify or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._store: MilvusStore | None = None
        self._snapshot: exact.Snapshot | None = None
        self._n_clips: tuple[tuple, int] | None = None

    # ---- plumbing -------------------------------------------------------------------------------
    @property
    def store(self) -> MilvusStore:
        if self._store is None:
            self._store = MilvusStore(self.root, self.cfg.milvus, notify=self.notify)
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
        """The query encoder of embedder `name` (loaded once per process)."""
        e = self.cfg.embedders[name]
        return query_encoder(e.kind, e.model, e.device)

    def clip_table(self) -> pa.Table:
        """The library's clip table with the configured caption version."""
        return self.library.clip_table(self.cfg.captions.version)

    def lite_path(self) -> Path | None:
        """The Milvus Lite folder, or None for a Milvus server."""
        m = self.cfg.milvus
        return Path(m.uri or self.root / MILVUS_LITE) if m.is_lite() else None

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
        want = self.want_hashes(clips, name)
        current = current_mask(self.root, name, model_id_of(self.cfg.embedders[name]),
                               ClipPositions(clips.column(PK)), want)
        stale = np.flatnonzero((want != b"-") & ~current)
        ids = clips.column(PK).take(pa.array(stale)).to_pylist()
        return dict(zip(ids, (h.decode() for h in want[stale])))

    def current_vectors(self, clips: pa.Table, name: str) -> tuple[list[str], np.ndarray] | None:
        """Clip ids and vectors of embedder `name` made from what the clips are now (a re-captioned
        clip's old vector is left out); None when the embedder has no vectors at all."""
        e = self.cfg.embedders[name]
        mid = model_id_of(e)
        emb = read_embeddings(self.root, name, mid)
        if emb is None:
            return None
        current = {c: input_hash(mid, p) for c, p in self.payloads(clips, name).items()}
        keep = [current.get(c) == h for c, h in zip(emb.column("clip_id").to_pylist(),
                                                    emb.column("input_hash").to_pylist())]
        emb = emb.filter(pa.array(keep, pa.bool_()))
        vecs = vectors_of(emb) if emb.num_rows else np.zeros((0, emb.column("vector").type.list_size), np.float32)
        return emb.column("clip_id").to_pylist(), vecs

    def save_embeddings(self, name: str, clip_ids: list[str], vectors: np.ndarray, hashes: list[str]) -> None:
        """One part of embedder `name`'s vectors in `LIB/embeddings/<name>/`."""
        write_embeddings(self.root, name, model_id_of(self.cfg.embedders[name]), clip_ids, vectors, hashes)

    def drop_superseded(self, name: str) -> int:
        """Remove vectors of embedder `name` made by an earlier model, once its model covers the clips."""
        return drop_other_models(self.root, name, model_id_of(self.cfg.embedders[name]))

    def compact_embeddings(self, name: str) -> None:
        """Embedder `name`'s parts as one once they are many (see `merge_parts`)."""
        compact_embeddings(self.root, name, model_id_of(self.cfg.embedders[name]))

    def nothing_to_embed(self, clips: pa.Table) -> str | None:
        """Why no enabled embedder can embed anything in this library (None when one can): what to do
        instead of `recap index` failing on an empty collection and `recap search` sending the
        user back to it."""
        enabled = self.cfg.enabled()
        if any(self.payloads(clips, n) for n in enabled):
            return None
        lib = shlex.quote(str(self.root))   # a command to paste into a shell
        visual = "--set embedders.visual.enabled=true --set embedders.visual.model=PATH_OR_HF_ID"
        if not enabled:
            return f"no embedder is enabled in the index config: enable one (e.g. {visual}) and run `recap index {lib}`"
        version = self.cfg.captions.version
        known = [v["version"] for v in self.library.captions.versions()]
        if version and version not in known:     # not "no captions yet": the library has others
            return (f"captions.version {version!r} is not a caption version of {self.root} (it has: "
                    f"{', '.join(known) or 'none'}; `recap caption {lib} --list` shows them)")
        return (f"{self.root} has no captions yet, so there is nothing to embed: caption the clips first "
                f"(`recap caption {lib} --model HF_ID_OR_FOLDER`, or `--backend signals` offline), or embed "
                f"their pictures with a visual embedder ({visual}); then run `recap index {lib}`")

    # ---- Parquet -> rows -----------------------------------------------------------------------
    def want_hashes(self, clips: pa.Table, name: str) -> np.ndarray:
        """The input hash each clip's vector of embedder `name` must have, as bytes in clip order
        (b"-" where the clip has nothing to embed); computed a slice of clips at a time."""
        e = self.cfg.embedders[name]
        mid = model_id_of(e)
        out = []
        for lo in range(0, clips.num_rows, HASH_SLICE):
            part = clips.slice(lo, HASH_SLICE)
            payloads = self.payloads(part, name)
            out.append(np.array([input_hash(mid, payloads[c]).encode() if c in payloads else b"-"
                                 for c in part.column(PK).to_pylist()], dtype="S24"))
        return np.concatenate(out) if out else np.zeros(0, "S24")

    @contextmanager
    def desired(self) -> Iterator[Desired]:
        """What the collection should hold (scalar fields, vector dims, a source of row batches, the
        number of clips each embedder has no vector for); its scratch files are removed on exit."""
        clips = self.clip_table()
        scalars = [ScalarSpec(f.name, k) for f in clips.schema
                   if f.name != PK and (k := _kind(f.type)) and f.name not in NOT_FILTERS]
        positions = ClipPositions(clips.column(PK))
        vectors: dict[str, ScratchVectors] = {}
        unembedded: dict[str, int] = {}
        try:
            for name, e in self.cfg.enabled().items():
                found = load_vectors(self.root, name, model_id_of(e), positions, self.want_hashes(clips, name))
                unembedded[name] = clips.num_rows - (int(found.present.sum()) if found else 0)
                if found is not None:
                    vectors[name] = found
            yield Desired(scalars, {n: v.dim for n, v in vectors.items()}, RowSource(clips, scalars, vectors),
                          positions, unembedded)
        finally:
            for v in vectors.values():
                v.close()

    def _wanted_hashes(self, want: Desired) -> np.ndarray:
        """The row hash (S24) of every clip, in the clip table's order: what a synced store holds."""
        return np.concatenate([np.array(b.hashes, dtype="S24")
                               for b in want.source.batches(self.cfg.milvus.batch_rows, hashes_only=True)]
                              or [np.zeros(0, "S24")])

    def _ledger_path(self) -> Path:
        return ledger_path(self.root, self.store.collection)

    def _stored_rows(self, trust_ledger: bool) -> tuple[tuple[pa.ChunkedArray, pa.ChunkedArray], bool]:
        """(clip ids, row hashes) the store holds, and whether they came from the ledger (the last
        sync's record, believed while the store carries that sync's token and row count)."""
        if trust_ledger:
            found = read_ledger(self._ledger_path(), self.store.sync_token())
            if found is not None and len(found[0]) == self.store.count():
                return found, True
        return self.store.row_hashes(), False

    def _diff(self, want: Desired, rec: Reconcile, hashes: np.ndarray,
              stored: tuple[pa.ChunkedArray, pa.ChunkedArray]) -> np.ndarray:
        """Fill rec.missing/extra/stale by comparing row hashes; returns which clips to write."""
        stored_ids, stored_hashes = stored
        rows = want.positions.find(stored_ids)        # -1: a row of a clip the library no longer has
        found = rows >= 0
        held = np.zeros(len(hashes), bool)
        held[rows[found]] = True
        differs = np.zeros(len(hashes), bool)
        old = np.array(stored_hashes.filter(pa.array(found)).to_pylist(), dtype="S24")
        differs[rows[found]] = old != hashes[rows[found]]
        ids = want.source.clips.column(PK)
        rec.missing = ids.filter(pa.array(~held)).to_pylist()
        rec.stale = ids.filter(pa.array(differs)).to_pylist()
        rec.extra = sorted(stored_ids.filter(pa.array(~found)).to_pylist())
        return ~held | differs

    # ---- check / repair / index -------------------------------------------------------------------
    def check(self) -> Reconcile:
        """Compare the collection with Parquet; change nothing. A damaged Lite store is reported in
        `damaged` (with everything counted as missing)."""
        with self.desired() as want:
            rec = Reconcile(unembedded=want.unembedded, rows=len(want.source))
            every = want.source.clips.column(PK).to_pylist
            lite_path = self.lite_path()
            try:
                if (lite_path is not None and not lite_path.exists()) or not self.store.exists():   # (opening Lite creates it)
                    rec.schema_changed = True
                    rec.missing = every()
                    return rec
                if self.store.describe() != self.store.wanted(want.scalars, want.dims):
                    rec.schema_changed = True
                # a check reads the store itself, never the ledger, and drops a ledger the store contradicts
                stored = self.store.row_hashes()
                recorded = read_ledger(self._ledger_path(), self.store.sync_token())
                if recorded is not None and not same_rows(recorded, stored):
                    self._ledger_path().unlink(missing_ok=True)
                self._diff(want, rec, self._wanted_hashes(want), stored)
            except StoreDamaged as e:
                rec.damaged, rec.schema_changed, rec.missing, rec.extra, rec.stale = str(e), True, every(), [], []
            return rec

    def repair(self, log=print, rebuild: bool = False) -> Reconcile:
        """Make the collection match Parquet (recreating it when its fields changed); returns what
        was found before repairing. With `rebuild`, a Milvus Lite store is removed whatever state it
        is in and built again from Parquet; a Lite store found damaged is rebuilt in any case."""
        with self.desired() as want:
            if not want.dims:
                raise NothingToIndex(self.nothing_to_embed(self.clip_table()) or
                                     "no clip has a vector yet (none could be embedded): nothing to index")
            lite_path = self.lite_path()
            if lite_path is not None and rebuild:
                self._remove_lite(log, "rebuilding it from Parquet (--repair)")
            try:
                rec = self._sync(want, log, trust_ledger=not rebuild)
            except StoreDamaged as e:
                if lite_path is None:
                    raise
                self._remove_lite(log, f"rebuilding it from Parquet (it was damaged: {e.why})")
                rec = self._sync(want, log, trust_ledger=False)
                rec.damaged = str(e)
            rec.unembedded = want.unembedded
            rec.rebuilt = rebuild or bool(rec.damaged)
            return rec

    def _remove_lite(self, log, why: str) -> None:
        path = self.lite_path()
        self.close()
        if lite.open_here(path):
            raise StoreBusy(f"{path} is open elsewhere in this process: close that index before rebuilding it",
                            os.getpid())
        try:
            done = lite.remove(path, self.cfg.milvus.lock_wait_s, self.notify)
        except lite.Busy as e:
            raise StoreBusy(f"{path} is in use by {lite.describe_pid(e.pid)}: not rebuilding it while it is open "
                            "(rerun when that process is done)", e.pid) from None
        except OSError as e:
            raise StoreError(str(e)) from e
        log(f"Milvus Lite store: {done}; {why}")

    def _sync(self, want: Desired, log, trust_ledger: bool) -> Reconcile:
        """Make the collection hold exactly the library's rows; then record them (index/ledger.py)."""
        store = self.store
        rec = Reconcile(rows=len(want.source))
        batch_rows = self.cfg.milvus.batch_rows
        from_ledger = False
        if not store.exists() or store.describe() != store.wanted(want.scalars, want.dims):
            rec.schema_changed = True
            if store.exists():
                log("collection fields differ from the library's columns: rebuilding it")
            store.drop()
            store.create(want.scalars, want.dims)
            rec.missing = want.source.clips.column(PK).to_pylist()
            written = []
            with _sync_bar(rec.rows) as bar:
                for batch in want.source.batches(batch_rows):
                    store.write(batch, replace=False)      # a new collection: nothing to replace
                    written.append(np.array(batch.hashes, dtype="S24"))
                    bar.update(len(batch.hashes))
            hashes = np.concatenate(written) if written else np.zeros(0, "S24")
        else:
            hashes = self._wanted_hashes(want)
            stored, from_ledger = self._stored_rows(trust_ledger)
            keep = self._diff(want, rec, hashes, stored)
            if rec.extra or keep.any():       # the ledger stops being believed before anything changes
                self._ledger_path().unlink(missing_ok=True)
                store.set_sync_token(WRITING)
                from_ledger = False
            if rec.extra:
                store.delete(rec.extra)
            with _sync_bar(int(keep.sum())) as bar:
                for batch in want.source.batches(batch_rows, keep=keep):
                    store.write(batch, replace=True)
                    bar.update(len(batch.hashes))
        store.flush()
        # a Lite store that loses rows while being written is not "repaired" (a server may count late)
        if store.is_lite and (held := store.count()) != rec.rows:
            raise store.damaged(f"it holds {held} rows after the sync, the library {rec.rows} clips")
        if not from_ledger:                  # the store now holds these rows: the next run need not read them back
            token = uuid.uuid4().hex
            write_ledger(self._ledger_path(), want.source.clips.column(PK), hashes, token)
            store.set_sync_token(token)
        return rec

# A sync writing fewer rows takes a few seconds at most: no bar for it.
SYNC_BAR_ROWS = 10_000


def _sync_bar(rows: int):
    return progress_bar(total=rows, desc="write to Milvus", unit="clip", disable=rows < SYNC_BAR_ROWS)


__all__ = ["ClipIndex", "Hit", "Mode", "NothingToIndex", "Reconcile", "SearchError", "WhereError"]

"""Search over a library's index: the part of `index.api.ClipIndex` that answers queries.

Milvus Lite, up to `milvus.exact_max_clips` clips, is searched by an exact scan of the Parquet
vectors in this process (`index.exact`): the same hits as Lite's FLAT, without opening the store,
so a search neither waits for a `recap index` holding it nor trusts a damaged one. A Milvus server,
or a larger Lite library, is searched through Milvus; a store that answers with fewer hits than
asked while holding fewer rows than the library has clips is an error, never "nothing found".
`--where` is checked against the clip table's fields, the set `recap export` and `recap caption` take.
Several texts (`search_many`) go through the same path as one: one forward pass of each model, one
matrix product or one Milvus call (hybrid included: `hybrid_search` takes several vectors per field).
"""

from __future__ import annotations

import bisect
import re
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index import exact
from index.catalog import DERIVED, fields_for_schema, known_columns, known_values
from index.embedders import embed_queries
from index.store import PK, ROW_HASH, MilvusStore, StoreBusy, StoreDamaged, StoreError, has_field, vector_field
from index.where import Field, compile_where
from pipeline.library.files import reading

Mode = Literal["auto", "caption", "visual", "hybrid"]
DISPLAY = ["video_id", "source", "start_s", "end_s", "duration_s", "caption", "path"]
CLIP_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
QUERIES_PER_CALL = 1024     # query vectors per Milvus request (a server caps nq and message sizes)


class SearchError(ValueError):
    """A search request that cannot be answered (no such clip, no vectors for that mode, ...)."""


class NothingToIndex(SearchError):
    """The library has nothing an enabled embedder can embed (no captions, no visual embedder)."""


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


def check_request(texts: list[str] | None, top_k: int) -> None:
    """Refuse what has no meaningful answer: a blank query (its embedding ranks clips arbitrarily,
    not "nothing found") and a `top_k` that is not a positive integer."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise SearchError(f"top_k must be an integer >= 1, got {top_k!r}")
    blank = [i for i, t in enumerate(texts or []) if not t.strip()]
    if blank:
        which = "the query" if len(texts) == 1 else f"query {blank[0] + 1} of {len(texts)}"
        raise SearchError(f"{which} is empty: give some words to search for")


class Searching:
    """Search methods of `ClipIndex` (a mixin: it reads the index's `cfg`, `library`, `root`, `store`,
    `notify` and embeddings, and keeps what it read in `_snapshot` and `_n_clips`)."""

    def _index_command(self) -> str:
        """`recap index LIB` for this library, to paste into a shell (with the caption version this
        search asked for: a plain `recap index` embeds the default version's captions)."""
        version = self.cfg.captions.version
        return f"recap index {shlex.quote(str(self.root))}" + \
            (f" --set captions.version={shlex.quote(version)}" if version else "")

    # ---- fields -----------------------------------------------------------------------------------
    def fields(self) -> dict[str, Field]:
        """The fields `where` may use: the clip table's filterable columns, the same set `recap export`
        and `recap caption` take (a Milvus collection in sync with the library holds them all)."""
        if self.uses_exact():
            return fields_for_schema(self._snap().clips.schema, {exact.ROW})
        return fields_for_schema(self.clip_table().schema)

    def _collection_fields(self) -> dict[str, Field]:
        kinds = {"INT64": "number", "DOUBLE": "number", "VARCHAR": "string", "BOOL": "bool"}
        out: dict[str, Field] = {}
        values = known_values()
        for name, (tname, _) in self.store.describe().items():
            if name == ROW_HASH or name.startswith("has_") or tname not in kinds:
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

    # ---- search -----------------------------------------------------------------------------------
    def uses_exact(self) -> bool:
        """Whether search scans the Parquet vectors here (Milvus Lite, up to `exact_max_clips`)."""
        m = self.cfg.milvus
        return m.is_lite() and m.exact_max_clips > 0 and self.n_clips() <= m.exact_max_clips

    def n_clips(self) -> int:
        """Clips in the library (counted once per set of committed parts)."""
        parts = tuple(self.library.parts("clips"))
        if self._n_clips is None or self._n_clips[0] != parts:
            # the parts' footers say it without reading the clips (1/4 s at 100k clips)
            rows = 0
            for p in parts:
                with reading(p):
                    rows += pq.read_metadata(p).num_rows
            self._n_clips = (parts, rows)
        return self._n_clips[1]

    def _signature(self) -> tuple:
        """What the snapshot was read from, to notice changes."""
        return self.library.signature(self.cfg.enabled())

    def _snap(self) -> exact.Snapshot:
        """The clip table and current vectors, read once and kept while the files are unchanged."""
        sig = self._signature()
        if self._snapshot is None or self._snapshot.signature != sig:
            clips = self.clip_table()
            ids = clips.column(PK).to_pylist()
            row_of = {c: i for i, c in enumerate(ids)}
            vectors = {}
            for name in self.cfg.enabled():
                found = self.current_vectors(clips, name)
                if found and found[0]:      # (only clips of this table have a current vector)
                    rows = np.fromiter((row_of[c] for c in found[0]), np.int64, len(found[0]))
                    mat = found[1]           # this call's own copy: normalised in place
                    mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
                    vectors[name] = exact.Vectors(rows, mat)
            clips = clips.append_column(exact.ROW, pa.array(np.arange(len(ids), dtype=np.int64)))
            self._snapshot = exact.Snapshot(clips, ids, vectors, sig)
        return self._snapshot

    def resolve_clip(self, like: str) -> str:
        """The clip id `like` names: the id itself or any unique prefix of it (as git takes commits)."""
        if not CLIP_ID.fullmatch(like):
            raise SearchError(f"{like!r} is not a clip id")
        ids = self._snap().ids if self._snapshot is not None else sorted(self.library.clips([PK]).column(PK).to_pylist())
        i = bisect.bisect_left(ids, like)        # ids are sorted: the matches follow one another
        matches = []
        while i < len(ids) and ids[i].startswith(like) and len(matches) < 6:
            matches.append(ids[i])
            i += 1
        if like in matches:
            return like
        if not matches:
            raise SearchError(f"no clip {like!r} in the library")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
            raise SearchError(f"clip id prefix {like!r} is ambiguous: it starts {shown}; give more characters")
        return matches[0]

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
            raise SearchError(self.nothing_to_embed(self.clip_table()) or
                              f"{self.root} has no index yet: run `{self._index_command()}`")
        return [have[k] for k in kinds]

    def search(self, text: str | None = None, *, like: str | None = None, top_k: int = 10,
               where: str | None = None, mode: Mode = "auto") -> list[Hit]:
        """Clips closest to `text` (or to clip `like`, any unique prefix of its id), best first,
        among those matching `where`."""
        if (text is None) == (like is None):
            raise SearchError("give either a text query or like=CLIP_ID")
        return self._search(None if text is None else [text], like, top_k, where, mode)[0]

    def search_many(self, texts: Sequence[str], *, top_k: int = 10, where: str | None = None,
                    mode: Mode = "auto") -> list[list[Hit]]:
        """`search(text)` for each of `texts`, in their order, done together: the texts are embedded
        in one forward pass per embedder and ranked by one matrix product (the exact scan) or one
        store call (Milvus) for all of them."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise SearchError("search_many takes a list of text queries")
        return self._search(list(texts), None, top_k, where, mode) if texts else []

    def _search(self, texts: list[str] | None, like: str | None, top_k: int, where: str | None,
                mode: Mode) -> list[list[Hit]]:
        """One hit list per text (or one for `like`)."""
        check_request(texts, top_k)
        if self.uses_exact():
            return self._search_exact(texts, like, top_k, where, mode)
        try:
            return self._search_milvus(texts, like, top_k, where, mode)
        except StoreBusy:
            if not self.cfg.milvus.is_lite():
                raise
            # Lite held by another process (e.g. `recap index`): the same answer from the Parquet vectors
            return self._search_exact(texts, like, top_k, where, mode)

    def _queries(self, names: list[str], texts: list[str]) -> dict[str, np.ndarray]:
        """Each embedder's (len(texts), D) query vectors: one forward pass of its model."""
        return {n: embed_queries(self.model(n), texts) for n in names}

    def _search_exact(self, texts, like, top_k, where, mode) -> list[list[Hit]]:
        snap = self._snap()
        fields = fields_for_schema(snap.clips.schema, {exact.ROW})
        allowed = snap.mask(compile_where(where, fields, set(known_columns()))) if where else None
        have = {self.cfg.embedders[n].kind: n for n in snap.vectors}
        names = self._resolve_mode(mode, have)
        if like is not None:
            like = self.resolve_clip(like)
            row = snap.ids.index(like)
            names = [n for n in names if row in snap.vectors[n].slot]
            if not names:
                raise SearchError(f"clip {like!r} has no vectors for this mode")
            queries = {n: snap.vectors[n].matrix[[snap.vectors[n].slot[row]]] for n in names}
            allowed = np.ones(len(snap.ids), bool) if allowed is None else allowed.copy()
            allowed[row] = False
        else:
            queries = self._queries(names, texts)
        per_name = [exact.ranked(snap.vectors[n], q, allowed, top_k) for n, q in queries.items()]
        found = [lists[0] if len(lists) == 1 else exact.rrf(list(lists), self.cfg.rrf_k, top_k)
                 for lists in zip(*per_name)]                         # one list per query
        shown = [c for c in DISPLAY if c in snap.clips.column_names]
        rows = [r for f in found for r, _ in f]
        table = snap.clips.take(pa.array(rows, pa.int64())).select(shown).to_pylist() if rows else []
        out, at = [], 0
        for f in found:
            out.append([Hit(rank=i + 1, score=score, clip_id=snap.ids[r], **row)
                        for i, ((r, score), row) in enumerate(zip(f, table[at:at + len(f)]))])
            at += len(f)
        return out

    def _search_milvus(self, texts, like, top_k, where, mode) -> list[list[Hit]]:
        # no answer holds more hits than the library has clips; Milvus would allocate for top_k
        # (a huge --top-k failed as "store damaged" on Lite, and past the server's cap on a server)
        top_k = min(top_k, max(1, self.n_clips()))
        if self._store is None and self.cfg.milvus.is_lite() and self.lite_path().exists():
            # a search does not wait for a Lite store another process holds: it reads Parquet instead
            self._store = MilvusStore(self.root, self.cfg.milvus, notify=self.notify, lock_wait_s=0)
        lite_path = self.lite_path()
        if (lite_path is not None and not lite_path.exists()) or not self.store.exists():   # (opening Lite creates it)
            raise SearchError(self.nothing_to_embed(self.clip_table()) or
                              f"{self.root} has no index yet: run `{self._index_command()}`")
        store = self.store
        expr = compile_where(where, self._collection_fields(), set(known_columns())).milvus() if where else ""
        names = self._resolve_mode(mode, self._embedders_in_collection())
        if like is not None:
            like = self.resolve_clip(like)
            got = store.get([like], [vector_field(n) for n in names] + [has_field(n) for n in names])
            if not got:
                raise SearchError(f"clip {like!r} is not in the index yet: run `{self._index_command()}`")
            names = [n for n in names if got[0].get(has_field(n))]
            if not names:
                raise SearchError(f"clip {like!r} has no vectors for this mode")
            queries = {n: [list(got[0][vector_field(n)])] for n in names}
            expr = f'({PK} != "{like}")' + (f" and {expr}" if expr else "")
        else:
            queries = {n: q.tolist() for n, q in self._queries(names, texts).items()}
        fields = [f for f in DISPLAY if f in store.describe()]
        raw: list[list[dict[str, Any]]] = []
        n_queries = len(next(iter(queries.values())))
        for lo in range(0, n_queries, QUERIES_PER_CALL):        # (one call, unless there are very many)
            part = {n: qs[lo:lo + QUERIES_PER_CALL] for n, qs in queries.items()}
            if len(part) == 1:
                (name, qs), = part.items()
                raw += store.search(name, qs, top_k, expr, fields)
            else:
                raw += store.hybrid(part, top_k, expr, fields, self.cfg.rrf_k)
        if any(len(r) < top_k for r in raw) and (held := store.count()) < (n := self.n_clips()):
            # fewer hits than asked may be the filter, or a store that lost rows: never answer
            # "nothing found" from a store that does not hold the library
            error = StoreDamaged if store.is_lite else StoreError
            raise error(f"the Milvus collection holds {held} of the library's {n} clips, so this answer would be "
                        f"incomplete: run `{self._index_command()}` (or `--repair` to rebuild it)")
        return [[Hit(rank=i + 1, score=float(h["distance"]), clip_id=h[PK] if PK in h else h["id"],
                     **{k: h["entity"].get(k) for k in fields}) for i, h in enumerate(r)] for r in raw]

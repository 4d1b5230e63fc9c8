"""What the UI reads: the library's clip table (committed parts only, so a running ingest is never
half-seen), cached in memory until a file it came from changes, and everything the API asks of it:
pages of clips under a `--where`, search hits joined with their rows, one clip's details, the ids
behind "select all results", and what to run when something is missing.

Every list is bounded: a page holds at most MAX_PAGE clips, a search at most MAX_HITS hits.
"""

from __future__ import annotations

import math
import shlex
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.api import ClipIndex
from index.catalog import compile_for_schema, fields_for_schema
from index.config import IndexConfig
from pipeline.library import Library, LibraryError
from pipeline.library.embeddings import embeddings_dir
from pipeline.library.schema import CLIP_ID
from pipeline.library.selections import list_selections, read_selection, selection_path
from pipeline.library.views import read_view

MAX_PAGE = 200          # clips per page, hard cap
MAX_HITS = 1000         # search hits one query may page through
MAX_GROUP = 50          # members of a duplicate group shown with a clip
ROW = "_row"            # row number carried through filters (never a `--where` field)
# what a results card shows; the detail endpoint returns every column
SUMMARY = ["clip_id", "video_id", "source", "clip_index", "start_s", "end_s", "duration_s", "fps", "width",
           "height", "clip_mode", "path", "file_start_frame", "motion_score", "camera_motion", "aesthetic_score",
           "ocr_text", "text_area", "passed", "duplicate_of", "caption", "caption_version"]
SORTS = ("clip_id", "duration_s", "motion_score", "aesthetic_score", "sharpness", "brightness", "text_area",
         "source")


class NotFound(LookupError):
    """No such clip or selection."""


class BadRequest(ValueError):
    """A request the library cannot answer as asked (the message says why)."""


@dataclass
class Snapshot:
    """The clip table as read at one moment, with `_row`, `reject_reasons` and a row per clip id."""
    table: pa.Table | None
    signature: tuple
    why_empty: str = ""
    row_of: dict[str, int] = field(default_factory=dict)
    lists: OrderedDict = field(default_factory=OrderedDict)     # request -> row order or search hits
    versions: list[dict[str, Any]] | None = None                # CaptionStore.versions(), read once


@dataclass
class Page:
    total: int
    offset: int
    limit: int
    items: list[dict[str, Any]]
    capped: bool = False        # a search that may have more hits than it returned (MAX_HITS)


def clean(value: Any) -> Any:
    """A JSON-safe value (NaN and infinity become null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Catalog:
    """One library as the server sees it. Thread-safe: requests run in a thread pool."""

    def __init__(self, root: str | Path, config: IndexConfig, milvus_uri: str | None = None,
                 token: str | None = None):
        self.root = Path(root)
        self.lib = Library(self.root)          # LibraryError: not a library
        self.cfg = config
        self.index = ClipIndex(self.root, config, milvus_uri=milvus_uri, token=token)
        self._lock = threading.Lock()
        self._search_lock = threading.Lock()   # ClipIndex keeps one snapshot and one store: one query at a time
        self._lists_lock = threading.Lock()    # the per-snapshot cache of result lists
        self._snap: Snapshot | None = None
        self._captions: tuple[tuple, pa.Table] | None = None

    def close(self) -> None:
        with self._search_lock:
            self.index.close()

    # ---- the cached clip table ------------------------------------------------------------------
    def signature(self) -> tuple:
        """What the table was read from (new vectors change what a search finds, too)."""
        return self.lib.signature(self.cfg.enabled())

    def snapshot(self) -> Snapshot:
        """The current table: re-read when the library changed since the last request."""
        sig = self.signature()
        with self._lock:
            if self._snap is None or self._snap.signature != sig:
                self._snap = self._read(sig)
            return self._snap

    def _read(self, sig: tuple) -> Snapshot:
        try:
            t = self.lib.clip_table(self.cfg.captions.version)
        except (FileNotFoundError, LibraryError) as e:     # no clips yet, or a table that names bad paths
            return Snapshot(None, sig, str(e))
        ids = t.column("clip_id").to_pylist()
        row_of = {c: i for i, c in enumerate(ids)}
        found = read_view(self.root)
        reasons: list[Any] = [None] * len(ids)
        if found is not None:
            view = found[0]
            for c, r in zip(view.column("clip_id").to_pylist(), view.column("reject_reasons").to_pylist()):
                if c in row_of:
                    reasons[row_of[c]] = r
        t = t.append_column("reject_reasons", pa.array(reasons, pa.list_(pa.string())))
        t = t.append_column(ROW, pa.array(np.arange(len(ids), dtype=np.int64)))
        return Snapshot(t, sig, row_of=row_of)

    def require(self) -> Snapshot:
        snap = self.snapshot()
        if snap.table is None:
            raise NotFound(snap.why_empty)
        return snap

    # ---- fields and `--where` ---------------------------------------------------------------------
    def fields(self) -> dict[str, dict[str, Any]]:
        """Filterable fields of this library: name -> kind, allowed values, and how many clips have a
        value (a signal nobody measured yet filters nothing worth filtering; for duplicates: how many
        the filter view judged)."""
        snap = self.snapshot()
        if snap.table is None:
            return {}
        t = snap.table
        fields = fields_for_schema(t.schema, {ROW})

        def measured(name: str) -> int | None:
            if name in ("duplicate_of", "duplicate"):     # null there means "not a duplicate": judged by the view
                name = "passed"
            return t.num_rows - t.column(name).null_count if name in t.column_names else None

        return {n: {"kind": f.kind, "values": list(f.values) if f.values else None, "measured": measured(n)}
                for n, f in sorted(fields.items())}

    def check_where(self, where: str) -> None:
        """Raise WhereError (with a caret under the bad token) unless `where` fits this library."""
        snap = self.require()
        compile_for_schema(where, snap.table.drop_columns([ROW]).schema)

    def _rows(self, snap: Snapshot, where: str | None, selection: str | None, sort: str, desc: bool) -> np.ndarray:
        """Row numbers matching `where` (and in `selection`), in `sort` order; kept per snapshot."""
        key = (where or "", selection or "", self._stamp(selection), sort, desc)
        kept = self._recall(snap, key)
        if kept is not None:
            return kept
        t = snap.table
        if where:
            expr = compile_for_schema(where, t.drop_columns([ROW]).schema)
            t = t.select(sorted(expr.columns() | {ROW, "clip_id"}))
            t = t.filter(expr.arrow())
        if selection:
            chosen = self.selection_ids(selection)
            t = t.filter(pc.is_in(t.column("clip_id"), pa.array(chosen, pa.string())))
        if sort not in SORTS:
            raise BadRequest(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
        rows = t.column(ROW).to_numpy()
        if sort == "source":
            keys = [("video_id", "descending" if desc else "ascending"), ("start_s", "ascending")]
            part = snap.table.select(["video_id", "start_s"]).take(pa.array(rows))
            rows = rows[pc.sort_indices(part, keys).to_numpy()] if len(rows) else rows
        elif sort != "clip_id" or desc:
            col = snap.table.column(sort) if sort in snap.table.column_names else None
            if col is None:
                raise BadRequest(f"sort: this library has no {sort!r} column yet")
            values = col.take(pa.array(rows))
            order = pc.array_sort_indices(values, order="descending" if desc else "ascending", null_placement="at_end")
            rows = rows[order.to_numpy()]
        return self._remember(snap, key, rows)

    def _stamp(self, selection: str | None) -> tuple[int, int] | None:
        """When selection `selection` was last saved (a re-saved selection is a new list)."""
        if not selection:
            return None
        try:
            st = selection_path(self.root, selection).stat()      # a save renames a new file into place
            return st.st_ino, st.st_mtime_ns
        except ValueError as e:
            raise BadRequest(str(e)) from None
        except FileNotFoundError:
            return None

    def _recall(self, snap: Snapshot, key: tuple) -> Any:
        with self._lists_lock:
            if key in snap.lists:
                snap.lists.move_to_end(key)
                return snap.lists[key]
            return None

    def _remember(self, snap: Snapshot, key: tuple, value: Any) -> Any:
        with self._lists_lock:
            if len(snap.lists) >= 16:
                snap.lists.popitem(last=False)
            snap.lists[key] = value
        return value

    # ---- pages --------------------------------------------------------------------------------
    def items(self, snap: Snapshot, rows: list[int] | np.ndarray, columns: list[str] | None = None) -> list[dict]:
        """Rows as JSON-ready dicts: the summary columns this library has, plus the reject reasons."""
        if len(rows) == 0:
            return []
        names = [c for c in (columns or SUMMARY) if c in snap.table.column_names] + ["reject_reasons"]
        part = snap.table.select(names).take(pa.array(np.asarray(rows, np.int64)))
        return [{k: clean(v) for k, v in r.items()} for r in part.to_pylist()]

    def list_clips(self, where: str | None = None, offset: int = 0, limit: int = 60, sort: str = "clip_id",
                   desc: bool = False, selection: str | None = None) -> Page:
        """One page of the clips matching `where` (WhereError when it does not fit the library)."""
        limit = min(limit, MAX_PAGE)
        snap = self.snapshot()
        if snap.table is None:
            return Page(0, offset, limit, [])
        rows = self._rows(snap, where, selection, sort, desc)
        return Page(len(rows), offset, limit, self.items(snap, rows[offset:offset + limit]))

    def hits(self, snap: Snapshot, text: str | None, like: str | None, mode: str, where: str | None) -> list:
        """The first MAX_HITS hits of a search (SearchError / WhereError say why not), best first;
        kept per snapshot, so paging through them searches once."""
        key = ("search", text, like, mode, where or "")
        kept = self._recall(snap, key)
        if kept is not None:
            return kept
        with self._search_lock:
            found = self.index.search(text, like=like, top_k=MAX_HITS, where=where or None, mode=mode)
        return self._remember(snap, key, [h for h in found if h.clip_id in snap.row_of])

    def search(self, text: str | None = None, like: str | None = None, mode: str = "auto", where: str | None = None,
               offset: int = 0, limit: int = 60) -> Page:
        """One page of semantic search hits, best first (a search stops at MAX_HITS hits)."""
        limit = min(limit, MAX_PAGE)
        snap = self.require()
        hits = self.hits(snap, text, like, mode, where)
        shown = hits[offset:offset + limit]
        items = self.items(snap, [snap.row_of[h.clip_id] for h in shown])
        for item, h in zip(items, shown):
            item["score"] = clean(h.score)
            item["rank"] = h.rank
        return Page(len(hits), offset, limit, items, capped=len(hits) >= MAX_HITS)

    def result_ids(self, where: str | None = None, text: str | None = None, like: str | None = None,
                   mode: str = "auto", selection: str | None = None) -> list[str]:
        """Every clip id of a result set ("select all results"): all clips matching `where`, or the
        first MAX_HITS hits of a search."""
        snap = self.require()
        if text is not None or like is not None:
            if selection:       # a search is not narrowed to a selection: its hits would come from every clip
                raise BadRequest("a search's results cannot be narrowed to a selection: give `selection` "
                                 "without `q` / `like` (or a `where`)")
            return [h.clip_id for h in self.hits(snap, text, like, mode, where)]
        rows = self._rows(snap, where, selection, "clip_id", False)
        return snap.table.column("clip_id").take(pa.array(rows)).to_pylist()

    # ---- one clip -----------------------------------------------------------------------------
    def row(self, clip_id: str) -> tuple[Snapshot, int]:
        if not CLIP_ID.fullmatch(clip_id):
            raise BadRequest(f"{clip_id!r} is not a clip id")
        snap = self.require()
        if clip_id not in snap.row_of:
            raise NotFound(f"no clip {clip_id!r} in this library")
        return snap, snap.row_of[clip_id]

    def clip(self, clip_id: str) -> dict[str, Any]:
        """Every column of one clip, its caption versions, reject reasons and duplicate group."""
        snap, row = self.row(clip_id)
        out = {k: clean(v) for k, v in snap.table.drop_columns([ROW]).slice(row, 1).to_pylist()[0].items()}
        out["captions"] = self.caption_versions(clip_id)
        kept = out.get("duplicate_of") or clip_id
        group: list[str] = []
        if "duplicate_of" in snap.table.column_names:
            dup = snap.table.column("duplicate_of")
            members = snap.table.filter(pc.fill_null(pc.equal(dup, kept), False)).column("clip_id")
            if len(members):
                group = [kept] + members.slice(0, MAX_GROUP).to_pylist()
        out["duplicate_group"] = {"kept": kept, "members": group} if group else None
        return out

    def caption_versions(self, clip_id: str) -> list[dict[str, Any]]:
        """Every caption version's latest row for one clip (model, prompt, status, text)."""
        store = self.lib.captions
        sig = tuple((p.name, p.stat().st_mtime_ns) for p in store.parts())
        if self._captions is None or self._captions[0] != sig:
            cols = ["clip_id", "version", "backend", "model_id", "prompt_id", "text", "status", "reason", "created_at"]
            self._captions = (sig, store.read(columns=cols))
        t = self._captions[1]
        rows = t.filter(pc.equal(t.column("clip_id"), clip_id)).drop_columns(["clip_id"]).to_pylist()
        default = store.default()
        for r in rows:
            r["created_at"] = r["created_at"].isoformat() if r["created_at"] else None
            r["default"] = r["version"] == default
        return rows

    def media_file(self, clip_id: str) -> Path:
        """The clip's own file, resolved by `Library.media_path` (LibraryError: outside the library;
        NotFound: a reference clip, or a file that is gone)."""
        snap, row = self.row(clip_id)
        r = snap.table.select(["path", "source", "start_s", "end_s"]).slice(row, 1).to_pylist()[0] \
            if "path" in snap.table.column_names else {"path": None}
        if not r.get("path"):
            raise NotFound(f"clip {clip_id} has no clip file (a `reference` clip): its source is "
                           f"{r.get('source')} from {r.get('start_s')} s to {r.get('end_s')} s, not served")
        path = self.lib.media_path(r["path"])
        if not path.is_file():
            raise NotFound(f"clip file {r['path']} of clip {clip_id} is missing")
        return path

    def clip_row(self, clip_id: str) -> dict[str, Any]:
        snap, row = self.row(clip_id)
        return snap.table.drop_columns([ROW, "reject_reasons"]).slice(row, 1).to_pylist()[0]

    # ---- selections ---------------------------------------------------------------------------
    def selection_ids(self, name: str) -> list[str]:
        try:
            return read_selection(self.root, name)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        except FileNotFoundError as e:
            raise NotFound(str(e)) from None

    def selections(self) -> list[dict[str, Any]]:
        """Each saved selection with its size; one that cannot be read (cut off, not a selection)
        with `count` null and the `error` that says what to do, so the others still list."""
        out = []
        for name in list_selections(self.root):
            try:
                out.append({"name": name, "count": len(read_selection(self.root, name))})
            except LibraryError as e:
                out.append({"name": name, "count": None, "error": str(e)})
        return out

    def unknown_ids(self, ids: list[str]) -> list[str]:
        snap = self.require()
        return [c for c in ids if c not in snap.row_of]

    # ---- what the library has, and what to run -----------------------------------------------------
    def searchable(self) -> dict[str, bool]:
        """Which search modes have vectors on disk (the index reads them, or Milvus holds them)."""
        kinds = {e.kind for n, e in self.cfg.enabled().items()
                 if embeddings_dir(self.root, n).is_dir() and any(embeddings_dir(self.root, n).glob("part-*.parquet"))}
        return {"caption": "text" in kinds, "visual": "clip" in kinds, "hybrid": {"text", "clip"} <= kinds}

    def status(self) -> dict[str, Any]:
        """Counts, caption versions, index state and notices (what is missing and the command to run)."""
        snap = self.snapshot()
        lib = shlex.quote(str(self.root))   # the notices' commands are pasted into a shell
        notices: list[dict[str, str]] = []
        out: dict[str, Any] = {"library": str(self.root.resolve()), "clips": 0, "videos": 0}
        if snap.table is None:
            notices.append({"text": snap.why_empty or "no clips yet", "run": f"recap ingest VIDEOS --out {lib}"})
        else:
            t = snap.table
            out["clips"] = t.num_rows
            out["videos"] = len(pc.unique(t.column("video_id")))
            if "passed" in t.column_names:
                out["passed"] = int(pc.sum(pc.fill_null(t.column("passed"), False)).as_py() or 0)
            if "duplicate_of" in t.column_names:
                out["duplicates"] = t.num_rows - t.column("duplicate_of").null_count
            out["with_file"] = t.num_rows - t.column("path").null_count if "path" in t.column_names else 0
        if snap.versions is None:
            snap.versions = self.lib.captions.versions()
        versions = snap.versions
        out["caption_versions"] = [{k: (v[k].isoformat() if k in ("first", "last") else v[k])
                                    for k in ("version", "model_id", "prompt_id", "counts", "first", "last")}
                                   for v in versions]
        out["default_caption_version"] = self.lib.captions.default()
        if snap.table is not None and not versions:
            notices.append({"text": "no captions yet: clips show no caption and caption search has nothing to search",
                            "run": f"recap caption {lib} --backend signals"})
        if snap.table is not None and read_view(self.root) is None:
            notices.append({"text": "no filter view yet: passed / rejected / duplicate are unknown",
                            "run": f"recap filter {lib}"})
        elif snap.table is not None and self.lib.view_is_stale():
            notices.append({"text": "the filter view is older than the newest clips (they count as not passed)",
                            "run": f"recap filter {lib}"})
        modes = self.searchable()
        out["search_modes"] = modes
        if snap.table is not None and not any(modes.values()):
            notices.append({"text": "no search index yet: browsing and filters work, text search does not",
                            "run": (f"recap caption {lib} --backend signals && " if not versions else "")
                            + f"recap index {lib}"})
        out["notices"] = notices
        out["selections"] = list_selections(self.root)
        return out

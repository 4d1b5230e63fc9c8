"""Step 1 of an export: which clips. The library's clip table (clips + filter view + caption), kept
when the clip passes the filter view, is not a duplicate, matches `--where` and (optionally) is
among the `--query` hits; every step's count is kept for the dataset card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from index.api import ClipIndex, SearchError
from index.catalog import compile_for_schema
from index.store import StoreError
from index.where import WhereError
from pipeline.embed import load_index_config
from pipeline.library import Library, LibraryError
from pipeline.library.selections import read_selection


class ExportError(RuntimeError):
    """The export cannot run as asked (empty selection, unknown caption version, foreign folder)."""


@dataclass
class Selection:
    clips: pa.Table                                  # one row per selected clip
    steps: list[tuple[str, int]]                     # (what was applied, clips left after it)
    caption_version: str | None                      # the version training captions come from
    captions: dict[str, dict[str, str]]              # clip_id -> every ok caption version -> text
    versions: list[dict[str, Any]]                   # CaptionStore.versions() of the versions used
    scores: dict[str, float] = field(default_factory=dict)   # --query: clip_id -> similarity
    notes: list[str] = field(default_factory=list)   # what the card and the CLI should say


def _caption_versions(lib: Library, wanted: str | None) -> tuple[str | None, dict[str, dict[str, str]], list[dict]]:
    store = lib.captions
    versions = store.versions()
    if not versions:
        if wanted:
            raise ExportError(f"--caption-version {wanted}: {lib.root} has no captions (run `recap caption`)")
        return None, {}, []
    known = {v["version"] for v in versions}
    if wanted and wanted not in known:
        raise ExportError(f"no caption version {wanted!r} in {lib.root}; known: {', '.join(sorted(known)) or 'none'}")
    t = store.read(columns=["clip_id", "version", "text", "status"])
    t = t.filter(pc.equal(t.column("status"), "ok"))
    captions: dict[str, dict[str, str]] = {}
    for c, v, text in zip(t.column("clip_id").to_pylist(), t.column("version").to_pylist(), t.column("text").to_pylist()):
        captions.setdefault(c, {})[v] = text
    return wanted or store.default(), captions, versions


def select(root: str | Path, where: str | None = None, query: str | Sequence[str] | None = None, top_k: int = 100,
           caption_version: str | None = None, selection: str | None = None) -> Selection:
    """The clips to export, with the count left after each step. A named `selection` (clips chosen
    by hand, e.g. in the web UI) is taken as chosen: the filter view does not narrow it. Several
    queries keep the clips any of them finds (each query's `top_k` hits)."""
    root = Path(root)
    queries = [query] if isinstance(query, str) else list(query or [])
    try:
        lib = Library(root)
    except LibraryError as e:
        raise ExportError(str(e)) from None
    chosen, captions, versions = _caption_versions(lib, caption_version)
    try:
        t = lib.clip_table(caption_version or "")
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    steps = [("clips in the library", t.num_rows)]
    notes: list[str] = []
    if lib.view_is_stale() and "passed" in t.column_names:
        notes.append("the filter view is older than the newest clips, which count as not passed: "
                     "run `recap filter` first to judge them")
    if selection:
        try:
            chosen_ids = read_selection(root, selection)
        except (FileNotFoundError, ValueError) as e:
            raise ExportError(f"--selection: {e}") from None
        t = t.filter(pc.is_in(t.column("clip_id"), pa.array(chosen_ids, pa.string())))
        steps.append((f"in selection {selection!r} (as chosen: the filter view is not applied)", t.num_rows))
        if len(set(chosen_ids)) > t.num_rows:
            notes.append(f"{len(set(chosen_ids)) - t.num_rows} clips of selection {selection!r} are not in the library")
    elif "passed" in t.column_names:
        t = t.filter(pc.fill_null(t.column("passed"), False))
        steps.append(("pass the filter view (`passed`; clips newer than the view count as not passed)", t.num_rows))
    else:
        notes.append("no filter view (LIB/views/filters.parquet): no quality filter was applied; run `recap filter` first")
    if "duplicate_of" in t.column_names and not selection:
        t = t.filter(pc.is_null(t.column("duplicate_of")))
        steps.append(("not a near-duplicate (`duplicate_of` is null)", t.num_rows))
    if where:
        try:
            expr = compile_for_schema(where, t.schema).arrow()
        except WhereError as e:
            raise ExportError(f"--where: {e}") from None
        t = t.filter(expr)
        steps.append((f"--where {where}", t.num_rows))
    scores: dict[str, float] = {}
    if queries:
        scores = _query_scores(root, queries, top_k, where, view=not selection)
        t = t.filter(pc.is_in(t.column("clip_id"), pa.array(list(scores), pa.string())))
        asked = " ".join(f"--query {q!r}" for q in queries)
        steps.append((f"{asked} --top-k {top_k}" + (" (each; a clip any of them finds)" if len(queries) > 1 else ""),
                      t.num_rows))
    if not captions:
        notes.append("no captions: the library has no caption versions yet, so every sample has caption '' "
                     "and captions {} (run `recap caption`, then export again)")
    used = {v for c in t.column("clip_id").to_pylist() for v in captions.get(c, {})}
    return Selection(t, steps, chosen, captions, [v for v in versions if v["version"] in used], scores, notes)


def _query_scores(root: Path, queries: list[str], top_k: int, where: str | None, view: bool = True) -> dict[str, float]:
    """clip_id -> score of the semantic search hits of every query (a clip several find: its best
    score), the same filters pushed into the search, so top_k counts clips that can be exported
    (the filter view's only when it applies: a named selection is taken as chosen)."""
    parts = [f"({where})"] if where else []
    try:
        with ClipIndex(root, load_index_config()) as index:
            fields = index.fields()
            if view:
                parts += [p for p, name in (("passed", "passed"), ("not duplicate", "duplicate")) if name in fields]
            found = index.search_many(queries, top_k=top_k, where=" and ".join(parts) or None)
    except (SearchError, StoreError, ValueError) as e:
        raise ExportError(f"--query: {e}") from None
    scores: dict[str, float] = {}
    for h in (h for hits in found for h in hits):
        scores[h.clip_id] = max(h.score, scores.get(h.clip_id, -float("inf")))
    return scores



"""The JSON API of `recap serve` (OpenAPI at /docs). Every list is paged and capped per request
(`limit` <= MAX_PAGE; a search pages through at most MAX_HITS hits); a `--where` that does not fit
the library is a 400 whose `detail` is the parser's message, caret included."""

from __future__ import annotations

import mimetypes
import shlex
from typing import Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from pipeline.library.selections import selection_path, write_selection
from pipeline.serve.catalog import MAX_HITS, MAX_PAGE, SORTS, BadRequest, Catalog, Page
from pipeline.serve.filters import FilterSpec, build_where
from pipeline.serve.media import ReportBuilder, thumbnail

MAX_SELECTION = 1_000_000     # clip ids one save may name (a whole large library, not more)
Mode = Literal["auto", "caption", "visual", "hybrid"]

router = APIRouter(prefix="/api")


class ClipPage(BaseModel):
    total: int = Field(description="clips matching (for a search: hits found, at most MAX_HITS)")
    offset: int
    limit: int
    capped: bool = Field(False, description="a search that stopped at MAX_HITS hits: narrow it to see the rest")
    where: str | None = None
    items: list[dict[str, Any]] = Field(description="one summary per clip (see /api/clips/{clip_id} for all of it)")


class ResultSet(BaseModel):
    """A result set as the page shows it: what "select all results" selects."""
    where: str | None = None
    q: str | None = None
    like: str | None = None
    mode: Mode = "auto"
    selection: str | None = None


class SaveSelection(BaseModel):
    name: str = Field(description="letters, digits, '_', '-', '.' (becomes LIB/selections/NAME.parquet)")
    clip_ids: list[str] | None = Field(None, description="the clips chosen one by one")
    results: ResultSet | None = Field(None, description="or every clip of a result set (a search: its first "
                                                        f"{MAX_HITS} hits)")
    append: bool = Field(False, description="add to the selection of that name instead of replacing it")


def catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def _page(page: Page, where: str | None = None) -> ClipPage:
    return ClipPage(total=page.total, offset=page.offset, limit=page.limit, capped=page.capped, where=where,
                    items=page.items)


@router.get("/status", summary="What the library holds, and what to run for what is missing")
def status(request: Request) -> dict[str, Any]:
    out = catalog(request).status()
    out["limits"] = {"max_page": MAX_PAGE, "max_hits": MAX_HITS}
    out["bind"] = request.app.state.bind
    return out


@router.get("/fields", summary="Fields `where` may use, with their kinds and allowed values")
def fields(request: Request) -> dict[str, Any]:
    return catalog(request).fields()


@router.get("/clips", summary="A page of clips matching `where` (all clips without one)", response_model=ClipPage)
def list_clips(request: Request,
               where: str | None = Query(None, description="the --where language, e.g. `duration_s > 3 and not duplicate`"),
               offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=MAX_PAGE),
               sort: str = Query("clip_id", description=f"one of {', '.join(SORTS)}"), desc: bool = False,
               selection: str | None = Query(None, description="only the clips of this saved selection")) -> ClipPage:
    return _page(catalog(request).list_clips(where or None, offset, limit, sort, desc, selection), where)


@router.get("/search", summary="Semantic search (as `recap search`), or clips like one clip", response_model=ClipPage)
def search(request: Request, q: str | None = Query(None, description="text query"),
           like: str | None = Query(None, description="a clip id (or unique prefix): more like this"),
           mode: Mode = "auto", where: str | None = None,
           offset: int = Query(0, ge=0, le=MAX_HITS), limit: int = Query(60, ge=1, le=MAX_PAGE)) -> ClipPage:
    if (not q) == (not like):
        raise HTTPException(400, "give a text query `q` or `like=CLIP_ID` (not both)")
    return _page(catalog(request).search(q or None, like or None, mode, where or None, offset, limit), where)


@router.post("/where", summary="Compile the filter controls to a `where` expression (checked against the library)")
def compile_filters(request: Request, spec: FilterSpec) -> dict[str, str]:
    try:
        where = build_where(spec)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    if where:
        catalog(request).check_where(where)
    return {"where": where}


@router.get("/where/check", summary="Check a `where` expression: 400 with the parser's message when it does not fit")
def check_where(request: Request, where: str) -> dict[str, bool]:
    catalog(request).check_where(where)
    return {"ok": True}


@router.get("/videos", summary="Source videos with their clip counts (paged)")
def videos(request: Request, offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_PAGE)) -> dict[str, Any]:
    snap = catalog(request).snapshot()
    if snap.table is None:
        return {"total": 0, "items": []}
    counts = snap.table.group_by(["video_id", "source"]).aggregate([("clip_id", "count")]).sort_by("video_id")
    part = counts.slice(offset, limit).to_pylist()
    return {"total": counts.num_rows, "offset": offset, "limit": limit,
            "items": [{"video_id": r["video_id"], "source": r["source"], "clips": r["clip_id_count"]} for r in part]}


@router.get("/clips/{clip_id}", summary="Everything about one clip: signals, caption versions, reject reasons, "
                                        "duplicate group, source time range")
def clip(request: Request, clip_id: str) -> dict[str, Any]:
    return catalog(request).clip(clip_id)


@router.head("/clips/{clip_id}/media", include_in_schema=False)
@router.get("/clips/{clip_id}/media", summary="The clip file (HTTP range requests: 206 + Content-Range, so seeking "
                                              "works); 404 for a `reference` clip, whose source is not served",
            response_class=FileResponse)
def media(request: Request, clip_id: str) -> FileResponse:
    path = catalog(request).media_file(clip_id)
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "private, max-age=60"})


@router.head("/clips/{clip_id}/thumb", include_in_schema=False)
@router.get("/clips/{clip_id}/thumb", summary="The clip's middle frame as a JPEG", response_class=FileResponse)
def thumb(request: Request, clip_id: str) -> FileResponse:
    cat = catalog(request)
    row = cat.clip_row(clip_id)
    path = thumbnail(cat.lib, request.app.state.ui_dir / "thumbs", row, {row["video_id"]: row.get("source")})
    if path is None:
        raise HTTPException(404, f"no frame of clip {clip_id} can be read (no clip file, no local source video)")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/selections", summary="Saved selections (LIB/selections/) with their sizes")
def selections(request: Request) -> list[dict[str, Any]]:
    return catalog(request).selections()


@router.get("/selections/{name}", summary="A page of one selection's clip ids")
def selection(request: Request, name: str, offset: int = Query(0, ge=0),
              limit: int = Query(MAX_PAGE, ge=1, le=MAX_PAGE)) -> dict[str, Any]:
    ids = catalog(request).selection_ids(name)
    return {"name": name, "total": len(ids), "offset": offset, "limit": limit, "clip_ids": ids[offset:offset + limit]}


@router.post("/selections", summary="Save clips (chosen one by one, or a whole result set) as a named selection; "
                                    "`recap export LIB --selection NAME` exports exactly those")
def save_selection(request: Request, body: SaveSelection = Body(...)) -> dict[str, Any]:
    cat = catalog(request)
    try:
        selection_path(cat.root, body.name)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    if (body.clip_ids is None) == (body.results is None):
        raise HTTPException(400, "give `clip_ids` or `results` (one of them)")
    if body.clip_ids is not None:
        if len(body.clip_ids) > MAX_SELECTION:
            raise HTTPException(400, f"at most {MAX_SELECTION} clip ids per request")
        ids = body.clip_ids
        unknown = cat.unknown_ids(ids)
        if unknown:
            raise BadRequest(f"{len(unknown)} clip ids are not in this library (first: {unknown[0]!r})")
    else:
        r = body.results
        ids = cat.result_ids(r.where or None, r.q or None, r.like or None, r.mode, r.selection or None)
    if not ids and not body.append:
        raise HTTPException(400, "nothing to save: the selection would be empty")
    before, count = write_selection(cat.root, body.name, ids, append=body.append)
    return {"name": body.name, "count": count, "added": count - before,
            "export": f"recap export {shlex.quote(str(cat.root))} --selection {body.name} --out SHARDS"}


@router.get("/report", summary="State of the library report the Stats page shows")
def report(request: Request) -> dict[str, Any]:
    return request.app.state.report.info()


@router.post("/report", summary="(Re)build the library report (`recap report`) in the background")
def build(request: Request) -> dict[str, Any]:
    builder: ReportBuilder = request.app.state.report
    builder.start()
    return builder.info()


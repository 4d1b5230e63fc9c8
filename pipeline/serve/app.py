"""The `recap serve` app: the JSON API under /api, the pages (/ and /stats, plain files from
`static/`), the report folder under /report, and the errors every route shares."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from index.api import SearchError
from index.config import IndexConfig
from index.embedders import EmbedderError
from index.store import StoreError
from index.where import WhereError
from pipeline.library import CannotWrite, DamagedFile, LibraryError
from pipeline.serve.api import MAX_SELECTION, router
from pipeline.serve.catalog import BadRequest, Catalog, NotFound
from pipeline.serve.media import ReportBuilder, ui_dir

STATIC = Path(str(files("pipeline.serve") / "static"))

# exception -> HTTP status; the body is always {"detail": message}
ERRORS: list[tuple[type[Exception], int, str]] = [
    (WhereError, 400, "where: "),
    (BadRequest, 400, ""),
    (NotFound, 404, ""),
    (SearchError, 400, "search: "),
    (LibraryError, 403, ""),            # a clip path that leads out of the library
    (DamagedFile, 500, "library: "),    # a library file that does not read: which one, not a bare 500
    (CannotWrite, 507, "library: "),    # a selection that cannot be saved (no space, read-only)
    (StoreError, 503, "index: "),
    (EmbedderError, 503, "embedder: "),
]


def _handler(status: int, prefix: str):
    async def handle(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"{prefix}{e}"}, status_code=status)
    return handle


# Content-Security-Policy, a second line behind the escaping (the UI builds pages with DOM calls and
# textContent; the report escapes stored text): the UI runs only its own scripts and styles and talks
# only to this server; the report (static HTML, inline styles, images) runs no script at all.
# /docs (FastAPI's Swagger page, which loads its code from a CDN) gets none.
CSP_UI = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
          "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; object-src 'none'; base-uri 'none'; "
          "form-action 'self'")
CSP_REPORT = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'self'; "
              "base-uri 'none'; form-action 'none'")
NO_CSP = ("/docs", "/redoc", "/openapi.json")


def content_policy(path: str) -> bytes | None:
    """The Content-Security-Policy for a response to `path`, or None."""
    if path.startswith(NO_CSP):
        return None
    return (CSP_REPORT if path.startswith("/report") else CSP_UI).encode()


class Headers:
    """Headers on every response: no MIME sniffing, no framing by other sites, a content policy."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        policy = content_policy(scope.get("path", "")) if scope["type"] == "http" else None

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(b"x-content-type-options", b"nosniff"),
                                       (b"x-frame-options", b"SAMEORIGIN")]
                if policy:
                    message["headers"].append((b"content-security-policy", policy))
            await send(message)
        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


class SameOrigin:
    """Refuse a request that changes something (POST: build the report, save a selection) sent by a
    page of another site (CSRF): browsers name the page's origin in `Origin` on such requests, and a
    form or `fetch` elsewhere could otherwise reach a loopback server. curl and scripts send no
    `Origin` and are not affected; this server's own pages send their own origin."""

    SAFE = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in self.SAFE:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and (origin == "null" or urlsplit(origin).netloc != host):
                refused = JSONResponse({"detail": f"cross-site request refused: a page of {origin} cannot change "
                                                  "this library (use the page this server serves, or curl)"},
                                       status_code=403)
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Bytes one request body may hold. The largest body the API takes is a selection save of
# MAX_SELECTION clip ids (20 hex digits each: ~24 bytes of JSON apiece, ~24 MB in all); anything
# larger is refused before it is read, so no client can make the server hold an unbounded body.
MAX_BODY = 32 * 2**20


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413 and a JSON `detail`: a declared
    Content-Length over it before a byte of the body is read; a chunked body (no length) as soon
    as what arrived passes it (it is read first, so the app sees it whole or not at all)."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(f"{int(declared)} bytes", scope, receive, send)
            return
        if b"transfer-encoding" in headers:
            replay = await self._read_chunked(receive)
            if replay is None:
                await self._refuse(f"over {self.limit} bytes", scope, receive, send)
                return
            receive = replay
        await self.app(scope, receive, send)

    async def _read_chunked(self, receive):
        """A `receive` that replays the whole body, or None once it passes the limit."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return None
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()
        return replay

    async def _refuse(self, size: str, scope, receive, send) -> None:
        # Connection: close, as the unread body must not be taken for the next request
        refused = JSONResponse({"detail": f"request body too large: {size}, this server takes at most {self.limit} "
                                          f"bytes (at most {MAX_SELECTION} clip ids per selection save; save a "
                                          "larger selection in parts with `append`)"},
                               status_code=413, headers={"Connection": "close"})
        await refused(scope, receive, send)


def create_app(lib_root: str | Path, config: IndexConfig, milvus_uri: str | None = None, token: str | None = None,
               allowed_hosts: list[str] | None = None, bind: str = "", max_body: int = MAX_BODY) -> FastAPI:
    """The app for one library (LibraryError when the folder is not one). `allowed_hosts` limits the
    Host header (a loopback server refuses names it does not answer to: DNS rebinding); `max_body`
    the bytes of a request body (413 past it)."""
    cat = Catalog(lib_root, config, milvus_uri=milvus_uri, token=token)
    folder = ui_dir(Path(lib_root))
    (folder / "report").mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        cat.close()

    app = FastAPI(title="recap serve", version="1",
                  description="Browse, search, watch and select the clips of one recap library. Every list is "
                              "paged with a hard cap per request; `where` takes recap's one filter language.",
                  lifespan=lifespan)
    app.state.catalog = cat
    app.state.ui_dir = folder
    app.state.report = ReportBuilder(Path(lib_root), folder / "report")
    app.state.bind = bind
    for exc, status, prefix in ERRORS:
        app.add_exception_handler(exc, _handler(status, prefix))
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/report", StaticFiles(directory=folder / "report", html=True, check_dir=False), name="report")

    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/stats", include_in_schema=False)
    def stats_page() -> FileResponse:
        return FileResponse(STATIC / "stats.html", headers={"Cache-Control": "no-cache"})

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])
    app.add_middleware(SameOrigin)
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(Headers)
    return app

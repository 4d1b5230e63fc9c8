"""`recap serve LIB`: a web UI and JSON API to browse, search, watch and select a library's clips.

    catalog.py   the clip table the UI reads (committed parts only), cached until the library changes;
                 paging, sorting, `--where`, clip details, selections
    filters.py   the UI's filter controls compiled to the shared `--where` language
    media.py     what may be served: clip files through `Library.media_path`, thumbnails, the UI folder
    api.py       the JSON API (OpenAPI at /docs)
    app.py       the FastAPI app: API, pages, static files, the report folder
    static/      the pages: plain HTML, JS and CSS, no build step

Every list the API returns is paged with a hard cap per request (`catalog.MAX_PAGE`, `MAX_HITS`).
"""

from pipeline.serve.app import create_app

__all__ = ["create_app"]

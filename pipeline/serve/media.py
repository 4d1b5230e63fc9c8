"""What the server writes and serves besides the API: its own folder (`LIB/.ui/`: thumbnails and the
report; a temporary folder when the library is read-only), clip thumbnails, and the report build.

Clip files are only ever found through `Catalog.media_file` (`Library.media_path`: nothing outside
the library). A `reference` clip's source video lies outside the library and is never served; its
thumbnail is one decoded frame written as a JPEG, so no byte of any other file reaches a client.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.filters.report import build_report, clip_thumbnail
from pipeline.library import Library
from pipeline.library.layout import UI_DIR

THUMB_WIDTH = 320
DECODES = threading.BoundedSemaphore(2)   # thumbnails decoded at once: the rest of the server stays responsive


def ui_dir(lib_root: Path) -> Path:
    """`LIB/.ui` (with `report/` and `thumbs/`), or a fresh temporary folder when the library cannot
    be written, or when one of those is a symlink or not a folder: /report serves that folder whole
    and the report is built into it, so a library that came with `.ui/report -> /etc` would serve
    /etc and write into it."""
    folder = lib_root / UI_DIR
    try:
        for own in (folder, folder / "report", folder / "thumbs"):
            own.mkdir(exist_ok=True)
            if own.is_symlink() or not own.is_dir():
                raise NotADirectoryError(own)
        probe = folder / f".probe-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
        return folder
    except OSError:
        return Path(tempfile.mkdtemp(prefix="recap-ui-"))


def thumbnail(lib: Library, folder: Path, clip: dict[str, Any], uris: dict[str, str]) -> Path | None:
    """The clip's middle frame as a JPEG, made once and kept in `folder` (None when no frame can be
    read: no file, and no local source video)."""
    path = folder / f"{clip['clip_id']}.jpg"        # the library checked the id: a plain file name
    if _made(path):
        return path
    with DECODES:
        if _made(path):
            return path
        frame = clip_thumbnail(lib, clip, uris)
        if frame is None:
            return None
        img = Image.fromarray(frame)
        if img.width > THUMB_WIDTH:
            img = img.resize((THUMB_WIDTH, max(2, round(img.height * THUMB_WIDTH / img.width))))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.{threading.get_ident()}.tmp"
        img.save(tmp, format="JPEG", quality=82)
        tmp.replace(path)
    return path


def _made(thumb: Path) -> bool:
    """A thumbnail this server wrote: a plain file (a symlink planted in a copied library would be
    served as a JPEG whatever it points to; it is replaced by the frame instead)."""
    return thumb.is_file() and not thumb.is_symlink()


class ReportBuilder:
    """`build_report` into the server's folder, in a background thread (seconds to minutes)."""

    def __init__(self, lib_root: Path, out: Path):
        self.lib_root = lib_root
        self.out = out
        self.state = "ready" if (out / "index.html").is_file() else "none"
        self.message = ""
        self.built_at: float | None = (out / "index.html").stat().st_mtime if self.state == "ready" else None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self.state, self.message = "building", ""
            self._thread = threading.Thread(target=self._build, name="recap-report", daemon=True)
            self._thread.start()

    def _build(self) -> None:
        try:
            build_report(self.lib_root, self.out)
            self.state, self.built_at = "ready", time.time()
        except Exception as e:   # shown on the Stats page: the server goes on
            self.state, self.message = "error", f"{type(e).__name__}: {e}"

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def info(self) -> dict[str, Any]:
        return {"state": self.state, "message": self.message, "built_at": self.built_at,
                "url": "/report/index.html" if self.state == "ready" or self.built_at else None}

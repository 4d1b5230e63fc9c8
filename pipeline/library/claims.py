"""Claims of one ingest run: the same content under two names is ingested once.

Content already in the library (or taken out of it with `recap remove`) is known before the run
starts; within the run, the worker that hashes a video first claims it by creating
`LIB/.claims/<run>/<video_id>` exclusively: a hard link of a file already holding its uri, which
fails when the name exists (atomic on local and network file systems alike, and every worker of a
cluster sees the library). The uri lets a retried task of the same source find its own claim. The
run removes its folder when it ends; a crashed run's folder is removed by the next writer.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

CLAIMS = ".claims"
KNOWN = "known.npy"
REMOVED = "removed.npy"


class RunClaims:
    """Picklable: workers receive it and call `claim`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._ids: dict[str, np.ndarray] = {}      # KNOWN and REMOVED, loaded once per worker process

    @classmethod
    def start(cls, lib_root: Path, known_ids: set[str], removed_ids: set[str] = frozenset()) -> "RunClaims":
        folder = Path(lib_root) / CLAIMS / f"{os.getpid()}-{time.time_ns()}"
        folder.mkdir(parents=True)
        np.save(folder / KNOWN, np.array(sorted(known_ids), dtype="S32"))
        np.save(folder / REMOVED, np.array(sorted(removed_ids), dtype="S32"))
        return cls(folder)

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "_ids": {}}

    def _is_in(self, name: str, video_id: str) -> bool:
        if name not in self._ids:
            self._ids[name] = np.load(self.folder / name)
        ids, key = self._ids[name], video_id.encode()
        i = int(np.searchsorted(ids, key))
        return i < len(ids) and ids[i] == key

    def claim(self, video_id: str, uri: str) -> str | None:
        """None when this source is the one to ingest the content: the first claim (or a retry of
        that same source). Otherwise the source's outcome: `removed` (the content was taken out
        with `recap remove`) or `duplicate` (already in the library, or another source of this
        run claimed it first)."""
        if self._is_in(REMOVED, video_id):
            return "removed"
        if self._is_in(KNOWN, video_id):
            return "duplicate"
        path = self.folder / video_id
        mine = self.folder / f".{video_id}.{os.getpid()}.{time.time_ns()}"
        mine.write_bytes(os.fsencode(uri))    # a local file's name may not be UTF-8: its bytes as they are
        try:
            os.link(mine, path)
            return None
        except FileExistsError:
            return None if path.read_bytes() == os.fsencode(uri) else "duplicate"
        finally:
            mine.unlink()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

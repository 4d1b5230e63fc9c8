"""Claims of one ingest run: the same content under two names is ingested once.

Content already in the library is known before the run starts; within the run, the worker that
hashes a video first claims it by creating `LIB/.claims/<run>/<video_id>` exclusively: a hard
link of a file already holding its uri, which fails when the name exists (atomic on local and
network file systems alike, and every worker of a cluster sees the library). The uri lets a
retried task of the same source find its own claim. The
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


class RunClaims:
    """Picklable: workers receive it and call `claim`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._known: np.ndarray | None = None      # loaded once per worker process

    @classmethod
    def start(cls, lib_root: Path, known_ids: set[str]) -> "RunClaims":
        folder = Path(lib_root) / CLAIMS / f"{os.getpid()}-{time.time_ns()}"
        folder.mkdir(parents=True)
        np.save(folder / KNOWN, np.array(sorted(known_ids), dtype="S32"))
        return cls(folder)

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "_known": None}

    def _is_known(self, video_id: str) -> bool:
        if self._known is None:
            self._known = np.load(self.folder / KNOWN)
        key = video_id.encode()
        i = int(np.searchsorted(self._known, key))
        return i < len(self._known) and self._known[i] == key

    def claim(self, video_id: str, uri: str) -> bool:
        """False when the content is already in the library or another source of this run
        claimed it first; True for the first claim (and for a retry of that same source)."""
        if self._is_known(video_id):
            return False
        path = self.folder / video_id
        mine = self.folder / f".{video_id}.{os.getpid()}.{time.time_ns()}"
        mine.write_bytes(os.fsencode(uri))    # a local file's name may not be UTF-8: its bytes as they are
        try:
            os.link(mine, path)
            return True
        except FileExistsError:
            return path.read_bytes() == os.fsencode(uri)
        finally:
            mine.unlink()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

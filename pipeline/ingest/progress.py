"""How far each source in flight has got, so the progress bar moves during a long video.

A source's work is reported as a share in [0, 1): the decode pass by the presentation time it has
reached over the video's duration, then the clip files by how many are written. The sandbox child
reports it (`DecodeProgress`, `clip_share`), its parent `SourceRunner` hands it on, and on a local
run the driver's bar adds the shares of the sources in flight (`IN_FLIGHT`) to the finished ones:
a two-hour film reads 0.4/1 with an ETA instead of 0/1 until it ends. On a Ray cluster the runners
live in the workers' processes, so the bar counts finished sources only.

Imports nothing heavy: Ray workers load it with the ingest stage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# Shares of a source's work: the decode pass, then the clip files. Stream-copied clips cost little
# beside the decode; encoded ones about as much again.
DECODE_SHARE = {"remux": 0.9, "encode": 0.5, "reference": 1.0}
REPORT_EVERY_FRAMES = 30       # about once a second of 30 fps video: a pipe message costs ~10 us
MAX_SHARE = 0.99               # a source in flight never reads as finished


class DecodeProgress:
    """A frame analyzer that reports the decode pass's share of the source's work every
    `REPORT_EVERY_FRAMES` frames, from the frames' presentation times over `duration_s` (nothing
    when the container does not say how long the video is)."""

    name = "progress"

    def __init__(self, report: Callable[[float], None], duration_s: float, clip_mode: str):
        self.report = report
        self.duration_s = duration_s
        self.share = DECODE_SHARE.get(clip_mode, 1.0)
        self._first_s: float | None = None

    def update(self, frame) -> None:
        if self._first_s is None:
            self._first_s = frame.pts_s
        if frame.index % REPORT_EVERY_FRAMES == 0 and self.duration_s > 0:
            done = min(1.0, max(0.0, (frame.pts_s - self._first_s) / self.duration_s))
            self.report(self.share * done)


def clip_share(clip_mode: str, written: int, total: int) -> float:
    """The source's share of work done once `written` of its `total` clip files are."""
    decode = DECODE_SHARE.get(clip_mode, 1.0)
    return decode + (1.0 - decode) * (written / total if total else 1.0)


class InFlight:
    """Source URI -> share of its work done, for the sources this process is ingesting now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shares: dict[str, float] = {}

    def set(self, uri: str, share: float) -> None:
        with self._lock:
            self._shares[uri] = min(max(share, 0.0), MAX_SHARE)

    def finish(self, uri: str) -> None:
        with self._lock:
            self._shares.pop(uri, None)

    def total(self) -> float:
        """The summed shares: how many sources' worth of work is done but not finished."""
        with self._lock:
            return sum(self._shares.values())


IN_FLIGHT = InFlight()

"""What ingesting one source gives the driver: its outcome and the rows it adds to each table.

Kept apart from worker.py (which imports the decoders) so that the process that only drives the
work (a Ray worker handing sources to its sandbox child) stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.library.layout import utcnow

NO_SPACE = "no_space"      # errors.error_type of a source whose files (staged copy, clips) the disk could not hold


class NoSpace(Exception):
    """The disk is full (or over a quota, or a file size limit): not the source's fault, and every
    source after it would fail the same way, so the job stops (pipeline.ingest.job)."""


@dataclass
class SourceResult:
    uri: str
    outcome: str                                   # ingested | duplicate | removed | error | failed
    video_id: str | None = None
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    video_seconds: float = 0.0

    @property
    def n_clips(self) -> int:
        return len(self.rows.get("clips", []))

    @property
    def no_space(self) -> str | None:
        """The error message when the library's disk could not hold this source's clip files."""
        return next((e["message"] for e in self.rows.get("errors", []) if e["error_type"] == NO_SPACE), None)


def source_row(uri: str, video_id: str | None, outcome: str) -> dict[str, Any]:
    return {"uri": uri, "video_id": video_id, "outcome": outcome, "at": utcnow()}


def error_result(uri: str, video_id: str | None, stage: str, kind: str, message: str,
                 outcome: str = "error") -> SourceResult:
    """`error`: the input is bad (not retried); `failed`: something unexpected (retried on rerun)."""
    error = {"source": uri, "video_id": video_id, "stage": stage, "error_type": kind,
             "message": message, "at": utcnow()}
    return SourceResult(uri, outcome, video_id, {"errors": [error], "sources": [source_row(uri, video_id, outcome)]})

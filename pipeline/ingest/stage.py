"""`IngestStage`: the stage the ingest job runs on the stage runner, one task per source.

Its own small module because Ray workers unpickle it: importing it loads no decoder, so a worker
that only hands sources to its sandbox child (which decodes) stays small.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.ingest.config import IngestConfig
from pipeline.ingest.progress import IN_FLIGHT
from pipeline.ingest.sandbox import shared_runner
from pipeline.library.claims import RunClaims
from pipeline.stages.base import Resources, Row, Stage
from pipeline.stages.runner import worker_node


class IngestStage(Stage):
    """One source in, its `SourceResult` out: fetch, hash, claim, probe, the decode pass (shots and
    signals), clip files. Signals are frame analyzers inside the decode pass, not a stage of their
    own: a separate stage would have to decode again or ship every frame between processes. The
    work runs in this worker's sandbox child, within the source's budget (see sandbox.py)."""

    name = "ingest"
    reads = ("uri",)
    adds = ("result",)
    max_retries = 1      # a decoder crash takes the sandbox child only; a worker that dies anyway is tried twice
    concurrent = True    # the work is in the calling thread's own sandbox child: a local run ingests several at once

    def __init__(self, cfg: IngestConfig, lib_root: Path, claims: RunClaims | None, resources: Resources):
        self.cfg = cfg
        self.lib_root = str(lib_root)
        self.claims = claims
        self.resources = resources

    def folders(self) -> tuple[str, ...]:
        return (self.lib_root,)

    def process(self, batch: list[Row]) -> list[Row]:
        out = []
        for row in batch:
            uri = row["uri"]
            try:
                result = shared_runner().run(uri, self.cfg, self.lib_root,
                                             claim=self.claims.claim if self.claims else None,
                                             on_progress=lambda share, uri=uri: IN_FLIGHT.set(uri, share))
            finally:
                IN_FLIGHT.finish(uri)
            for video in result.rows.get("videos", []):
                video["worker_node"] = worker_node()
            out.append({"uri": uri, "result": result})
        return out

"""The ingest bar moves during a long video: the sandbox child reports the share of a source's work
done (decode pass by presentation time, then clip files), and the bar adds the shares in flight."""

from __future__ import annotations

import io
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.ingest.config import load_ingest_config
from pipeline.ingest.job import IngestSummary, SourcesBar, count_lost
from pipeline.ingest.progress import IN_FLIGHT, MAX_SHARE, REPORT_EVERY_FRAMES, clip_share
from pipeline.ingest.result import SourceResult
from pipeline.ingest.sandbox import SourceRunner
from tests.avfiles import write_video


def test_the_child_reports_its_share_of_the_work_as_it_goes(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", n_frames=300, fps=30, gop=30)
    shares: list[float] = []
    runner = SourceRunner()
    try:
        result = runner.run(str(video), load_ingest_config(), tmp_path / "lib", on_progress=shares.append)
    finally:
        runner.close()
    assert result.outcome == "ingested" and result.n_clips >= 1
    decode_reports = 300 // REPORT_EVERY_FRAMES
    assert len(shares) >= decode_reports, shares
    assert shares == sorted(shares), "the share only grows"
    assert shares[0] == 0.0
    # the decode pass reaches its share of the work at the last frames, the clip files the rest
    decode_share = clip_share("remux", 0, 1)
    assert abs(shares[decode_reports - 1] - decode_share * 270 / 300) < 0.02, shares
    assert shares[-1] == 1.0


def test_clip_share_splits_the_work_by_clip_mode() -> None:
    assert clip_share("remux", 1, 2) > clip_share("encode", 1, 2)    # stream copies cost less than encodes
    assert clip_share("encode", 0, 4) == 0.5 and clip_share("encode", 2, 4) == 0.75
    assert clip_share("remux", 3, 3) == clip_share("encode", 3, 3) == 1.0
    assert clip_share("reference", 0, 0) == 1.0


def test_the_bar_counts_the_sources_in_flight_by_their_share() -> None:
    out = io.StringIO()
    bar = SourcesBar(tqdm(total=3, file=out, unit="video"), every_s=0.01)
    try:
        IN_FLIGHT.set("a.mp4", 0.42)
        IN_FLIGHT.set("b.mp4", 5.0)          # never more than MAX_SHARE: in flight is not finished
        assert bar.position() == round(0.42 + MAX_SHARE, 1)
        deadline = time.monotonic() + 10
        while "1.4/3" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "1.4/3" in out.getvalue()    # redrawn by its own thread, with no source finished
        IN_FLIGHT.finish("b.mp4")
        bar.finished(clips=4)
        assert bar.position() == 1.4
        IN_FLIGHT.finish("a.mp4")
        assert bar.position() == 1             # whole when nothing is in flight
    finally:
        IN_FLIGHT.finish("a.mp4")
        IN_FLIGHT.finish("b.mp4")
        bar.close()
    assert out.getvalue().rstrip().endswith("clips=4]") and " 1/3 " in out.getvalue().splitlines()[-1]


def test_sources_lost_with_their_ray_worker_are_counted_on_the_bar_before_it_closes() -> None:
    """Ray lost two of three videos (their workers killed): the bar ended at 1/3 with failed=0 while
    the summary said 2 failed, because they were counted only after it closed."""
    out = io.StringIO()
    summary = IngestSummary(sources=3)
    bar = SourcesBar(tqdm(total=3, file=out, unit="video"), every_s=60)
    try:
        done = SourceResult("a.mp4", "ingested", "v-a", {"clips": [{"clip_id": "c1"}], "sources": []}, 2.0)
        summary.count(done)
        bar.finished(clips=summary.clips, failed=summary.failed)
        lost = count_lost(["a.mp4", "b.mp4", "c.mp4"], {"a.mp4"}, summary, bar, time.perf_counter())
    finally:
        bar.close()
    assert [r.uri for r in lost] == ["b.mp4", "c.mp4"]
    assert all(r.outcome == "failed" and r.rows["sources"][0]["outcome"] == "failed" for r in lost)
    assert summary.failed == 2 and summary.errors_by_type == {"worker_crashed": 2} and summary.ingested == 1
    last = out.getvalue().replace("\r", "\n").rstrip().splitlines()[-1]
    assert " 3/3 " in last and "failed=2" in last and "clips=1" in last, last

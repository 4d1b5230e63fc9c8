"""`recap report`: every plot and a thumbnail strip per rejection reason, from a small library."""

from __future__ import annotations

import argparse

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cli import report as report_cli
from pipeline.filters.config import load_filter_config
from pipeline.filters.evaluate import run_filters
from pipeline.filters.report import HISTOGRAMS
from pipeline.ingest.result import error_result, source_row
from pipeline.library import Library
from tests.test_filters import write_library


def write_media(lib, n_frames: int = 12) -> int:
    """A tiny H.264 file at each clip's `path` (a flat colour per clip, so thumbnails differ)."""
    written = 0
    for part in sorted((lib / "clips").glob("part-*.parquet")):
        t = pq.read_table(part, columns=["path", "start_frame", "end_frame"])
        for k, rel in enumerate(t.column("path").to_pylist()):
            path = lib / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with av.open(str(path), "w") as out:
                s = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
                s.width, s.height, s.pix_fmt = 64, 36, "yuv420p"
                colour = np.array([(37 * k) % 255, (91 * k) % 255, (53 * k) % 255], np.uint8)
                for _ in range(n_frames):
                    out.mux(s.encode(av.VideoFrame.from_ndarray(np.tile(colour, (36, 64, 1)), format="rgb24")))
                out.mux(s.encode())
            written += 1
    # the clips start at frame 0 of their files
    for part in sorted((lib / "clips").glob("part-*.parquet")):
        t = pq.read_table(part)
        t = t.set_column(t.schema.get_field_index("end_frame"), "end_frame", pa.array([n_frames] * t.num_rows, pa.int64()))
        t = t.set_column(t.schema.get_field_index("start_frame"), "start_frame", pa.array([0] * t.num_rows, pa.int64()))
        pq.write_table(t, part)
    return written


def report_page(lib) -> str:
    """`recap report LIB` run, and the page it wrote."""
    p = argparse.ArgumentParser()
    report_cli.add_arguments(p)
    assert report_cli.run(p.parse_args([str(lib)])) == 0
    return (lib / "report" / "index.html").read_text()


def test_report_has_every_plot_and_thumbnails(tmp_path):
    lib = write_library(tmp_path / "lib", n=80, parts=2)
    assert write_media(lib) == 80
    view, _ = run_filters(lib, load_filter_config())
    reasons = {r for rs in view.column("reject_reasons").to_pylist() for r in rs}
    assert {"motion.min", "camera.reject", "duplicate"} <= reasons

    out = tmp_path / "report"
    p = argparse.ArgumentParser()
    report_cli.add_arguments(p)
    assert report_cli.run(p.parse_args([str(lib), "--out", str(out)])) == 0
    page = (out / "index.html").read_text()
    for png in ["pass_rate.png", "duration.png", "camera_motion.png", *(f"hist_{c}.png" for c in HISTOGRAMS)]:
        assert (out / png).stat().st_size > 5000, png
        assert f'src="{png}"' in page
    for reason in reasons:
        assert f"<h3>{reason} " in page
    thumbs = list((out / "thumbs").glob("*.jpg"))
    assert len(thumbs) >= len(reasons)
    assert "no media" not in page
    assert "LIB/views/filters.parquet" in page
    # whole clip ids (what --like takes), thumbnails that open the clip, a duplicate beside the clip kept instead
    dup = next(r for r in view.to_pylist() if r["duplicate_of"])
    assert f"<code>{dup['clip_id']}</code>" in page
    assert f"<code>{dup['duplicate_of']}</code>kept instead" in page
    assert '<a href="../lib/media/clip' in page


def test_report_without_view_or_aesthetic_says_so(tmp_path):
    lib = write_library(tmp_path / "lib", n=40, parts=1)
    part = next((lib / "clips").glob("part-*.parquet"))
    t = pq.read_table(part)
    t = t.set_column(t.schema.get_field_index("aesthetic_score"), "aesthetic_score", pa.nulls(t.num_rows, pa.float32()))
    pq.write_table(t, part)
    page = report_page(lib)
    assert "no aesthetic model configured" in page
    assert "computed now with configs/filters.yaml" in page
    assert "no media" in page  # no clip files in this library: the strip says so instead of failing
    assert not (lib / "views").exists()  # the report never writes the view
    assert "<h2>Failed sources</h2><p>None.</p>" in page


def test_report_lists_the_sources_failing_now(tmp_path):
    lib = write_library(tmp_path / "lib", n=40, parts=1)
    bad, fixed = "/in/<b>odd</b>.mp4", "/in/late.mp4"
    with Library(lib, write=True) as writer:
        for uri in (bad, fixed):
            writer.commit(error_result(uri, None, "fetch", "not_found", f"{uri}: no such file").rows)
        writer.commit({"sources": [source_row(fixed, "v" * 32, "ingested")]})      # a later run ingested it
    page = report_page(lib)
    assert "<h2>Failed sources <small>(1: not_found=1)</small></h2>" in page
    assert "<td>/in/&lt;b&gt;odd&lt;/b&gt;.mp4</td><td>error</td><td>not_found</td><td>fetch</td>" in page
    assert "late.mp4" not in page

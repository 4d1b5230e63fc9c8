"""`recap ingest` end to end through the real CLI, real Ray and real PyAV: ground truth on the
sample corpus, every kind of bad input, duplicates by content, URLs and manifests, DuckDB."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.library import Library
from tests.conftest import recap

BAD_KINDS = {
    "empty.mp4": "empty_file",
    "truncated.mp4": "truncated",
    "random.mp4": "not_a_video",
    "audio_only.mp4": "no_video_stream",
}


def make_bad_inputs(folder: Path, good: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.mp4").write_bytes(b"")
    data = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) * 3 // 10])
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    with av.open(str(folder / "audio_only.mp4"), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        samples = (np.sin(np.arange(44100) / 10.0) * 0.3).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("www")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def ingested(sample_corpus: Path, http_root, tmp_path_factory: pytest.TempPathFactory):
    """One CLI run over the corpus plus bad inputs, a renamed copy, a cut-off WebM (damaged but
    decodable), a URL, a dead URL, a manifest."""
    work = tmp_path_factory.mktemp("ingest")
    names = sorted(p.name for p in sample_corpus.iterdir() if p.suffix in {".mp4", ".webm", ".mkv"})
    make_bad_inputs(work / "bad", sample_corpus / names[0])
    shutil.copy(sample_corpus / names[0], work / "same_bytes_other_name.mp4")
    webm = (sample_corpus / next(n for n in names if n.endswith(".webm"))).read_bytes()
    (work / "cut_off.webm").write_bytes(webm[: len(webm) // 2])
    www, base = http_root
    shutil.copy(sample_corpus / names[1], www / "remote.webm")
    manifest = work / "manifest.csv"
    manifest.write_text("uri,note\n" + f"{base}/remote.webm,served over http\n"
                        + f"{base}/missing.mp4,404\n" + "http://127.0.0.1:9/unreachable.mp4,nobody listens\n")
    lib = work / "lib"
    proc = recap("ingest", str(sample_corpus), str(work / "bad"), str(work / "same_bytes_other_name.mp4"),
                 str(work / "cut_off.webm"), str(manifest), "--out", str(lib), "--no-progress", check=False)
    return {"lib": Library(lib), "proc": proc, "names": names, "corpus": sample_corpus, "base": base}


def test_exit_status_and_summary_report_failures(ingested) -> None:
    proc = ingested["proc"]
    assert proc.returncode == 3, proc.stderr
    assert "failed" in proc.stdout and "ingested" in proc.stdout
    assert "source(s) failed" in proc.stderr


def test_every_bad_input_is_an_error_row_with_a_reason(ingested) -> None:
    errors = ingested["lib"].read("errors").to_pylist()
    by_name = {Path(e["source"]).name: e for e in errors}
    for name, kind in BAD_KINDS.items():
        assert name in by_name, f"{name} not in errors: {sorted(by_name)}"
        assert by_name[name]["error_type"] == kind, by_name[name]
        assert len(by_name[name]["message"]) > 10
    assert by_name["missing.mp4"]["error_type"] == "not_found"
    assert by_name["unreachable.mp4"]["error_type"] == "unreachable"


def test_good_videos_all_ingested_once(ingested) -> None:
    lib = ingested["lib"]
    videos = lib.read("videos").to_pylist()
    # the renamed copy and the URL copy are duplicates; the cut-off copy is different bytes
    assert len(videos) == len(ingested["names"]) + 1
    assert len({v["video_id"] for v in videos}) == len(videos)
    outcomes = lib.handled_sources()
    assert outcomes[str(Path(ingested["lib"].root).parent / "same_bytes_other_name.mp4")] == "duplicate"
    assert outcomes[f"{ingested['base']}/remote.webm"] == "duplicate"


def test_damaged_video_is_ingested_with_a_warning(ingested) -> None:
    warned = {Path(v["uri"]).name: v["decode_warnings"] for v in ingested["lib"].read("videos").to_pylist()
              if v["decode_warnings"]}
    assert list(warned) == ["cut_off.webm"] and "the container declares (cut off?)" in warned["cut_off.webm"]
    info = recap("info", str(ingested["lib"].root)).stdout
    assert "damaged      1" in info and "cut_off.webm" in info


def _clips_by_name(lib: Library) -> dict[str, list[dict]]:
    uri_of = {v["video_id"]: Path(v["uri"]).name for v in lib.read("videos").to_pylist()}
    out: dict[str, list[dict]] = {}
    for c in lib.read("clips").to_pylist():
        out.setdefault(uri_of[c["video_id"]], []).append(c)
    return out


def test_clips_never_span_a_transition(ingested) -> None:
    from pipeline.samples.corpus import load_truth

    truth = load_truth(ingested["corpus"])["videos"]
    clips = _clips_by_name(ingested["lib"])
    for name, entry in truth.items():
        assert clips.get(name), f"no clips for {name}"
        for c in clips[name]:
            for t in entry["transitions"]:
                if t["kind"] == "cut":
                    assert not (c["start_frame"] < t["start_frame"] < c["end_frame"]), (name, c, t)
                else:
                    assert c["end_frame"] <= t["start_frame"] or c["start_frame"] >= t["end_frame"], (name, c, t)


def test_detected_cuts_match_truth(ingested) -> None:
    from pipeline.samples.corpus import load_truth

    truth = load_truth(ingested["corpus"])["videos"]
    lib = ingested["lib"]
    name_of = {v["video_id"]: Path(v["uri"]).name for v in lib.read("videos").to_pylist()}
    found: dict[str, list[int]] = {}
    for s in lib.read("shots").to_pylist():
        if s["start_transition"] == "cut":
            found.setdefault(name_of[s["video_id"]], []).append(s["start_frame"])
    for name, entry in truth.items():
        expected = [t["start_frame"] for t in entry["transitions"] if t["kind"] == "cut"]
        got = sorted(found.get(name, []))
        assert len(got) == len(expected), (name, got, expected)
        for e, g in zip(expected, got):
            assert abs(e - g) <= 2, (name, got, expected)


def test_clip_rows_are_consistent_and_files_exist(ingested) -> None:
    lib = ingested["lib"]
    clips = lib.read("clips").to_pylist()
    assert clips
    for c in clips:
        assert c["n_frames"] == c["end_frame"] - c["start_frame"] > 0
        assert c["duration_s"] >= 1.0 - 1e-6 and c["duration_s"] <= 10.0 + 1e-6
        path = lib.root / c["path"]
        assert path.is_file() and path.stat().st_size == c["file_bytes"]
        with av.open(str(path)) as f:
            n = sum(1 for _ in f.decode(video=0))
        assert n == c["file_n_frames"] == c["n_frames"] + c["file_start_frame"]
    assert len({c["clip_id"] for c in clips}) == len(clips)


def test_tables_read_back_with_duckdb(ingested) -> None:
    import duckdb

    root = ingested["lib"].root
    n_clips = duckdb.sql(f"select count(*) from read_parquet('{root}/clips/*.parquet')").fetchall()[0][0]
    assert n_clips == ingested["lib"].read("clips").num_rows
    joined = duckdb.sql(
        f"select v.video_codec, count(*) from read_parquet('{root}/clips/*.parquet') c "
        f"join read_parquet('{root}/videos/*.parquet') v using (video_id) group by 1").fetchall()
    assert {codec for codec, _ in joined} >= {"h264", "vp9"}


def test_rerun_is_a_no_op(ingested, tmp_path: Path) -> None:
    lib = ingested["lib"]
    before = {t: lib.read(t).num_rows for t in ("videos", "shots", "clips", "errors", "sources")}
    proc = recap("ingest", str(ingested["corpus"]), "--out", str(lib.root), "--no-progress")
    assert "already done" in proc.stdout
    after = {t: Library(lib.root).read(t).num_rows for t in before}
    assert before == after


def test_permission_denied(sample_corpus: Path) -> None:
    """A file the ingesting user may not read. As root, permissions do not deny anything, so the
    worker runs in a child process that drops to `nobody` once its imports are done."""
    import subprocess
    import sys
    import tempfile

    names = sorted(p for p in sample_corpus.iterdir() if p.suffix == ".mp4")
    work = Path(tempfile.mkdtemp(prefix="recap-perm-"))
    try:
        os.chmod(work, 0o777)
        secret = work / "secret.mp4"
        shutil.copy(names[0], secret)
        os.chmod(secret, 0o000)
        code = ("import os; from pipeline.ingest.config import load_ingest_config; from pipeline.ingest.worker import ingest_source;"
                "import pipeline.ingest.sources, pipeline.ingest.probe, pipeline.ingest.decode, pipeline.ingest.shots, pipeline.ingest.clipfiles;"
                "cfg = load_ingest_config(); os.geteuid() == 0 and os.setuid(65534);"
                f"r = ingest_source({str(secret)!r}, cfg, {str(work / 'lib')!r});"
                "print(r.outcome, r.rows['errors'][0]['error_type'])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], timeout=120)
        assert out.stdout.split() == ["error", "permission_denied"], out.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)

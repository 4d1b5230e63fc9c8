"""Ingest survives hostile input: one real `recap ingest` (real Ray, real PyAV, a real HTTP server)
over the sample videos mixed with every kind of bad source seen so far. No hang (the stalled
download is ended by the product's own `sources.timeout_s`; the subprocess timeout only bounds a
regression), every bad source exactly one classified error row that names what the user gave,
every good video ingested, exit status 3; a rerun adds no row and retries nothing.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from pipeline.library import Library
from tests.avfiles import write_video
from tests.conftest import RECAP, ROOT
from tests.test_ingest import BAD_KINDS, make_bad_inputs
from tests.test_probe import write_oversized_h264

pytestmark = pytest.mark.slow       # one CLI run that waits out a 30 s budget

TIMEOUT_S = 30      # sources.timeout_s of the run: generous for a good sample video on a busy machine


class _Server(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, plus /endless.mp4 (no Content-Length, never ends) and /stalled.mp4
    (sends a little, then nothing)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        if self.path == "/endless.mp4":
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        if self.path == "/stalled.mp4":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            try:
                self.wfile.write(b"\0" * 1024)
                self.wfile.flush()
                threading.Event().wait(600)
            except OSError:
                return
        return super().do_GET()

    def do_HEAD(self):
        if self.path in ("/endless.mp4", "/stalled.mp4"):
            self.send_response(200)
            if self.path == "/stalled.mp4":
                self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            return
        return super().do_HEAD()

    def log_message(self, *args):
        pass


def _hostile_corpus(work: Path, good: Path, base: str, www: Path) -> dict[str, str]:
    """Writes the bad sources; returns {uri as the library records it: expected error_type}."""
    bad = work / "bad"
    make_bad_inputs(bad, good)                                     # empty, truncated, random, audio only
    expected = {str(bad / name): kind for name, kind in BAD_KINDS.items()}
    os.mkfifo(bad / "fifo.mp4")
    (bad / "dir.mp4").mkdir()
    (bad / "loop.mp4").symlink_to(bad / "loop.mp4")
    (bad / "dangling.mp4").symlink_to(bad / "gone.mp4")
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for ext in ("png", "jpg"):
        cv2.imwrite(str(bad / f"picture.{ext}"), img)
        (bad / f"picture.{ext}").rename(bad / f"{ext}.mp4")
    shutil.copy(good, bad / "inner.mp4")
    (bad / "concat.mp4").write_text("ffconcat version 1.0\nfile inner.mp4\n")
    (bad / "hls.mp4").write_text("#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n")
    write_oversized_h264(bad / "sps16000.mp4", 16000, 16000)
    write_oversized_h264(bad / "sps100000.mp4", 100000, 100000)
    cv2.imwrite(str(www / "picture.png"), 255 - img)                  # not the same bytes as png.mp4
    (www / "picture.png").rename(www / "picture.mp4")
    expected.update({
        str(bad / "fifo.mp4"): "unsafe_input", "/dev/zero": "unsafe_input", str(bad / "dir.mp4"): "not_a_video",
        str(bad / "loop.mp4"): "not_found", str(bad / "dangling.mp4"): "not_found",
        str(bad / "missing.mp4"): "not_found", str(bad / "png.mp4"): "not_a_video",
        str(bad / "jpg.mp4"): "not_a_video", str(bad / "concat.mp4"): "unsafe_input",
        str(bad / "hls.mp4"): "unsafe_input", str(bad / "sps16000.mp4"): "too_large",
        str(bad / "sps100000.mp4"): "too_large",
        f"{base}/missing.mp4": "not_found", f"{base}/endless.mp4": "too_large",
        f"{base}/stalled.mp4": "timeout", f"{base}/picture.mp4": "not_a_video",
    })
    return expected


@pytest.fixture(scope="module")
def hostile(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("hostile")
    www = work / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Server(*a, directory=str(www)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    write_video(www / "remote.mp4", n_frames=100)                  # a good video only reachable by URL
    expected = _hostile_corpus(work, sample_corpus / "cuts.mp4", base, www)
    manifest = work / "manifest.txt"
    manifest.write_text("\n".join([*expected, f"{base}/remote.mp4"]) + "\n")
    lib = work / "lib"
    args = [*RECAP, "ingest", str(sample_corpus), str(manifest), "--out", str(lib), "--no-progress",
            "--set", f"sources.timeout_s={TIMEOUT_S}", "--set", "sources.cache_max_gb=0.02"]
    sandboxes_before = _sandboxes()
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    errors_after_first = Library(lib).read("errors").num_rows
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    yield {"lib": Library(lib), "first": first, "again": again, "expected": expected, "base": base,
           "corpus": sample_corpus, "errors_after_first": errors_after_first, "sandboxes_before": sandboxes_before}
    server.shutdown()
    server.server_close()


def _sandboxes() -> set[int]:
    return {p.pid for p in psutil.process_iter(["cmdline"]) if "pipeline.ingest.sandbox" in (p.info["cmdline"] or [])}


def test_exit_status_3_and_no_traceback(hostile) -> None:
    first = hostile["first"]
    assert first.returncode == 3, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    assert f"{len(hostile['expected'])} failed" in first.stdout, first.stdout


def test_every_bad_source_is_one_classified_error_row(hostile) -> None:
    lib, expected = hostile["lib"], hostile["expected"]
    rows: dict[str, list[dict]] = {}
    for row in lib.read("errors").to_pylist():
        rows.setdefault(row["source"], []).append(row)
    assert set(rows) == set(expected)
    got = {uri: [r["error_type"] for r in rs] for uri, rs in rows.items()}
    assert got == {uri: [kind] for uri, kind in expected.items()}
    outcomes = lib.handled_sources()
    assert {outcomes[uri] for uri in expected} == {"error"}          # bad input: never retried as `failed`
    for uri, (row,) in rows.items():                                  # each message names what the user gave
        assert uri in row["message"] and "/.cache/" not in row["message"], row


def test_the_budget_and_the_cache_limit_name_their_keys(hostile) -> None:
    by_uri = {r["source"]: r for r in hostile["lib"].read("errors").to_pylist()}
    base = hostile["base"]
    assert "sources.timeout_s" in by_uri[f"{base}/stalled.mp4"]["message"]
    assert "sources.cache_max_gb" in by_uri[f"{base}/endless.mp4"]["message"]
    assert "decode.max_pixels" in by_uri[next(u for u in by_uri if u.endswith("sps16000.mp4"))]["message"]


def test_every_good_video_is_ingested(hostile) -> None:
    lib = hostile["lib"]
    ingested = {Path(v["uri"]).name for v in lib.read("videos").to_pylist()}
    good = {p.name for p in hostile["corpus"].iterdir() if p.suffix in (".mp4", ".webm", ".mkv")}
    assert ingested == good | {"remote.mp4"}
    clips_of = {}
    for c in lib.read("clips", ["video_id"]).to_pylist():
        clips_of[c["video_id"]] = clips_of.get(c["video_id"], 0) + 1
    assert all(clips_of.get(v["video_id"]) for v in lib.read("videos").to_pylist())


def test_a_rerun_adds_no_row_and_retries_nothing(hostile) -> None:
    again, lib = hostile["again"], hostile["lib"]
    assert again.returncode == 0, again.stdout + again.stderr       # nothing failed this time: all was done
    assert "0 ingested" in again.stdout and "0 failed" in again.stdout
    assert lib.read("errors").num_rows == hostile["errors_after_first"] == len(hostile["expected"])
    assert len(lib.meta["runs"]) == 2


def test_no_child_process_outlives_the_job(hostile) -> None:
    """Each worker's sandbox child dies with its worker (the timed-out one was killed at once)."""
    left = [psutil.Process(pid) for pid in _sandboxes() - hostile["sandboxes_before"] if psutil.pid_exists(pid)]
    _, alive = psutil.wait_procs(left, timeout=60)
    assert alive == []

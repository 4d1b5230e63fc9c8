"""`recap ingest` end to end through the real CLI, real Ray and real PyAV: ground truth on the
sample corpus, every kind of bad input, duplicates by content, URLs and manifests, DuckDB."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

from pipeline.ingest.config import load_ingest_config
from pipeline.ingest.job import largest_first, run_ingest
from pipeline.ingest.sandbox import SourceRunner
from pipeline.ingest.worker import ingest_source
from pipeline.library import Library
from pipeline.library.views import read_view
from tests.conftest import RECAP, ROOT, recap
from trainer.typedconfig import ConfigError

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
    # the filter view's line closes the summary (stdout), after the counts it follows from
    assert re.search(r"^filter view: \d+ of \d+ clips pass$", proc.stdout.splitlines()[-1]), proc.stdout


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


def test_dry_run_counts_what_a_run_would_take_and_writes_nothing(ingested, tmp_path: Path) -> None:
    corpus, lib = ingested["corpus"], ingested["lib"]
    videos = [corpus / n for n in ingested["names"]]
    new_lib = tmp_path / "new_lib"
    out = recap("ingest", str(corpus), "--out", str(new_lib), "--dry-run").stdout
    size_mb = sum(v.stat().st_size for v in videos) / 1e6
    assert out.splitlines()[0] == (f"sources: {len(videos)} (0 already done, {len(videos)} to ingest: "
                                   f"{len(videos)} local file(s), {size_mb:.1f} MB)")
    assert not new_lib.exists()
    extra = tmp_path / "extra.mp4"
    shutil.copy(videos[0], extra)
    before = sorted((p.relative_to(lib.root), p.stat().st_mtime_ns) for p in lib.root.rglob("*"))
    out = recap("ingest", str(corpus), str(extra), "--out", str(lib.root), "--dry-run").stdout
    assert out.startswith(f"sources: {len(videos) + 1} ({len(videos)} already done, 1 to ingest: 1 local file(s)")
    assert sorted((p.relative_to(lib.root), p.stat().st_mtime_ns) for p in lib.root.rglob("*")) == before


def test_info_json_gives_the_tables_figures(ingested) -> None:
    lib = ingested["lib"]
    s = json.loads(recap("info", str(lib.root), "--json").stdout)
    videos, clips, errors = (lib.read(t).to_pylist() for t in ("videos", "clips", "errors"))
    assert s["videos"]["count"] == len(videos) and s["shots"]["count"] == lib.read("shots").num_rows
    assert s["clips"]["count"] == len(clips)
    assert s["clips"]["seconds"] == pytest.approx(sum(c["duration_s"] for c in clips))
    assert s["errors"]["count"] == len(errors) > 0
    assert s["errors"]["kinds"] == dict(Counter(e["error_type"] for e in errors))
    assert s["videos"]["damaged"] == 1 and s["videos"]["damaged_example"]["uri"].endswith("cut_off.webm")
    view = read_view(lib.root)[0]
    assert (s["filter"]["passed"], s["filter"]["of"]) == (sum(view.column("passed").to_pylist()), len(clips))
    runs = json.loads((lib.root / "library.json").read_text())["runs"]      # one per ingest run, newest last
    assert s["ingest_runs"]["count"] == len(runs) >= 1 and s["ingest_runs"]["last"]["command"].startswith("recap ingest ")
    assert s["ingest_runs"]["last"] == {k: runs[-1][k] for k in ("at", "command", "summary")}


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


# --- one source's budget: the sandbox ----------------------------------------------------------


class _StallHandler(http.server.BaseHTTPRequestHandler):
    """Promises a megabyte, sends a kilobyte, then nothing: a download that never ends."""

    protocol_version = "HTTP/1.0"

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()

    def do_GET(self):
        self.do_HEAD()
        try:
            self.wfile.write(b"\0" * 1024)
            self.wfile.flush()
            threading.Event().wait(600)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def stalled_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stalled.mp4"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_a_source_past_its_budget_is_an_error_row_and_the_next_one_runs(tmp_path: Path, stalled_url: str,
                                                                          sample_corpus: Path) -> None:
    """The wall-clock budget ends a download that never finishes; the CPU budget ends a source that
    costs too much (here a placebo-preset encode); each is one `timeout` row naming its key, and
    the good video queued behind runs in a fresh child."""

    good = str(sorted(sample_corpus.glob("*.mp4"))[0])
    runner = SourceRunner()
    try:
        slow = runner.run(stalled_url, load_ingest_config(overrides=["sources.timeout_s=3"]), tmp_path / "lib")
        assert slow.outcome == "error"
        (err,) = slow.rows["errors"]
        assert (err["error_type"], err["stage"]) == ("timeout", "fetch") and "sources.timeout_s" in err["message"]
        assert stalled_url in err["message"]

        costly = load_ingest_config(overrides=["clips.mode=encode", "clips.encode_preset=placebo",
                                               "sources.cpu_timeout_s=1"])
        over = runner.run(good, costly, tmp_path / "lib")
        (err,) = over.rows["errors"]
        assert err["error_type"] == "timeout" and "sources.cpu_timeout_s" in err["message"], err
        assert not list((tmp_path / "lib").rglob("*.mp4"))     # the stopped child's clip files are gone

        after = runner.run(good, load_ingest_config(), tmp_path / "lib")
        assert after.outcome == "ingested" and after.n_clips > 0
    finally:
        runner.close()


# --- what a job checks before it writes anything ------------------------------------------------


def test_bad_config_values_fail_at_load_naming_the_key() -> None:

    for override, words in [("clips.encode_width=-2", "clips: encode_width >= 16 (got -2)"),
                            ("clips.encode_preset=bogus", "clips.encode_preset: 'bogus' is not a libx264 preset"),
                            ("execution.max_tasks_in_flight=-5", "execution: max_tasks_in_flight >= 0"),
                            ("execution.cpus_per_task=.nan", "execution.cpus_per_task: expected a finite number"),
                            ("sources.cache_max_gb=0", "sources: cache_max_gb > 0"),
                            ("sources.timeout_s=-1", "sources: timeout_s >= 0"),
                            ("decode.max_pixels=0", "decode: max_pixels >= 4096"),
                            ("shots.cut_threshold=.inf", "shots.cut_threshold: expected a finite number"),
                            ("signals.text.min_score=2", "signals.text: min_score <= 1"),
                            ("signals.aesthetic.device=gpu", "signals.aesthetic.device: 'gpu'")]:
        with pytest.raises(ConfigError) as err:
            load_ingest_config(overrides=[override])
        assert words in str(err.value), (override, str(err.value))


def test_a_missing_aesthetic_model_fails_before_any_video(tmp_path: Path, sample_corpus: Path) -> None:

    head = tmp_path / "head.safetensors"
    head.write_bytes(b"x")
    with pytest.raises(ConfigError, match="signals.aesthetic.head"):
        load_ingest_config(overrides=["signals.aesthetic.model=org/model", f"signals.aesthetic.head={tmp_path}/no.pth"])
    for model in (str(tmp_path / "no-such-model"), "no-such-org/no-such-model"):
        cfg = load_ingest_config(overrides=[f"signals.aesthetic.model={model}", f"signals.aesthetic.head={head}",
                                            "execution.executor=local"])
        with pytest.raises(ConfigError, match="signals.aesthetic.model"):
            run_ingest([str(sample_corpus)], tmp_path / "lib", cfg, progress=False)
        assert not (tmp_path / "lib").exists()


def test_without_the_ocr_engine_text_signals_are_null_and_the_rest_is_measured(tmp_path: Path, sample_corpus: Path,
                                                                               monkeypatch, capsys) -> None:
    """Python 3.13+ has no rapidocr wheels: ingest says so once and measures every other signal."""
    import pipeline.ingest.job as job

    monkeypatch.setattr(job, "ocr_available", lambda: False)
    cfg = load_ingest_config(overrides=["execution.executor=local"])
    summary = run_ingest([str(sample_corpus / "cuts.mp4")], tmp_path / "lib", cfg, progress=False)
    assert summary.failed == 0 and cfg.signals.text.enabled            # the caller's config is left alone
    assert capsys.readouterr().err.count("text signals off: rapidocr-onnxruntime is not installed") == 1
    clips = Library(tmp_path / "lib").read("clips").to_pylist()
    assert clips and all(c["text_area"] is None and c["ocr_text"] is None for c in clips)
    assert all(c["motion_score"] is not None and c["brightness"] is not None for c in clips)


def test_without_the_ocr_engine_a_worker_measures_the_rest_and_a_refused_job_says_one_line(
        tmp_path: Path, sample_corpus: Path, monkeypatch, capsys) -> None:
    """On Python 3.13+ a worker given the default config (text on) raised the import error for
    every video, and a job refused for a bad --out printed the warning above its one error line."""
    import pipeline.ingest.job as job
    import pipeline.ingest.signals.analyzers as analyzers

    monkeypatch.setattr(analyzers, "ocr_available", lambda: False)
    monkeypatch.setattr(job, "ocr_available", lambda: False)
    cfg = load_ingest_config(overrides=["execution.executor=local"])
    result = ingest_source(str(sample_corpus / "cuts.mp4"), cfg, tmp_path / "lib")
    assert result.outcome == "ingested", result.rows.get("errors")
    assert all(c["text_area"] is None and c["motion_score"] is not None for c in result.rows["clips"])
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(Exception, match="not a library folder"):
        run_ingest([str(sample_corpus / "cuts.mp4")], a_file, cfg, progress=False)
    assert "text signals off" not in capsys.readouterr().err


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _session_processes(pid: int) -> list[str]:
    """Processes of the Ray session a driver with this pid started (Ray names it after the pid)."""
    session = re.compile(rf"session_[0-9_-]+_{pid}(?![0-9])")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(session.search(a) for a in p.info["cmdline"] or ()):
            found.append(" ".join(p.info["cmdline"]))
    return found


def test_ray_that_cannot_start_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path, sample_corpus: Path) -> None:
    """Ray giving up on its own daemons (here: no time at all to wait for its GCS) gave a screen of
    errors, a traceback, exit 1, an empty library and Ray daemons left running."""
    env = dict(os.environ, RAY_gcs_server_port_wait_time_s="0")
    proc = subprocess.Popen([*RECAP, "ingest", str(sample_corpus), "--out", str(tmp_path / "lib"), "--no-progress",
                             "--set", "execution.executor=ray"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    line = _one_line(stderr)
    assert line.startswith("recap ingest: error: Ray did not start") and "Traceback" not in stderr
    assert not (tmp_path / "lib").exists()
    assert _session_processes(proc.pid) == []


def test_ray_address_auto_without_a_cluster_is_one_line_exit_2(tmp_path: Path, sample_corpus: Path) -> None:
    empty = tmp_path / "tmp"           # where Ray looks for a running cluster: none here
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TMPDIR=str(empty), RAY_TMPDIR=str(empty))
    proc = subprocess.run([*RECAP, "ingest", str(sample_corpus), "--out", str(tmp_path / "lib"), "--no-progress",
                           "--ray-address", "auto"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "cannot join the Ray cluster at 'auto'" in _one_line(proc.stderr)
    assert not (tmp_path / "lib").exists()


def test_usage_errors_leave_no_library(tmp_path: Path, sample_corpus: Path) -> None:
    proc = recap("ingest", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "lib"), check=False)
    assert proc.returncode == 2 and "no such file" in _one_line(proc.stderr)
    assert not (tmp_path / "lib").exists()


@pytest.mark.slow
def test_tasks_larger_than_any_node_fail_before_scheduling(tmp_path: Path, sample_corpus: Path) -> None:
    """`execution.cpus_per_task=1000` waited forever for a node that does not exist (the generous
    subprocess timeout is what a regression would hit)."""
    proc = recap("ingest", str(sample_corpus), "--out", str(tmp_path / "lib"), "--no-progress",
                 "--set", "execution.cpus_per_task=1000", check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "execution.cpus_per_task" in _one_line(proc.stderr)
    assert not (tmp_path / "lib").exists()


# --- a library with no clips ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_library_without_clips_exits_3_with_its_error_rows_and_runs(tmp_path: Path, sample_corpus: Path) -> None:
    """All sources bad, or settings that drop every clip: it exited 1 ("no committed clips"),
    recorded no run, and every rerun crashed the same way."""
    make_bad_inputs(tmp_path / "bad", sorted(sample_corpus.glob("*.mp4"))[0])
    local = ["--set", "execution.executor=local", "--no-progress"]
    for run in (1, 2):
        proc = recap("ingest", str(tmp_path / "bad"), "--out", str(tmp_path / "bad_lib"), *local, check=False)
        assert proc.returncode == 3, proc.stderr
        assert "the library has no clips" in proc.stdout and "Traceback" not in proc.stderr
        assert f"`recap info {tmp_path / 'bad_lib'} --errors`" in proc.stdout       # pasteable: not `LIB`
        lib = Library(tmp_path / "bad_lib")
        assert lib.read("errors").num_rows == len(BAD_KINDS)          # one row per source, not per run
        assert len(lib.meta["runs"]) == run

    good = str(sorted(sample_corpus.glob("*.mp4"))[0])
    for run in (1, 2):
        proc = recap("ingest", good, "--out", str(tmp_path / "short_lib"), *local,
                     "--set", "clips.min_seconds=1000", "--set", "clips.max_seconds=2000", check=False)
        assert proc.returncode == 3, proc.stderr
        lib = Library(tmp_path / "short_lib")
        assert lib.read("videos").num_rows == 1 and lib.read("clips").num_rows == 0
        assert len(lib.meta["runs"]) == run


def test_retry_errors_tries_bad_input_again(tmp_path: Path, sample_corpus: Path) -> None:

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.mp4").write_bytes(b"")
    lib = tmp_path / "lib"
    cfg = load_ingest_config(overrides=["execution.executor=local"])
    run_ingest([str(tmp_path / "in")], lib, cfg, progress=False)
    assert run_ingest([str(tmp_path / "in")], lib, cfg, progress=False).skipped == 1
    shutil.copy(sorted(sample_corpus.glob("*.mp4"))[0], tmp_path / "in" / "empty.mp4")   # fixed by its owner
    again = load_ingest_config(overrides=["execution.executor=local", "sources.retry_errors=true"])
    summary = run_ingest([str(tmp_path / "in")], lib, again, progress=False)
    assert summary.ingested == 1 and summary.library_clips > 0


def test_a_caption_model_missing_from_the_ingest_config_fails_before_any_work(tmp_path: Path,
                                                                              sample_corpus: Path) -> None:
    """`--set after.caption=true` with no model ran the whole ingest, then failed with a hint to pass
    --model, a flag ingest does not have."""
    proc = recap("ingest", str(sample_corpus), "--out", str(tmp_path / "lib"), "--set", "after.caption=true",
                 check=False)
    assert proc.returncode == 2 and "after.caption_set" in _one_line(proc.stderr)
    assert not (tmp_path / "lib").exists()


def test_ingest_refreshes_a_stale_view_with_its_own_thresholds(tmp_path: Path, sample_corpus: Path) -> None:
    """A kill between the last commit and the view's refresh left the view stale for good, and a
    `recap filter --set` threshold was replaced by the defaults at the next ingest."""
    from pipeline.filters.config import load_filter_config
    from pipeline.filters.evaluate import run_filters
    from pipeline.library.views import read_view

    videos = sorted(sample_corpus.glob("*.mp4"))
    cfg = load_ingest_config(overrides=["execution.executor=local", "clips.mode=reference"])
    lib = tmp_path / "lib"
    run_ingest([str(videos[0])], lib, cfg, progress=False)
    run_filters(lib, load_filter_config(None, ["filters.motion.min=0.05"]))      # the user's own threshold
    with Library(lib, write=True) as writer:       # clips committed, then killed before the refresh
        writer.commit({"clips": [dict(Library(lib).read("clips").to_pylist()[0], clip_id="c" * 20)]})
    assert Library(lib).view_is_stale()
    run_ingest([str(videos[0])], lib, cfg, progress=False)       # nothing new to ingest: the view still refreshes
    assert not Library(lib).view_is_stale()
    run_ingest([str(v) for v in videos], lib, cfg, progress=False)
    view, saved = read_view(lib)
    assert saved["filters"]["motion"]["min"] == 0.05 and view.num_rows == Library(lib).read("clips").num_rows


@pytest.mark.slow
def test_ctrl_c_stops_at_once_quietly_and_leaves_no_process(tmp_path: Path, sample_corpus: Path,
                                                            stalled_url: str) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) while videos are in flight, one of them a
    download that would take the whole `sources.timeout_s`: the job stops at once (not when the
    source gives up), exit 130 with one line, no traceback from the sandbox children, none of them
    left; a rerun finishes the job."""
    lib = tmp_path / "lib"
    manifest = tmp_path / "sources.txt"
    manifest.write_text(stalled_url + "\n" + "\n".join(str(p) for p in sorted(sample_corpus.glob("*.mp4"))) + "\n")
    args = [*RECAP, "ingest", str(manifest), "--out", str(lib), "--no-progress", "--set", "sources.timeout_s=900"]
    # as a terminal starts it: SIGINT handled (a process that inherits it ignored, as from a test
    # process where Ray or a server ignored it, never sees Ctrl-C)
    proc = psutil.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(children) < 2:
            children = [c for c in proc.children(recursive=True) if "pipeline.ingest.sandbox" in " ".join(c.cmdline())]
            time.sleep(0.05)
        assert children, "no video was in flight before the job ended"
        time.sleep(1)     # the stalled download has started
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)     # far less than sources.timeout_s: nothing waited for the download
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in out, out
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    again = recap("ingest", str(manifest), "--out", str(lib), "--no-progress", "--set", "sources.timeout_s=3",
                  check=False)
    assert again.returncode == 3 and len(Library(lib).handled_sources()) == 1 + len(list(sample_corpus.glob("*.mp4")))


def test_videos_are_dispatched_largest_first_remote_ones_after(tmp_path: Path) -> None:
    sizes = {"a.mp4": 10, "b.mp4": 3000, "c.mp4": 500, "d.mp4": 500}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"\0" * size)
    local = [str(tmp_path / n) for n in sizes]
    url = "https://example.com/v.mp4"
    order = largest_first(local + [url, str(tmp_path / "gone.mp4")])
    # by size, ties in their order; unknown sizes (a URL, a file that vanished: it gets its error row) after
    assert order == [str(tmp_path / n) for n in ("b.mp4", "c.mp4", "d.mp4", "a.mp4")] + [url, str(tmp_path / "gone.mp4")]


def test_a_new_library_starts_its_children_ahead_and_uses_them(tmp_path: Path, sample_corpus: Path,
                                                                monkeypatch) -> None:
    """A new library starts the run's sandbox children before opening it (their start-up overlaps
    the driver's), the threads take those children, and none is left when the run ends; a run
    into an existing library starts them when a source needs one."""
    from pipeline.ingest import job, sandbox

    started, asked = [], []
    real_start, real_start_runners = sandbox.SourceRunner.start, sandbox.start_runners
    monkeypatch.setattr(sandbox.SourceRunner, "start", lambda self: started.append(self) or real_start(self))
    monkeypatch.setattr(job, "start_runners", lambda n: asked.append(n) or real_start_runners(n))
    videos = sorted(p for p in sample_corpus.iterdir() if p.suffix == ".mp4")[:2]
    cfg = load_ingest_config(None, ["execution.max_tasks_in_flight=2", "signals.text.enabled=false"])
    summary = run_ingest([str(v) for v in videos], tmp_path / "lib", cfg, progress=False)
    assert summary.ingested == 2 and asked == [2] and len(started) == 2
    assert not [p for p in psutil.Process().children(recursive=True) if "pipeline.ingest.sandbox" in " ".join(p.cmdline())]
    more = sorted(p for p in sample_corpus.iterdir() if p.suffix in {".webm", ".mkv"})[:1]
    assert run_ingest([str(v) for v in more], tmp_path / "lib", cfg, progress=False).ingested == 1
    assert asked == [2] and len(started) == 2          # existing library: no child started ahead

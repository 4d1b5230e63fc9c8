"""A disk that fills mid-job: every command that writes stops in one line naming the file it could
not write (no traceback, no 'damaged'), leaves what it had committed readable, and a rerun with
space finishes the job.

A full disk is simulated portably (no mount needed): the command runs in a child process whose
RLIMIT_FSIZE is lowered, so a write that would make a file larger than the limit fails with
EFBIG ('File too large') as a write to a full disk fails with ENOSPC; SIGXFSZ is ignored there,
so the write fails instead of killing the process."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import RECAP, ROOT, recap
from tests.test_export import _samples, export, library, one_sample_shards  # noqa: F401 - `library` is a fixture


def _limited(max_file_bytes: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.RLIM_INFINITY))
    return preexec


def recap_on_full_disk(max_file_bytes: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real `recap` CLI in a child that cannot write a file past `max_file_bytes`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", RECAP_NO_PROGRESS="1")
    return subprocess.run([*RECAP, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
                          preexec_fn=_limited(max_file_bytes))


def python_on_full_disk(max_file_bytes: int, code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`code` run by a child Python that cannot write a file past `max_file_bytes`."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          preexec_fn=_limited(max_file_bytes))


def _one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"recap {command}: error: cannot write "), proc.stderr
    return last


def test_a_lock_note_that_cannot_be_written_is_no_traceback(tmp_path: Path) -> None:
    """Every writing command takes a lock and writes its pid into the lock file; on a full disk
    that write failed with a bare OSError traceback before the job's own clear message (and it
    stopped `recap remove`, the command that frees space). Now the job runs on to the file it
    cannot write and names it."""
    from tests.test_filters import write_library

    lib = write_library(tmp_path / "lib", n=40)
    out = recap_on_full_disk(0, "filter", str(lib))
    last = _one_line_error(out, "filter")
    assert last.startswith(f"recap filter: error: cannot write {lib / 'views' / 'filters.parquet'}: File too large")
    assert not (lib / "views" / "filters.parquet").exists()
    assert not [p for p in (lib / "views").iterdir() if p.name.endswith(".tmp")]


def test_export_on_a_full_disk_names_the_shard_and_a_rerun_finishes(library, tmp_path: Path) -> None:  # noqa: F811
    """A shard that did not fit died with tarfile's OSError traceback; now it is one line naming
    the shard, no half shard is left, and the rerun with space writes exactly the selection."""
    lib, truth = library
    out, args = one_sample_shards(lib, tmp_path)
    # room for the job's small files (job.json, done records), not for a shard of one sample
    last = _one_line_error(recap_on_full_disk(6000, "export", *args), "export")
    assert re.match(rf"recap export: error: cannot write {out}/(train|val)-\d{{6}}\.tar: File too large$", last), last
    assert not list(out.glob("*.tar")) and not list(out.glob(".*tmp*"))
    export(*args)
    keys = [s["__key__"] for s in _samples(out)]
    assert len(keys) == len(set(keys)) and set(keys) == truth["selected"]
    # the card's pictures too: named, and no half-written picture left in card/
    for picture in (out / "card").iterdir():
        picture.unlink()
    last = _one_line_error(recap_on_full_disk(8000, "export", *args), "export")   # the manifest fits
    assert re.match(rf"recap export: error: cannot write {out}/card/\w+\.png: File too large$", last), last
    assert not list((out / "card").iterdir())


def test_ingest_stops_when_the_disk_fills_with_clip_files_and_the_rerun_finishes(sample_corpus: Path,
                                                                                    tmp_path: Path) -> None:
    """A disk that filled while clip files were written failed that source with PyAV's OSError,
    naming a hidden temp file and PyAV's error.py as where, left its clip files written so far,
    and the job went on decoding every remaining source only to fail each the same way. Now the
    first such source stops the job in one line naming the clip file; it is `failed` (retried),
    not bad input; its files are gone; and the rerun gives the library a run with room gives."""
    from pipeline.library import Library

    args = [str(sample_corpus), "--no-progress", "--set", "signals.text.enabled=false"]
    lib = tmp_path / "lib"
    # room for the tables (a clips part of a few videos: ~15 KB), not for a remuxed clip (>= 30 KB)
    out = recap_on_full_disk(24_000, "ingest", *args, "--out", str(lib))
    last = _one_line_error(out, "ingest")
    assert re.match(rf"recap ingest: error: cannot write {lib}/media/\w\w/\w+/\w+\.(mp4|webm|mkv): File too large: "
                    "the job stopped; ", last), last
    with Library(lib) as failed:
        assert set(failed.handled_sources().values()) == {"failed"}
        errors = failed.read("errors").to_pylist()
        assert [e["error_type"] for e in errors] == ["no_space"] and errors[0]["message"] in last
    assert not [p for p in (lib / "media").rglob("*") if p.is_file()]     # no clip file without its row

    recap("ingest", *args, "--out", str(lib))
    recap("ingest", *args, "--out", str(tmp_path / "ref"))
    with Library(lib) as again, Library(tmp_path / "ref") as ref:
        assert set(again.handled_sources().values()) == {"ingested"}
        columns = ["clip_id", "path", "file_bytes", "start_frame", "end_frame"]
        assert sorted(again.clips(columns).to_pylist(), key=str) == sorted(ref.clips(columns).to_pylist(), key=str)
        assert all((lib / p).is_file() for p in again.clips(["path"]).column("path").to_pylist())


def test_index_on_a_full_disk_keeps_the_milvus_lite_store_and_a_rerun_syncs_it(tmp_path: Path) -> None:
    """Milvus Lite failing to write for want of room was taken for a damaged store: `recap index`
    removed the whole store to rebuild it (on the disk that had no room), then said 'damaged ...
    --repair'. Now it says the disk is full, keeps the store, and the rerun with room syncs it."""
    from tests.index_fixtures import make_library

    root = make_library(tmp_path / "lib")
    args = ["index", str(root), "--set", "embedders.visual.enabled=false"]
    # room for the embeddings part (~24 KB), not for Milvus Lite's data file (~38 KB)
    last = _one_line_error(recap_on_full_disk(30_000, *args), "index")
    assert last.startswith(f"recap index: error: cannot write the Milvus Lite store {root / 'milvus.db'}: "
                           "File too large (it failed to "), last
    assert "damaged" not in last and (root / "milvus.db").is_dir()
    recap(*args)
    assert recap(*args, "--check").returncode == 0


def test_index_whose_scratch_vectors_do_not_fit_says_where(tmp_path: Path) -> None:
    """The vectors an incremental sync streams into a scratch file in the library met a full disk
    with a bare OSError traceback; now it is one line naming the library folder."""
    from tests.index_fixtures import make_library

    root = make_library(tmp_path / "lib")
    args = ["index", str(root), "--set", "embedders.visual.enabled=false"]
    recap(*args)
    last = _one_line_error(recap_on_full_disk(4096, *args), "index")     # 11 vectors of 384 floats: 17 KB
    assert last == f"recap index: error: cannot write {root}: File too large", last
    assert recap(*args, "--check").returncode == 0


SAVE_ON_A_FULL_DISK = """
import sys
import torch
from trainer.checkpoint import save_checkpoint

run, big = sys.argv[1], torch.zeros(50_000)      # 200 KB: past the limit
small = {"model": {"w": torch.zeros(10)}}
save_checkpoint(run, 5, small, {}, {"step": 5}, keep_last=3)
for step, weights, state in ((10, {"model": {"w": big}}, {"step": 10}), (15, small, {"step": 15, "m": big})):
    try:
        save_checkpoint(run, step, weights, {}, state, keep_last=3)
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_a_checkpoint_that_does_not_fit_is_one_line_and_leaves_no_half_checkpoint(tmp_path: Path) -> None:
    """A checkpoint that met a full disk died with safetensors' SafetensorError, or with torch's
    'enforce fail ... unexpected pos' (which says nothing of the disk), and left its hidden
    .tmp_step_N folder holding the room; now it is one line naming the checkpoint, the disk's
    reason and the checkpoint --resume continues from, and the half checkpoint is gone."""
    from trainer.checkpoint import list_checkpoints

    run = tmp_path / "run"
    proc = python_on_full_disk(100_000, SAVE_ON_A_FULL_DISK.replace("sys.argv[1]", repr(str(run))))
    assert proc.returncode == 0, proc.stderr
    weights_error, state_error = proc.stdout.strip().splitlines()
    for line, step in ((weights_error, 10), (state_error, 15)):     # safetensors' file, then torch's
        assert line.startswith(f"CheckpointWriteError cannot write checkpoint {run}/checkpoints/step_{step:08d}: File too large; "
                               f"the run stopped at step {step}. "), line
        assert line.endswith("rerun with --resume: it continues from step_00000005"), line
    assert [p.name for p in list_checkpoints(run)] == ["step_00000005"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000005"]


STAGE_ON_A_FULL_DISK = """
import json, sys
import fsspec
from pipeline.ingest.config import load_ingest_config
from pipeline.ingest.worker import ingest_source

lib = sys.argv[1]
with fsspec.open("memory://recap-full-disk/v.mp4", "wb") as f:
    f.write(bytes(200_000))                      # past the limit: its staged copy does not fit
r = ingest_source("memory://recap-full-disk/v.mp4", load_ingest_config(), lib)
print(json.dumps({"outcome": r.outcome, "errors": r.rows["errors"]}, default=str))
"""


def test_a_remote_source_whose_staged_copy_does_not_fit_is_retried_not_bad_input(tmp_path: Path) -> None:
    """A download into the staging cache that met a full disk became `fetch_failed`, recorded as
    bad input (`error`), so a rerun with room skipped the source for good. Now it is `failed`
    (retried) with kind no_space, naming the staged file, and the ingest job stops there."""
    import json

    lib = tmp_path / "lib"
    proc = python_on_full_disk(50_000, STAGE_ON_A_FULL_DISK.replace("sys.argv[1]", repr(str(lib))))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "failed", result
    [error] = result["errors"]
    assert error["error_type"] == "no_space" and error["stage"] == "fetch", error
    assert re.match(rf"cannot write {lib}/\.cache/\w+\.mp4: File too large$", error["message"]), error
    assert not [p for p in (lib / ".cache").iterdir() if p.is_file()]

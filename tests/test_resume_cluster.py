"""Crash safety and distribution: kill -9 mid-run then resume; a two-node local Ray cluster."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.library import Library
from tests.conftest import RECAP, ROOT, recap

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow     # kill -9 and cluster runs: `make test` only


def _clip_ids(lib: Path) -> list[str]:
    return Library(lib).read("clips", ["clip_id"]).column("clip_id").to_pylist()


@pytest.fixture(scope="module")
def reference_clips(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    lib = tmp_path_factory.mktemp("ref") / "lib"
    # also exercises captioning as a stage of the ingest job (the signal captioner: no weights)
    recap("ingest", str(sample_corpus), "--out", str(lib), "--no-progress", "--set", "clips.mode=reference",
          "--set", "after.caption=true", "--set", 'after.caption_set=["model.backend=signals"]')
    ids = _clip_ids(lib)
    assert len(ids) == len(set(ids)) > 0
    return {"lib": lib, "ids": set(ids)}


def test_ingest_can_caption_in_the_same_job(reference_clips: dict) -> None:
    from pipeline.library.captions import CaptionStore
    from pipeline.library.views import read_view

    view = read_view(reference_clips["lib"])[0].to_pylist()
    passing = {r["clip_id"] for r in view if r["passed"]}
    captions = CaptionStore(reference_clips["lib"]).read().to_pylist()
    assert passing and {c["clip_id"] for c in captions} == passing
    assert all(c["status"] == "ok" and c["text"] for c in captions)


def test_kill_9_then_resume_loses_and_duplicates_nothing(sample_corpus: Path, reference_clips: dict,
                                                         tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    args = ["ingest", str(sample_corpus), "--out", str(lib), "--no-progress",
            "--set", "execution.commit_every=1", "--set", "clips.mode=encode"]
    proc = subprocess.Popen([*RECAP, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((lib / "_commits").glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "ingest finished before it could be killed; make the corpus bigger"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    committed = len(Library(lib).handled_sources())
    assert 0 < committed < 6

    recap(*args)
    ids = _clip_ids(lib)
    assert len(ids) == len(set(ids)), "duplicate clip rows after resume"
    assert set(ids) == reference_clips["ids"], "clips missing or extra after resume"
    reopened = Library(lib)
    videos = reopened.read("videos", ["video_id"]).column("video_id").to_pylist()
    assert len(videos) == len(set(videos)) == 6
    assert not list(lib.rglob("*.tmp")), "temporary files left behind"
    for c in reopened.read("clips").to_pylist():
        assert (lib / c["path"]).is_file()


def test_two_node_local_cluster(sample_corpus: Path, reference_clips: dict, tmp_path: Path) -> None:
    port = 6000 + os.getpid() % 1000
    temp = tempfile.mkdtemp(prefix="rt-")  # Ray's socket paths must stay short
    ray = str(BIN / "ray")
    common = ["--num-cpus=1", "--disable-usage-stats"]
    # Ray clusters use token auth: every node and every driver needs the same token
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = dict(os.environ, **auth)
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--include-dashboard=false",
                        f"--temp-dir={temp}", *common], check=True, capture_output=True, timeout=120, env=env)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", f"--temp-dir={temp}", *common], check=True,
                       capture_output=True, timeout=120, env=env)
        lib = tmp_path / "lib"
        # another token: refused up front in recap's words (Ray alone retries, then blames the address)
        wrong = recap("ingest", str(sample_corpus), "--out", str(lib), "--no-progress", "--ray-address",
                      f"127.0.0.1:{port}", env=dict(auth, RAY_AUTH_TOKEN=secrets.token_hex(32)), check=False)
        assert wrong.returncode == 2 and "refused this driver's authentication token" in wrong.stderr, wrong.stderr
        assert not lib.exists()
        recap("ingest", str(sample_corpus), "--out", str(lib), "--no-progress", "--ray-address",
              f"127.0.0.1:{port}", "--set", "clips.mode=reference", "--set", "execution.cpus_per_task=1", env=auth)
        assert set(_clip_ids(lib)) == reference_clips["ids"]
        nodes = set(Library(lib).read("videos", ["worker_node"]).column("worker_node").to_pylist())
        assert len(nodes) == 2, f"work did not spread over both nodes: {nodes}"
    finally:
        _stop_cluster(temp, port)


def _stop_cluster(temp_dir: str, port: int, spare: int | None = None) -> None:
    """Kill this test's Ray processes only (`ray stop` would kill every Ray on the machine): those
    whose command line names its temp dir or port, and their children; not `spare` (a driver
    whose --ray-address names the port)."""
    import psutil

    marks = (temp_dir, f":{port}")
    mine = {}
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != spare and any(m in arg for arg in (p.info["cmdline"] or []) for m in marks):
            with contextlib.suppress(psutil.Error):
                for q in [p, *p.children(recursive=True)]:
                    mine[q.pid] = q
    mine = list(mine.values())
    for p in mine:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(mine, timeout=30)


def test_cluster_stopped_mid_run_ends_the_job_in_one_line(sample_corpus: Path, reference_clips: dict,
                                                         tmp_path: Path) -> None:
    """`ray stop` on the cluster mid-ingest: the job says so and ends (Ray alone left it blocked for a
    minute, then killed it without a word from recap); a rerun on a new cluster completes."""
    port = 6000 + (os.getpid() + 500) % 1000
    ray = str(BIN / "ray")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    lib = tmp_path / "lib"
    args = ["ingest", str(sample_corpus), "--out", str(lib), "--no-progress", "--ray-address", f"127.0.0.1:{port}",
            "--set", "clips.mode=encode", "--set", "execution.commit_every=1", "--set", "execution.cpus_per_task=1"]
    for attempt in ("stopped", "rerun"):
        temp = tempfile.mkdtemp(prefix="rt-")  # Ray's socket paths must stay short
        try:
            subprocess.run([ray, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                            "--num-cpus=1", "--disable-usage-stats"], check=True, capture_output=True, timeout=120, env=env)
            if attempt == "rerun":
                recap(*args, env={k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
                break
            proc = subprocess.Popen([*RECAP, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None and not list((lib / "_commits").glob("*.json")):
                time.sleep(0.05)
            assert proc.poll() is None, "ingest finished before its cluster could be stopped"
            _stop_cluster(temp, port, spare=proc.pid)
            # Ray alone ends the driver after 60 s with its own fatal line: recap's comes first
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 2, err[-2000:]
            assert "the Ray cluster at" in err and "went away mid-run" in err, err[-2000:]
            assert "Failed to connect to GCS within 60 seconds" not in err
        finally:
            _stop_cluster(temp, port)
    assert set(_clip_ids(lib)) == reference_clips["ids"]


def test_library_the_ray_nodes_cannot_see_is_refused_up_front(sample_corpus: Path, reference_clips: dict,
                                                              tmp_path: Path) -> None:
    """A cluster whose node has another disk at the library's path (here: a tmpfs mounted over it in
    the node's own mount namespace): refused before anything is written, naming the node (the
    workers failed every source on a claims file, with the library created). So is an export whose
    --out the node does not see, and a caption job's stages (every job's stages name their folders:
    those ran unchecked, the workers finding no clip or writing shards where nobody looks)."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    if subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount -t tmpfs none {hidden}"],
                      capture_output=True).returncode:
        pytest.skip("needs `unshare -m` and mount (root or user namespaces) to give a node a disk of its own")
    port = 6000 + (os.getpid() + 250) % 1000
    temp = tempfile.mkdtemp(prefix="rt-")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs none {hidden} && exec {BIN / 'ray'} start --head --port={port} "
                        f"--include-dashboard=false --temp-dir={temp} --num-cpus=1 --disable-usage-stats"],
                       check=True, capture_output=True, timeout=120, env=env)
        lib = hidden / "lib"
        proc = recap("ingest", str(sample_corpus), "--out", str(lib), "--no-progress", "--ray-address",
                     f"127.0.0.1:{port}", env={k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "do not see this folder" in proc.stderr and "every node" in proc.stderr, proc.stderr
        assert list(hidden.iterdir()) == [], "the refused job left files behind"

        auth = {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        proc = recap("export", str(reference_clips["lib"]), "--out", str(hidden / "shards"), "--no-progress",
                     "--ray-address", f"127.0.0.1:{port}", env=auth, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "do not see this folder" in proc.stderr and "the export folder (--out)" in proc.stderr, proc.stderr
        assert list(hidden.iterdir()) == [], "the refused export left files behind"

        # the caption job's frame stage, through the runner every Ray job starts with
        code = ("import sys; from pathlib import Path\n"
                "from captioner.config import CaptionConfig\n"
                "from pipeline.caption.stages import FramePrepStage\n"
                "from pipeline.stages.execution import ExecutionConfig\n"
                "from pipeline.stages.runner import run_stages\n"
                "from trainer.typedconfig import ConfigError\n"
                f"stage = FramePrepStage(CaptionConfig(), {str(lib)!r})\n"
                f"ex = ExecutionConfig(executor='ray', ray_address='127.0.0.1:{port}')\n"
                "try:\n    list(run_stages([stage], [{'clip_id': 'c'}], ex))\n"
                "except ConfigError as e:\n    print(e)\n    sys.exit(2)\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, **auth))
        assert proc.returncode == 2 and "do not see this folder" in proc.stdout, proc.stdout + proc.stderr
    finally:
        _stop_cluster(temp, port)

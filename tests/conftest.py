"""Shared fixtures: the synthetic sample corpus, the real shared videos, CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_SHOTS = ROOT.parent / "shared" / "data" / "shots"
RECAP = [sys.executable, "-m", "pipeline.cli"]
# `recap` as a shell in a terminal starts it, for tests that press Ctrl-C (send SIGINT): SIGINT
# unblocked and raising KeyboardInterrupt. A child inherits an ignored SIGINT (a test process that
# a script started in the background, `pytest ... &`, holds it ignored) and Python then installs no
# handler: the child would never see the Ctrl-C. Set in the child, not by preexec_fn (unsafe with
# the test's server threads running).
RECAP_FROM_A_TERMINAL = [sys.executable, "-c", "import runpy, signal; "
                         "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                         "signal.signal(signal.SIGINT, signal.default_int_handler); "
                         "runpy.run_module('pipeline.cli', run_name='__main__', alter_sys=True)"]


@pytest.fixture(autouse=True)
def _no_ray_left_running():
    """A test that started Ray in this process shuts it down, so later tests (which start and
    stop clusters of their own) never pull the ground from under a live driver."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Trainer tests run torch on one thread: results do not depend on the machine's cores."""
    import torch  # lazy: most tests never need torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_shots() -> Path:
    """The real test videos with ground truth; tests skip where a clone does not have them."""
    if not (SHARED_SHOTS / "ground_truth.json").is_file():
        pytest.skip(f"real test videos not found at {SHARED_SHOTS} (they live beside the repo in ../shared)")
    return SHARED_SHOTS


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`recap samples` output (videos + truth.json), generated once per test session."""
    from pipeline.samples.corpus import write_samples

    out = tmp_path_factory.mktemp("samples")
    write_samples(out, seed=0)
    return out


def recap(*args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None,
          **kwargs) -> subprocess.CompletedProcess:
    """Run the real `recap` CLI in a subprocess (fresh interpreter, fresh local Ray)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([*RECAP, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"recap {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc

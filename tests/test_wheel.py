"""A wheel install works outside the repository, as a Ray cluster node gets recap from `pip install`:
the default configs and prompts load as package data, and nothing reaches back into the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "pipeline", "captioner", "index", "trainer", "configs"]


def run(*cmd, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repo(tmp_path: Path) -> None:
    src = tmp_path / "src"          # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", src, "-w",
        tmp_path / "dist", cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("recap-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel, cwd=tmp_path)
    # recap's dependencies come from the test's own environment (a plain path entry: its editable
    # install of this checkout is a .pth hook there, which a path entry does not run)
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    Path(purelib, "recap-test-deps.pth").write_text(deps + "\n")

    where = run(python, "-c", "import pipeline, configs; print(pipeline.__file__); print(configs.__file__)",
                cwd=tmp_path).stdout.split()
    assert all(Path(w).is_relative_to(venv) for w in where), where
    recap = venv / "bin" / "recap"
    run(recap, "samples", "corpus", cwd=tmp_path)
    ingest = run(recap, "ingest", "corpus", "--out", "lib", "--no-progress", "--set", "clips.mode=reference",
                 cwd=tmp_path)
    assert "6 ingested" in ingest.stdout
    info = run(recap, "info", "lib", cwd=tmp_path).stdout
    assert "videos       6" in info and "passed" in info

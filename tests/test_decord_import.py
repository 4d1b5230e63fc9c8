"""decord's import must not load the nvidia packages' BLAS and FFTW stand-ins into the process
(captioner/decord_import.py): beside PyPI's CUDA torch, libnvblas took torch's CPU matrix products
and crashed the first Linear after `import decord`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
{importer}
maps = open("/proc/self/maps").read()
print("loaded:", " ".join(sorted({{name for name in ("libnvblas.so.13", "libcufftw.so.12", "libcudart.so.13")
                                if name in maps}})))
"""


def _loaded(importer: str, site: Path) -> set[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", PROBE.format(importer=importer)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("loaded:"))
    return set(line.split()[1:])


def test_decord_loads_no_blas_or_fftw_stand_in(tmp_path: Path) -> None:
    """An `nvidia` namespace package (as PyPI's CUDA torch installs) holding a libnvblas, a libcufftw
    and a libcudart (copies of a plain shared library, so any process can load them)."""
    # a self-contained shared library that ships with decord (found without importing decord here,
    # which beside a CUDA torch would load libnvblas into this process)
    donor = sorted((Path(importlib.util.find_spec("decord").origin).parents[1] / "decord2.libs").glob("libopus*.so*"))[0]
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    for name in ("libnvblas.so.13", "libcufftw.so.12", "libcudart.so.13"):
        shutil.copy(donor, lib / name)
    # decord itself loads all three (what happened before); through recap only the runtime
    assert _loaded("import decord", tmp_path) == {"libnvblas.so.13", "libcufftw.so.12", "libcudart.so.13"}
    assert _loaded("import captioner.frames", tmp_path) == {"libcudart.so.13"}

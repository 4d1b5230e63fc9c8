"""decord, imported without the CUDA libraries its import would load into every process.

decord2's import dlopens every shared library of the `nvidia` pip packages with RTLD_GLOBAL (its
CUDA builds need their runtime that way). Next to PyPI's torch, a CUDA build, that includes
libnvblas, which exports the standard BLAS names: torch's CPU matrix products then call
libnvblas's sgemm_, which crashes the process without a GPU or an nvblas.conf naming a CPU BLAS
(segmentation fault in the first Linear on the CPU after `import decord`: seen on Python 3.13
with torch 2.13.0+cu130 and decord2 3.4.0). libcufftw does the same to FFTW's names. So those two
are left out of what decord loads; whatever a CUDA build of decord needs still loads.
"""

from __future__ import annotations

import glob
import os
import threading
from types import ModuleType

# libraries of the nvidia pip packages that export the names of a standard library (BLAS, FFTW)
INTERPOSERS = ("libnvblas.", "libcufftw.")

_lock = threading.Lock()


def import_decord() -> ModuleType:
    """The decord module, imported with INTERPOSERS hidden from its CUDA preloader."""
    with _lock:
        real_glob = glob.glob

        def without_interposers(pattern, *args, **kwargs):
            return [p for p in real_glob(pattern, *args, **kwargs)
                    if not os.path.basename(p).startswith(INTERPOSERS)]

        glob.glob = without_interposers   # decord's preloader lists the nvidia libraries with glob.glob
        try:
            import decord  # lazy: imported here, once, with the preloader's file list filtered
        finally:
            glob.glob = real_glob
        return decord

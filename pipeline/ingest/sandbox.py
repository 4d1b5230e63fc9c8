"""Each source is ingested in a child process, within a wall-clock and a CPU budget.

A hostile input can make the work of one source endless: a decoder spinning on crafted data, a
server that sends bytes forever or stops mid-way, a file swapped for a pipe. Nothing in-process
can stop C code, so `SourceRunner` hands each source to a long-lived child process (one per
worker, reused, so its imports and the OCR engine load once) and waits at most
`sources.timeout_s`; the child itself runs under an RLIMIT_CPU of `sources.cpu_timeout_s` CPU
seconds for that source. A source over either budget, or whose child dies, becomes an error row,
the child is replaced, and the sources queued behind it run as usual.

The child is `python -m pipeline.ingest.sandbox`: a fresh interpreter (no fork of a multi-threaded
Ray worker), talking over two pipes, and it dies with its parent.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pipeline.ingest.config import IngestConfig
from pipeline.ingest.result import SourceResult, error_result
from pipeline.library.layout import media_dir

_POLL_S = 0.5            # how often the parent looks at a silent child
_PR_SET_PDEATHSIG = 1


class SourceRunner:
    """Runs `ingest_source` for one source at a time in a child process, within the budget of
    `cfg.sources` (timeout_s, cpu_timeout_s; 0 = none)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._jobs: Connection | None = None
        self._events: Connection | None = None

    def start(self) -> None:
        """Start the child now (it imports the decoders, ~0.4 s) rather than at the first source."""
        self._ensure_child()

    def run(self, uri: str, cfg: IngestConfig, lib_root: str | Path,
            claim: Callable[[str, str], str | None] | None = None,
            on_progress: Callable[[float], None] | None = None) -> SourceResult:
        """The source's result; a source over budget or whose child died is an error row.
        `on_progress(share)` hears how much of the source's work the child has done."""
        self._ensure_child()
        assert self._jobs is not None and self._events is not None and self._proc is not None
        timeout_s, cpu_s = cfg.sources.timeout_s, cfg.sources.cpu_timeout_s
        try:
            self._jobs.send((uri, cfg, str(lib_root), claim, cpu_s))
        except OSError:          # the idle child was gone (killed, out of memory): start another
            self.close()
            self._ensure_child()
            assert self._jobs is not None
            self._jobs.send((uri, cfg, str(lib_root), claim, cpu_s))
        deadline = time.monotonic() + timeout_s if timeout_s else math.inf
        stage, video_id = "fetch", None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                _discard_clip_files(lib_root, video_id, stage)
                return error_result(uri, video_id, stage, "timeout",
                                    f"{uri}: gave up after {timeout_s:g} s (sources.timeout_s) while at stage "
                                    f"'{stage}'; raise sources.timeout_s for a source this slow")
            try:
                ready = self._events.poll(min(left, _POLL_S))
                message = self._events.recv() if ready else None
            except (EOFError, OSError):
                message = None
            if message is not None:
                if message[0] == "done":
                    return message[1]
                if message[0] == "at":
                    if on_progress is not None:
                        on_progress(message[1])
                    continue
                stage, video_id = message[1], message[2] or video_id
                continue
            if ready or self._proc.poll() is not None:    # EOF: the child is gone
                return self._died(uri, cfg, lib_root, stage, video_id)

    def _died(self, uri: str, cfg: IngestConfig, lib_root: str | Path, stage: str,
              video_id: str | None) -> SourceResult:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        _discard_clip_files(lib_root, video_id, stage)
        if code == -signal.SIGXCPU:
            return error_result(uri, video_id, stage, "timeout",
                                f"{uri}: gave up after {cfg.sources.cpu_timeout_s:g} CPU seconds "
                                f"(sources.cpu_timeout_s) at stage '{stage}'; raise it for a source this costly")
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        # not the input's fault for sure (it may have run out of memory): `failed`, tried again by a rerun
        return error_result(uri, video_id, stage, "worker_crashed",
                            f"{uri}: the process ingesting it died ({how}) at stage '{stage}'", outcome="failed")

    def _ensure_child(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self.close()
        jobs_r, jobs_w = os.pipe()
        events_r, events_w = os.pipe()
        # the child imports what this process imports (a Ray worker may see recap through a path
        # Ray gave it, not through an installed package)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        # numpy's BLAS sees only tiny vectors here; its idle threads spin after every call
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.ingest.sandbox", str(jobs_r), str(events_w), str(os.getpid())],
                pass_fds=(jobs_r, events_w), stdin=subprocess.DEVNULL, env=env,
                # its own process group: a Ctrl-C in the terminal reaches the parent only, which
                # stops the job in one line and this child with it (it dies with its parent anyway)
                process_group=0)
        finally:
            os.close(jobs_r)
            os.close(events_w)
        self._jobs = Connection(jobs_w, readable=False)
        self._events = Connection(events_r, writable=False)

    def close(self) -> None:
        """Stop the child (at once: it may be stuck in C code) and forget it."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        for conn in (self._jobs, self._events):
            if conn is not None:
                conn.close()
        self._jobs = self._events = None


def _discard_clip_files(lib_root: str | Path, video_id: str | None, stage: str) -> None:
    """Clip files a stopped child wrote for a video it had claimed: no rows will name them."""
    if video_id and stage in ("probe", "decode", "clips"):
        shutil.rmtree(media_dir(lib_root, video_id), ignore_errors=True)


_runners: dict[int, SourceRunner] = {}
_started: list[SourceRunner] = []      # started ahead of need (start_runners), not yet a thread's
_runners_lock = threading.Lock()


def start_runners(n: int) -> None:
    """Start `n` children now, for the threads of a local run to take as their runners: their
    start-up then overlaps the driver's own (opening the library, planning) instead of following it."""
    with _runners_lock:
        while len(_started) < n:
            runner = SourceRunner()
            runner.start()
            _started.append(runner)


def shared_runner() -> SourceRunner:
    """This thread's runner: one child per Ray worker, or per thread of a local run (which ingests
    several sources at once, one per thread), reused for every source."""
    with _runners_lock:
        tid = threading.get_ident()
        if tid not in _runners:
            _runners[tid] = _started.pop() if _started else SourceRunner()
        return _runners[tid]


def close_shared_runner() -> None:
    """Stop every runner's child (a local run's; a Ray worker's children go with the worker)."""
    with _runners_lock:
        runners = list(_runners.values()) + _started
        _runners.clear()
        _started.clear()
    for runner in runners:
        runner.close()


# ---- the child ---------------------------------------------------------------------------------
def _die_with(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux), so no child outlives a killed worker."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:   # the parent died before prctl took effect
        os._exit(1)


def _limit_cpu(seconds: float) -> None:
    """SIGXCPU (which ends the process) once it has used `seconds` more CPU time; 0 lifts it. Only
    the soft limit moves, so it can be raised again for the next source."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = resource.RLIM_INFINITY
    if seconds:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main(argv: list[str]) -> int:
    # lazy: only the child decodes; the process that drives it never loads the decoders
    from pipeline.ingest.worker import ingest_source

    jobs_fd, events_fd, parent = (int(a) for a in argv)
    _die_with(parent)
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))       # SIGXCPU would dump a core otherwise
    jobs, events = Connection(jobs_fd, writable=False), Connection(events_fd, readable=False)

    def report(stage: str, video_id: str | None) -> None:
        events.send(("stage", stage, video_id))

    def report_share(share: float) -> None:
        events.send(("at", share))

    while True:
        try:
            uri, cfg, lib_root, claim, cpu_s = jobs.recv()
        except EOFError:        # the parent closed the pipe: done
            return 0
        _limit_cpu(cpu_s)
        result: Any = ingest_source(uri, cfg, lib_root, claim=claim, on_stage=report, on_progress=report_share)
        _limit_cpu(0)
        events.send(("done", result))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

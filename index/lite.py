"""The Milvus Lite folder (`LIB/milvus.db` by default): who holds it, whether it is Lite's, and
removing it so the collection can be rebuilt from Parquet.

Milvus Lite runs inside the process that opens it and takes an exclusive `flock` on
`<folder>/LOCK` for as long as that process keeps it open, so a second process cannot open it at
all. Here the holder is named (pid and command line, from /proc/locks) and waited for, instead of
pymilvus' "Open local milvus failed"; and the in-process server is stopped when the last store of
this process closes, so the lock is not held until the process exits.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

LOCK = "LOCK"
# every name Milvus Lite 3 keeps at the top of its folder; anything else means it is not (only) Lite's
LITE_ENTRIES = {LOCK, "collections", "databases", ".database-staging", "aliases.json", "database_properties.json"}
_open: dict[str, int] = {}      # absolute folder -> stores of this process that have it open


def lock_holder(folder: str | Path) -> int | None:
    """The pid holding the Lite folder's lock (None when free, or held by a process /proc/locks
    does not show, e.g. outside Linux: then -1)."""
    lock = Path(folder) / LOCK
    try:
        st = lock.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    # lazy: fcntl is POSIX only, and only a probe of a possibly held lock needs it
    import fcntl

    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == dev:
                return int(parts[4])
    except (OSError, ValueError):
        pass
    return -1


def describe_pid(pid: int) -> str:
    """`pid 123 (recap index lib)`: the holder, as a person can find it."""
    if pid < 0:
        return "another process"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    words = cmd.split()
    # `python .../bin/recap search ...` reads better as `recap search ...`
    for i, w in enumerate(words):
        if Path(w).name == "recap" or w in ("pipeline.cli", "recap"):
            cmd = " ".join(["recap", *words[i + 1:]])
            break
    return f"pid {pid}" + (f" ({cmd[:120]})" if cmd else "")


def wait_until_free(folder: str | Path, wait_s: float, notify: Callable[[str], None] | None = None) -> int | None:
    """Wait up to `wait_s` for another process to release the Lite folder; returns the pid that
    still holds it (None once free). Stores this process has open do not count."""
    if open_here(folder):
        return None
    deadline = time.monotonic() + wait_s
    told = False
    while (pid := lock_holder(folder)) is not None and pid != os.getpid():
        if time.monotonic() >= deadline:
            return pid
        if notify and not told:
            notify(f"{folder} is in use by {describe_pid(pid)}; waiting up to {round(wait_s, 1):g} s for it")
            told = True
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    return None   # free, or held by this very process (pymilvus reuses its server)


def open_here(folder: str | Path) -> bool:
    """Whether a store of this process has the folder open."""
    return str(Path(folder).resolve()) in _open


def opened(folder: str | Path) -> None:
    key = str(Path(folder).resolve())
    _open[key] = _open.get(key, 0) + 1


def closed(folder: str | Path) -> None:
    """One store of this process closed the folder; the last one stops Lite's server (and its lock)."""
    key = str(Path(folder).resolve())
    _open[key] = _open.get(key, 1) - 1
    if _open[key] > 0:
        return
    del _open[key]
    # lazy: milvus_lite is imported by pymilvus when a Lite store is first opened
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(folder))     # keyed as pymilvus opened it (abspath)


def is_lite_folder(folder: str | Path) -> bool:
    """Whether `folder` holds nothing but what Milvus Lite writes (so removing it loses nothing else)."""
    p = Path(folder)
    return p.is_dir() and not p.is_symlink() and {e.name for e in p.iterdir()} <= LITE_ENTRIES


class Busy(Exception):
    """The folder's lock is held by another process (`pid`, -1 when unknown)."""

    def __init__(self, pid: int):
        super().__init__(f"held by pid {pid}")
        self.pid = pid


def remove(folder: str | Path, wait_s: float = 0.0, notify: Callable[[str], None] | None = None) -> str:
    """Remove a Lite folder to rebuild it: deleted when it is Lite's, a file in its place moved
    aside (kept, never deleted); anything else is refused (OSError). The folder's own lock is taken
    first (waiting up to `wait_s`, else Busy), and the folder renamed away under it, so a store
    another process opens is never pulled from under it, and two rebuilds do not collide."""
    p = Path(folder)
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        if not p.exists() and not p.is_symlink():
            return "nothing to remove"
        if p.is_file() or p.is_symlink():
            aside = _free_name(p, "unreadable")
            try:
                p.rename(aside)
            except FileNotFoundError:
                continue                      # another process moved it first
            return f"{p} was a file, not a Milvus Lite folder: moved it to {aside}"
        if not is_lite_folder(p):
            extra = sorted({e.name for e in p.iterdir()} - LITE_ENTRIES)
            raise OSError(f"{p} holds files Milvus Lite does not write ({', '.join(extra[:5])}): not removing "
                          "it; move it away (or give --milvus-uri another path) and rerun")
        taken = _take_lock(p)
        if taken is None:
            pid = lock_holder(p) or -1
            if time.monotonic() >= deadline:
                raise Busy(pid)
            if notify and not told:
                notify(f"{p} is in use by {describe_pid(pid)}; waiting up to {round(wait_s, 1):g} s for it")
                told = True
            time.sleep(0.1)
            continue
        try:
            aside = _free_name(p, f"removing-{os.getpid()}")
            p.rename(aside)                   # under the lock: nobody has the store open
        finally:
            os.close(taken)
        shutil.rmtree(aside, ignore_errors=True)
        return f"removed {p}"


def _take_lock(folder: Path) -> int | None:
    """An fd holding the folder's flock, when it is free and still the folder's LOCK (not one a
    rebuild just moved away with its folder); None otherwise."""
    # lazy: fcntl is POSIX only, and only removing a store needs it
    import fcntl

    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == (folder / LOCK).stat().st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _free_name(p: Path, tag: str) -> Path:
    n = 1
    while (aside := p.with_name(f"{p.name}.{tag}-{n}")).exists():
        n += 1
    return aside

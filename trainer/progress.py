"""Progress bars of every recap command: tqdm on a terminal, whole lines in a log.

Where the bar's stream is not a terminal (`recap ingest ... 2> ingest.log`, a cluster's job log),
tqdm would still redraw in place with carriage returns: a day's job becomes one line of megabytes
that `tail` and log viewers show as nothing or as garbage. There each redraw becomes a line of its
own instead, at most one every LOG_EVERY_S seconds, plus the first and the last. It lives in
`trainer/` so that the trainer and the pipeline share it (the pipeline may import the trainer, not
the other way round: see typedconfig.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import IO, Any, Callable

from tqdm import tqdm

from trainer.environ import scoped_env

LOG_EVERY_S = 30.0
# Set (to anything but "" or "0"), every bar is hidden: `--no-progress` of each command sets it, and
# the processes a command starts (torchrun's ranks, the ingest children) inherit it.
NO_PROGRESS_ENV = "RECAP_NO_PROGRESS"


class LogLines:
    """A stream for tqdm that turns its redraws ('\\r' + status) into whole lines on `out`: the
    first one, then at most one every `every_s` seconds, and the last (tqdm writes '\\n' on close)."""

    def __init__(self, out: IO[str], every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.out = out
        self.every_s = every_s
        self.clock = clock
        self._latest = ""               # the newest status not written yet
        self._written = ""              # the last one written
        self._written_at = -float("inf")

    def write(self, text: str) -> int:
        status = text.replace("\r", "").strip()
        if status:
            self._latest = status
        if not self._latest:
            return len(text)
        now = self.clock()
        if "\n" in text:   # the bar closed: its last status, unless only its clock moved since the last line
            due = _progress(self._latest) != _progress(self._written)
        else:
            due = now - self._written_at >= self.every_s
        if due:
            self.out.write(self._latest + "\n")
            self.out.flush()
            self._written, self._written_at = self._latest, now
        self._latest = "" if due or "\n" in text else self._latest
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def add_no_progress_option(parser: argparse.ArgumentParser) -> None:
    """`--no-progress`, the same on every command that draws bars (`hidden_bars` applies it)."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (where stderr is not a terminal they write a line every 30 s); "
                             f"also {NO_PROGRESS_ENV}=1")


def hidden_bars(hide: bool = True) -> contextlib.AbstractContextManager[None]:
    """Every bar hidden inside the block (`hide`), in this process and the ones it starts, which
    inherit NO_PROGRESS_ENV; as it was before afterwards."""
    return scoped_env(NO_PROGRESS_ENV, "1" if hide else None)


def progress_bar(iterable: Any = None, *, file: IO[str] | None = None, every_s: float = LOG_EVERY_S,
                 **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs) on `file` (default stderr), with dynamic width on a terminal and
    `LogLines` where it is not one. `disable=True` (or NO_PROGRESS_ENV) hides it either way."""
    file = file or sys.stderr
    if os.environ.get(NO_PROGRESS_ENV, "") not in ("", "0"):
        kwargs["disable"] = True
    if getattr(file, "isatty", lambda: False)():
        return tqdm(iterable, file=file, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, file=LogLines(file, every_s), **kwargs)


def _progress(status: str) -> str:
    """A status line without its clock and rate (tqdm puts them in [...]): the counts it shows."""
    return status.split(" [")[0]

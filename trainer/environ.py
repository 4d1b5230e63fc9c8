"""An environment variable set for the length of a block, then as it was: what a process's
children inherit without the setting outliving the work (one process may run several commands)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def scoped_env(name: str, value: str | None) -> Iterator[None]:
    """`name` set to `value` for the block (left alone when None); restored or removed after."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old

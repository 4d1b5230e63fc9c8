"""What the commands print about names they did not choose: file names, uris, commands."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """`text` with its control characters written as escapes (a newline as `\\n`, ESC as `\\x1b`):
    a file named with a newline stays on its line, and one named with a terminal escape sequence
    cannot move the cursor or recolour what follows."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)

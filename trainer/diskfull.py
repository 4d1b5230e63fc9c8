"""Whether an error is a write that failed for want of room: a full disk, a quota, a file past a
size limit. Such a failure is not damage nor bad input, and a rerun with room succeeds. Here because
trainer/ imports nothing of the rest of recap, which may import it (index/: the Milvus Lite store;
pipeline/ingest: clip files and staged downloads)."""

from __future__ import annotations

import errno
import re

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# libraries that carry the errno only in their message: Milvus Lite ('[Errno 28] No space left on
# device'), safetensors ('... No space left on device (os error 28)')
_ERRNO_IN_TEXT = re.compile(r"(?:errno|os error) (\d+)", re.IGNORECASE)


def no_space_errno(e: BaseException) -> int:
    """The errno when `e`, or an error in its chain, is a write that failed for want of room; else 0."""
    seen: BaseException | None = e
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:     # a chain may loop back on itself
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.errno in NO_SPACE_ERRNOS:
            return seen.errno
        text = str(getattr(seen, "message", None) or seen)
        for code in map(int, _ERRNO_IN_TEXT.findall(text)):
            if code in NO_SPACE_ERRNOS:
                return code
        seen = seen.__cause__ or seen.__context__
    return 0

"""Which fields `--where` may name: the columns a library (or a Milvus collection) has, plus the
declared catalogue of columns recap can write, so a filter on a signal that a library does not
have yet fails with "not in this library yet" rather than "unknown field"."""

from __future__ import annotations

from functools import lru_cache

from index.where import Field, Where, compile_where, fields_of
from pipeline.library.schema import BARS_KINDS, CAMERA_CLASSES, CLIP_COLUMNS, CLIP_MODES

# derived bool -> the column whose non-null it means
DERIVED = {"duplicate": "duplicate_of"}
# columns produced outside the clips table (filter view, captions, videos)
EXTRA_KNOWN = {"passed", "duplicate_of", "duplicate", "caption_version", "source"}


def known_values() -> dict[str, tuple[str, ...]]:
    """Allowed values of categorical string columns, as the library's schema declares them."""
    return {"clip_mode": CLIP_MODES, "camera_motion": CAMERA_CLASSES, "bars": BARS_KINDS}


@lru_cache(maxsize=1)
def known_columns() -> frozenset[str]:
    """Every column recap can write into the clip table (signals included)."""
    return frozenset({c.name for c in CLIP_COLUMNS} | EXTRA_KNOWN)


def fields_for_schema(schema, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Field]:
    """Filterable fields of an Arrow schema (e.g. the clip table, or `clips/` joined with the view)."""
    fields = fields_of(schema, known_values(), DERIVED)
    return {k: v for k, v in fields.items() if k not in exclude}


def compile_for_schema(text: str, schema) -> Where:
    """`--where` text checked against an Arrow schema: for `recap filter`, `recap export`, the UI.
    Use `.arrow()` with `Table.filter` / `pq.read_table(filters=...)`, or `.sql()` in DuckDB."""
    return compile_where(text, fields_for_schema(schema), set(known_columns()))

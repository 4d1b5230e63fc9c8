"""Which fields `--where` may name: the columns a library (or a Milvus collection) has, plus the
declared catalogue of columns recap can write, so a filter on a signal that a library does not
have yet fails with "not in this library yet" rather than "unknown field"."""

from __future__ import annotations

from functools import lru_cache

from index.where import Field, Where, compile_where, fields_of

# derived bool -> the column whose non-null it means
DERIVED = {"duplicate": "duplicate_of"}
# columns produced outside the clips table (filter view, captions, videos)
EXTRA_KNOWN = {"passed", "duplicate_of", "duplicate", "caption_version", "source"}


@lru_cache(maxsize=1)
def known_values() -> dict[str, tuple[str, ...]]:
    """Allowed values of categorical string columns, where recap defines them."""
    out: dict[str, tuple[str, ...]] = {"clip_mode": ("reference", "remux", "encode")}
    try:
        from pipeline.signals.columns import CAMERA_CLASSES
        out["camera_motion"] = tuple(CAMERA_CLASSES)
    except ImportError:   # a recap without the signals stage: values are simply not checked
        pass
    out["bars"] = ("none", "letterbox", "pillarbox", "windowbox")
    return out


@lru_cache(maxsize=1)
def known_columns() -> frozenset[str]:
    from pipeline.schema import CLIP_COLUMNS

    names = {c.name for c in CLIP_COLUMNS} | EXTRA_KNOWN
    try:
        from pipeline.signals.columns import SIGNAL_COLUMNS
        names |= {name for name, _, _ in SIGNAL_COLUMNS}
    except ImportError:
        pass
    return frozenset(names)


def fields_for_schema(schema, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Field]:
    """Filterable fields of an Arrow schema (e.g. the clip table, or `clips/` joined with the view)."""
    fields = fields_of(schema, known_values(), DERIVED)
    return {k: v for k, v in fields.items() if k not in exclude}


def compile_for_schema(text: str, schema) -> Where:
    """`--where` text checked against an Arrow schema: for `recap filter`, `recap export`, the UI.
    Use `.arrow()` with `Table.filter` / `pq.read_table(filters=...)`, or `.sql()` in DuckDB."""
    return compile_where(text, fields_for_schema(schema), set(known_columns()))

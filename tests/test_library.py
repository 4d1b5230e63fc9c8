"""The Parquet library: atomic committed batches, crash recovery, readers (pyarrow, DuckDB)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.library import Library, LibraryError
from pipeline.library.files import new_batch_id, utcnow
from pipeline.library.schema import TABLES, table_schema


def _source(uri: str) -> dict:
    return {"uri": uri, "video_id": "v" + uri, "outcome": "ingested", "at": utcnow()}


def test_commit_and_read_back(tmp_path) -> None:
    lib = Library(tmp_path / "lib", write=True)
    batch = lib.commit({"sources": [_source("a"), _source("b")]})
    assert batch
    t = lib.read("sources")
    assert t.schema.equals(table_schema("sources"))
    assert sorted(t.column("uri").to_pylist()) == ["a", "b"]
    assert set(t.column("batch_id").to_pylist()) == {batch}
    assert lib.handled_sources() == {"a": "ingested", "b": "ingested"}


def test_batch_ids_sort_in_write_order() -> None:
    # part files named by batch id are read in name order, later parts overriding earlier ones:
    # ids made within the same second (or microsecond) must still sort in the order they were made
    ids = [new_batch_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_later_embedding_part_wins(tmp_path) -> None:
    import numpy as np

    from pipeline.library.embeddings import read_embeddings, write_embeddings

    for i in range(20):     # twenty rewrites of one clip's vector, all within a second
        write_embeddings(tmp_path, "caption", "m", ["c1", "c2"][: 1 + i % 2], np.full((1 + i % 2, 4), i), [f"h{i}"] * (1 + i % 2))
    t = read_embeddings(tmp_path, "caption", "m").to_pylist()
    assert {r["clip_id"]: r["input_hash"] for r in t} == {"c1": "h19", "c2": "h19"}


def test_uncommitted_parts_and_temp_files_are_removed_on_open(tmp_path) -> None:
    lib = Library(tmp_path / "lib", write=True)
    lib.commit({"sources": [_source("a")]})
    batch = lib.commit({"sources": [_source("b")]})
    # simulate a crash after the data file but before the commit marker
    (lib.root / "_commits" / f"{batch}.json").unlink()
    (lib.root / "clips" / ".part-x.parquet.123.tmp").write_bytes(b"half")
    lib.close()
    assert Library(lib.root).handled_sources() == {"a": "ingested"}  # readers skip the orphan part
    assert (lib.root / "clips" / ".part-x.parquet.123.tmp").exists()  # ... and never delete anything
    Library(lib.root, write=True)  # the next writer cleans up
    assert not list((lib.root / "clips").glob("*.tmp"))
    assert len(list((lib.root / "sources").glob("part-*.parquet"))) == 1


def test_one_writer_at_a_time_and_readers_never_see_a_batch_in_progress(tmp_path) -> None:
    lib = Library(tmp_path / "lib", write=True)
    with pytest.raises(LibraryError, match="another recap process"):
        Library(lib.root, write=True)
    # a batch whose marker is not written yet (the writer is between parts and marker)
    from pipeline.library.files import atomic_write_table
    from pipeline.library.tables import rows_to_table

    row = _source("z") | {"batch_id": "inflight"}
    atomic_write_table(lib.root / "sources" / "part-inflight.parquet", rows_to_table("sources", [row]))
    assert Library(lib.root).handled_sources() == {}
    assert (lib.root / "sources" / "part-inflight.parquet").exists()
    with pytest.raises(LibraryError, match="read-only"):
        Library(lib.root).commit({"sources": [_source("y")]})
    lib.close()
    Library(lib.root, write=True).close()  # the lock is free again


def test_empty_tables_have_schema(tmp_path) -> None:
    lib = Library(tmp_path / "lib", write=True)
    for table in TABLES:
        assert lib.read(table).num_rows == 0
        assert lib.read(table).schema.equals(table_schema(table))


def test_not_a_library(tmp_path) -> None:
    with pytest.raises(LibraryError, match="not a recap library"):
        Library(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file.txt").write_text("hello")
    with pytest.raises(LibraryError, match="not empty"):
        Library(tmp_path / "x", write=True)


def test_schema_version_mismatch(tmp_path) -> None:
    lib = Library(tmp_path / "lib", write=True)
    meta = json.loads((lib.root / "library.json").read_text())
    meta["schema_version"] = 999
    (lib.root / "library.json").write_text(json.dumps(meta))
    with pytest.raises(LibraryError, match="schema version"):
        Library(lib.root)


def test_parts_are_plain_parquet(tmp_path) -> None:
    duckdb = pytest.importorskip("duckdb")
    lib = Library(tmp_path / "lib", write=True)
    lib.commit({"sources": [_source("a"), _source("b")]})
    part = next((lib.root / "sources").glob("part-*.parquet"))
    assert pq.read_table(part).num_rows == 2
    n = duckdb.sql(f"select count(*) from read_parquet('{lib.root}/sources/*.parquet')").fetchall()[0][0]
    assert n == 2

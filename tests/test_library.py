"""The Parquet library: atomic committed batches, crash recovery, readers (pyarrow, DuckDB)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.library import Library, LibraryError
from pipeline.library.files import new_batch_id
from pipeline.library.layout import utcnow
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


def _read_only(folder) -> None:
    """Make `folder` refuse new files: chmod for a user, the immutable flag for root (whom
    permissions do not stop); skip where neither can be done."""
    import os
    import subprocess

    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    try:
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot make a read-only folder as root here (chattr: {e})")


def _writable_again(folder) -> None:
    import os
    import subprocess

    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


@pytest.mark.parametrize("sub", ["", "clips", "_commits"])
def test_a_library_that_cannot_be_written_is_refused_when_opened(tmp_path, sub) -> None:
    """Not after a whole job's work: opening to write checks every folder a writer needs."""
    with Library(tmp_path / "lib", write=True) as lib:
        lib.commit({"sources": [_source("a.mp4")]})
    folder = tmp_path / "lib" / sub
    _read_only(folder)
    try:
        with pytest.raises(LibraryError, match=f"cannot write {folder}: "):
            Library(tmp_path / "lib", write=True)
        assert Library(tmp_path / "lib").read("sources").num_rows == 1    # still readable
        assert not list((tmp_path / "lib").rglob(".write-check-*"))
    finally:
        _writable_again(folder)
    with Library(tmp_path / "lib", write=True) as lib:                  # and writable once fixed
        lib.commit({"sources": [_source("b.mp4")]})


def test_a_commit_that_cannot_be_written_keeps_the_earlier_batches(tmp_path) -> None:
    """Disk full or a mount gone read-only mid-job: one LibraryError saying the batch was not
    committed; the batches before it stay, and a rerun's open clears the half-written one."""
    lib = Library(tmp_path / "lib", write=True)
    lib.commit({"sources": [_source("a.mp4")]})
    (tmp_path / "lib" / "_commits").rename(tmp_path / "commits-away")
    (tmp_path / "lib" / "_commits").write_text("not a folder")      # the commit marker cannot be written
    with pytest.raises(LibraryError, match="this batch was not committed; rerun"):
        lib.commit({"sources": [_source("b.mp4")]})
    lib.close()
    (tmp_path / "lib" / "_commits").unlink()
    (tmp_path / "commits-away").rename(tmp_path / "lib" / "_commits")
    with Library(tmp_path / "lib", write=True) as again:
        assert again.read("sources").column("uri").to_pylist() == ["a.mp4"]
        assert len(list((tmp_path / "lib" / "sources").glob("part-*.parquet"))) == 1


def test_ingest_into_a_read_only_library_is_one_line_before_any_work(tmp_path) -> None:
    from tests.avfiles import write_video
    from tests.conftest import recap

    with Library(tmp_path / "lib", write=True) as lib:
        lib.commit({"sources": [_source("a.mp4")]})
    video = write_video(tmp_path / "v.mp4", n_frames=50)
    _read_only(tmp_path / "lib" / "clips")
    try:
        out = recap("ingest", str(video), "--out", str(tmp_path / "lib"), "--no-progress", check=False)
    finally:
        _writable_again(tmp_path / "lib" / "clips")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"recap ingest: error: cannot write {tmp_path / 'lib' / 'clips'}: " \
                                 + out.stderr.strip().rsplit(": ", 1)[1]
    assert not list((tmp_path / "lib" / "media").iterdir())     # nothing was decoded or written


def test_a_file_that_cannot_be_written_is_named_and_leaves_nothing(tmp_path) -> None:
    import pyarrow as pa

    from pipeline.library import CannotWrite
    from pipeline.library.files import atomic_write_bytes, atomic_write_table

    folder = tmp_path / "views"
    folder.mkdir()
    _read_only(folder)
    try:
        with pytest.raises(CannotWrite, match=f"^cannot write {folder / 'v.parquet'}: [A-Z][a-z ]+$"):
            atomic_write_table(folder / "v.parquet", pa.table({"a": [1]}))
        with pytest.raises(CannotWrite, match=f"^cannot write {folder / 'v.json'}: [A-Z][a-z ]+$"):
            atomic_write_bytes(folder / "v.json", b"{}")
    finally:
        _writable_again(folder)
    assert not list(folder.iterdir())


def test_filter_on_a_library_it_cannot_write_is_one_line(tmp_path) -> None:
    from tests.conftest import recap
    from tests.test_filters import write_library

    lib = write_library(tmp_path / "lib", n=40)
    (lib / "views").mkdir(exist_ok=True)
    _read_only(lib / "views")
    try:
        out = recap("filter", str(lib), check=False)
    finally:
        _writable_again(lib / "views")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().startswith(f"recap filter: error: cannot write {lib / 'views' / 'filters.parquet'}: ")


def test_index_of_a_library_it_cannot_write_stops_before_embedding(tmp_path) -> None:
    from pipeline.embed import load_index_config, run_index
    from pipeline.library import CannotWrite
    from tests.index_fixtures import make_library

    root = make_library(tmp_path / "lib")
    _read_only(root)
    try:
        with pytest.raises(CannotWrite, match=f"^cannot write {root}: "):
            run_index(root, load_index_config(overrides=["embedders.visual.enabled=false"]), log=lambda _: None)
    finally:
        _writable_again(root)
    assert not (root / "embeddings").exists()      # nothing was embedded for nothing

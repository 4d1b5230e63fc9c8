"""Compaction: thousands of small committed batches become one part per table, readers see the
same rows throughout (also across a crash at any step), the filter view stays fresh, and a reader
whose listing a compaction overtook reads again."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import pipeline.library.files as files
import pipeline.library.tables as tables
from pipeline.library import Library, LibraryError
from pipeline.library.layout import utcnow
from pipeline.library.views import write_view


def _commit_videos(lib: Library, first: int, n: int) -> None:
    """`n` batches of one source row and one error row each (errors only on even videos)."""
    for i in range(first, first + n):
        rows = {"sources": [{"uri": f"v{i}.mp4", "video_id": f"id{i}", "outcome": "ingested", "at": utcnow()}]}
        if i % 2 == 0:
            rows["errors"] = [{"source": f"v{i}.mp4", "video_id": f"id{i}", "stage": "probe", "error_type": "x",
                               "message": "m", "at": utcnow()}]
        lib.commit(rows)


def _uris(lib: Library) -> list[str]:
    return lib.read("sources").column("uri").to_pylist()


def _part_count(root: Path, table: str) -> int:
    return len(list((root / table).glob("part-*.parquet")))


def test_many_batches_become_one_part_per_table_with_the_same_rows(tmp_path) -> None:
    lib = Library(tmp_path / "lib", write=True)
    _commit_videos(lib, 0, 12)
    before = {t: lib.read(t) for t in ("sources", "errors")}
    newest = lib.newest_batch()
    assert lib.compact(min_parts=20) is None                 # under the threshold: nothing to do
    batch = lib.compact(min_parts=8)
    assert batch and batch > newest
    for t, rows in before.items():
        assert lib.read(t).equals(rows)                       # same rows, same order, own batch ids
        assert _part_count(tmp_path / "lib", t) == 1
    assert lib.newest_batch() == newest                       # a compaction adds no rows
    assert [p.name for p in (tmp_path / "lib" / "_commits").iterdir()] == [f"{batch}.compact.json"]

    _commit_videos(lib, 12, 10)             # later batches: only they are merged, the first part stays
    again = lib.compact(min_parts=8)
    assert _uris(lib) == [f"v{i}.mp4" for i in range(22)]
    assert _part_count(tmp_path / "lib", "sources") == 2
    assert sorted(p.name for p in (tmp_path / "lib" / "_commits").iterdir()) == \
        [f"{batch}.compact.json", f"{again}.compact.json"]
    lib.close()


def test_compacted_parts_are_merged_once_they_pile_up(tmp_path, monkeypatch) -> None:
    """Each merge takes only what came since the last one (cheap, however large the library);
    after COMPACT_LEVELS of those, everything becomes one part."""
    monkeypatch.setattr(files, "COMPACT_LEVELS", 3)
    lib = Library(tmp_path / "lib", write=True)
    counts = []
    for k in range(4):
        _commit_videos(lib, 3 * k, 3)
        lib.compact(min_parts=2)
        counts.append(_part_count(tmp_path / "lib", "sources"))
    assert counts == [1, 2, 3, 1]
    assert _uris(lib) == [f"v{i}.mp4" for i in range(12)]
    assert len(list((tmp_path / "lib" / "_commits").iterdir())) == 1
    lib.close()


def test_a_filter_view_stays_fresh_across_a_compaction(tmp_path) -> None:
    lib = Library(tmp_path / "lib", write=True)
    _commit_videos(lib, 0, 6)
    write_view(tmp_path / "lib", _empty_view(), {}, source_batch=lib.newest_batch())
    assert not lib.view_is_stale()
    lib.compact(min_parts=2)
    assert not lib.view_is_stale()
    _commit_videos(lib, 6, 1)
    assert lib.view_is_stale()                                # new rows still make it stale
    lib.close()


def _empty_view():
    from pipeline.library.views import VIEW_SCHEMA
    return VIEW_SCHEMA.empty_table()


def test_a_crash_before_the_marker_leaves_the_library_as_it_was(tmp_path, monkeypatch) -> None:
    lib = Library(tmp_path / "lib", write=True)
    _commit_videos(lib, 0, 6)
    real = tables.atomic_write_bytes

    def crash_on_marker(path, data):
        if path.name.endswith(".compact.json"):
            raise KeyboardInterrupt    # the process dies here: merged parts written, no marker
        real(path, data)
    monkeypatch.setattr(tables, "atomic_write_bytes", crash_on_marker)
    with pytest.raises(KeyboardInterrupt):
        lib.compact(min_parts=2)
    monkeypatch.undo()
    lib.close()
    assert _uris(Library(tmp_path / "lib")) == [f"v{i}.mp4" for i in range(6)]   # merged part not read
    assert _part_count(tmp_path / "lib", "sources") == 7
    Library(tmp_path / "lib", write=True).close()                              # recovery removes it
    assert _part_count(tmp_path / "lib", "sources") == 6


def test_a_crash_after_the_marker_shows_no_row_twice(tmp_path, monkeypatch) -> None:
    lib = Library(tmp_path / "lib", write=True)
    _commit_videos(lib, 0, 6)

    def crash(self, replaced):
        raise KeyboardInterrupt        # the marker is in place, the replaced files are not removed yet
    monkeypatch.setattr(Library, "_remove_replaced", crash)
    with pytest.raises(KeyboardInterrupt):
        lib.compact(min_parts=2)
    monkeypatch.undo()
    lib.close()
    assert _uris(Library(tmp_path / "lib")) == [f"v{i}.mp4" for i in range(6)]
    assert _part_count(tmp_path / "lib", "sources") == 7
    Library(tmp_path / "lib", write=True).close()                              # recovery removes the old ones
    assert _part_count(tmp_path / "lib", "sources") == 1
    assert _uris(Library(tmp_path / "lib")) == [f"v{i}.mp4" for i in range(6)]


def test_a_reader_overtaken_by_a_compaction_reads_again(tmp_path, monkeypatch) -> None:
    writer = Library(tmp_path / "lib", write=True)
    _commit_videos(writer, 0, 6)
    reader = Library(tmp_path / "lib")
    stale = reader.parts("sources")
    writer.compact(min_parts=2)                # removes every file of the reader's listing
    listings = iter([stale])
    real_parts = Library.parts
    monkeypatch.setattr(reader, "parts", lambda table: next(listings, None) or real_parts(reader, table))
    assert _uris(reader) == [f"v{i}.mp4" for i in range(6)]
    writer.close()


def test_a_damaged_compaction_marker_is_named(tmp_path) -> None:
    lib = Library(tmp_path / "lib", write=True)
    _commit_videos(lib, 0, 4)
    batch = lib.compact(min_parts=2)
    lib.close()
    (tmp_path / "lib" / "_commits" / f"{batch}.compact.json").write_text('{"replaces": 3}')
    with pytest.raises(LibraryError, match=r"cannot read a compaction marker"):
        Library(tmp_path / "lib").read("sources")


def test_ingest_compacts_a_library_of_many_batches(tmp_path, monkeypatch) -> None:
    """Each video its own batch (commit_every=1), over the threshold: one part per table after the
    run, every clip there, and the next run adds to it."""
    from pipeline.ingest.config import load_ingest_config
    from pipeline.ingest.job import run_ingest
    from tests.avfiles import write_video

    monkeypatch.setattr(files, "COMPACT_PARTS", 2)
    videos = [str(write_video(tmp_path / f"v{i}.mp4", n_frames=60 + 10 * i)) for i in range(4)]
    cfg = load_ingest_config(overrides=["execution.commit_every=1", "signals.enabled=false"])
    first = run_ingest(videos[:3], tmp_path / "lib", cfg, progress=False)
    lib = Library(tmp_path / "lib")
    assert _part_count(tmp_path / "lib", "clips") == 1 and _part_count(tmp_path / "lib", "sources") == 1
    assert lib.read("clips").num_rows == first.clips > 0
    assert not lib.view_is_stale()
    run_ingest(videos, tmp_path / "lib", cfg, progress=False)
    assert sorted(Library(tmp_path / "lib").handled_sources()) == sorted(videos)
    assert [pq.read_table(p).num_rows for p in sorted((tmp_path / "lib" / "sources").glob("part-*.parquet"))] == [3, 1]
    marker = next((tmp_path / "lib" / "_commits").glob("*.compact.json"))
    assert len(json.loads(marker.read_text())["replaces"]) == 3


def _caption(clip: str, version: str, status: str = "ok", text: str = "a caption") -> dict:
    return {"clip_id": clip, "version": version, "backend": "signals", "model_id": "m", "prompt_id": "p",
            "prompt_sha": "s", "params": "{}", "text": text, "status": status, "attempts": 1}


def test_caption_parts_merge_and_read_the_same(tmp_path, monkeypatch) -> None:
    from pipeline.library import CaptionStore

    store = CaptionStore(tmp_path / "lib")
    store.append([_caption("c1", "v1", "error", ""), _caption("c2", "v1")])
    store.append([_caption("c1", "v1", text="retried")])               # a later row wins
    store.append([_caption("c1", "v2"), _caption("c3", "v2", "flagged")])
    before = (store.read(), store.latest_ok("v1"), store.versions(), store.done("v1"))
    monkeypatch.setattr(files, "COMPACT_PARTS", 3)
    assert store.compact() is None                                       # three parts: not more than 3
    monkeypatch.setattr(files, "COMPACT_PARTS", 2)
    merged = store.compact()
    assert store.parts() == [merged]
    assert (store.read(), store.latest_ok("v1"), store.versions(), store.done("v1")) == before
    latest = store.latest_ok("v1").to_pylist()
    assert {r["clip_id"]: r["text"] for r in latest} == {"c1": "retried", "c2": "a caption"}


def test_caption_merges_are_tiered_so_old_rows_are_not_rewritten_at_every_merge(tmp_path, monkeypatch) -> None:
    """A store that grows by small parts merges only what came since the last merge, until
    COMPACT_LEVELS merged parts pile up; a later row still wins across the tiers."""
    from pipeline.library import CaptionStore

    monkeypatch.setattr(files, "COMPACT_PARTS", 2)
    monkeypatch.setattr(files, "COMPACT_LEVELS", 3)
    store = CaptionStore(tmp_path / "lib")
    merges = []           # (the merged part, the parts after the merge, the first merged part's mtime then)
    for i in range(12):
        store.append([_caption(f"c{i}", "v1"), _caption("c0", "v1", text=f"take {i}")])
        if (made := store.compact()) is not None:
            oldest = store.parts()[0]
            merges.append((made, set(store.parts()), oldest.stat().st_mtime_ns))
    (m0, parts0, t0), (m1, parts1, t1), (m2, parts2, t2), (m3, parts3, _) = merges
    assert parts0 == {m0}                          # parts 1-3 merged
    assert parts1 == {m0, m1} and t1 == t0         # parts 4-6 merged on their own; m0 not rewritten
    assert parts2 == {m0, m1, m2} and t2 == t0
    assert parts3 == {m3}                          # 3 merged parts piled up: everything in one
    assert store.parts()[0] == m3 and len(store.parts()) == 3      # + the two parts written after it
    latest = {r["clip_id"]: r["text"] for r in store.latest_ok("v1").to_pylist()}
    assert latest["c0"] == "take 11" and set(latest) == {f"c{i}" for i in range(12)}


def test_embedding_parts_merge_keep_their_model_and_the_latest_vector(tmp_path, monkeypatch) -> None:
    import numpy as np

    from pipeline.library.embeddings import compact_embeddings, embeddings_dir, read_embeddings, write_embeddings

    rng = np.random.default_rng(0)
    for k in range(4):   # clip c0 is embedded in every part: the last vector is its vector
        write_embeddings(tmp_path, "caption", "model-a", ["c0", f"c{k + 1}"], rng.random((2, 8)), ["h", "h"])
    write_embeddings(tmp_path, "caption", "model-b", ["c0"], rng.random((1, 8)), ["h"])   # another model
    before = read_embeddings(tmp_path, "caption", "model-a")
    monkeypatch.setattr(files, "COMPACT_PARTS", 2)
    merged = compact_embeddings(tmp_path, "caption", "model-a")
    assert merged is not None
    assert len(list(embeddings_dir(tmp_path, "caption").glob("part-*.parquet"))) == 2    # + model-b's part
    assert read_embeddings(tmp_path, "caption", "model-a").equals(before)
    assert read_embeddings(tmp_path, "caption", "model-b").num_rows == 1


def test_a_merge_that_crashed_before_removing_the_old_parts_reads_the_same(tmp_path, monkeypatch) -> None:
    from pipeline.library import CaptionStore

    store = CaptionStore(tmp_path / "lib")
    for i in range(4):
        store.append([_caption(f"c{i}", "v1"), _caption("c0", "v1", text=f"take {i}")])
    before = (store.read(), store.latest_ok("v1"), store.versions())
    monkeypatch.setattr(files, "COMPACT_PARTS", 2)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)   # the process died here
    store.compact()
    monkeypatch.undo()
    assert len(store.parts()) == 5                                       # every row there twice ...
    assert (store.read(), store.latest_ok("v1"), store.versions()) == before    # ... and read once


def test_readers_never_see_a_row_twice_or_lose_one_while_a_writer_compacts(tmp_path) -> None:
    """A reader in another thread (as `recap serve` beside an ingest) reads the sources over and
    over while the writer commits and compacts: every read is whole, without duplicates, and
    never fewer rows than the read before it."""
    import threading

    writer = Library(tmp_path / "lib", write=True)
    _commit_videos(writer, 0, 3)
    seen: list[list[str]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def read_forever() -> None:
        reader = Library(tmp_path / "lib")
        try:
            while not stop.is_set():
                seen.append(_uris(reader))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    thread = threading.Thread(target=read_forever)
    thread.start()
    try:
        for k in range(1, 16):
            _commit_videos(writer, 3 * k, 3)
            writer.compact(min_parts=4)
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert not failures, failures
    assert len(seen) > 10
    counts = [len(u) for u in seen]
    assert all(len(set(u)) == len(u) for u in seen)                     # no row twice
    assert counts == sorted(counts)                                     # none lost ...
    # ... and all there once the writer is done (the thread's last read may have begun before the last commit)
    assert len(_uris(Library(tmp_path / "lib"))) == 48


def test_a_compaction_that_commits_while_a_reader_lists_the_folder_is_listed_again(tmp_path, monkeypatch) -> None:
    """The reader has read the markers; before it lists the table's folder a compaction commits and
    removes the parts it replaced: the listing would miss every row unless the reader notices the
    markers changed and lists again."""
    writer = Library(tmp_path / "lib", write=True)
    _commit_videos(writer, 0, 6)
    reader = Library(tmp_path / "lib")
    real = Library._table_parts
    raced = []

    def compact_first(self, table, live):
        if self is reader and not raced:
            raced.append(writer.compact(min_parts=2))
        return real(self, table, live)
    monkeypatch.setattr(Library, "_table_parts", compact_first)
    assert _uris(reader) == [f"v{i}.mp4" for i in range(6)]
    assert raced[0] is not None
    writer.close()

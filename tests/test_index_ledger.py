"""`recap index` on a library whose store it synced last time does not read the collection back
(index/ledger.py): it believes its record of that sync while the store carries the sync's token
and row count, and reads the store whenever either says something else happened to it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from index.api import ClipIndex
from index.ledger import WRITING, ledger_path
from index.store import MilvusStore
from tests.index_fixtures import clip_id
from tests.test_index_store import caption_only, indexed_library


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    return indexed_library(tmp_path_factory.mktemp("ledger") / "lib")


@pytest.fixture
def lib(indexed, tmp_path) -> Path:
    return Path(shutil.copytree(indexed, tmp_path / "lib"))


@pytest.fixture
def read_backs(monkeypatch) -> list[int]:
    """Counts the real whole-collection reads (MilvusStore.row_hashes) made from now on."""
    calls: list[int] = []
    real = MilvusStore.row_hashes
    monkeypatch.setattr(MilvusStore, "row_hashes", lambda self: calls.append(1) or real(self))
    return calls


def sync(root: Path):
    with ClipIndex(root, caption_only()) as index:
        return index.repair(log=lambda *_: None)


def test_an_unchanged_library_is_synced_without_reading_the_store_back(lib, read_backs):
    assert ledger_path(lib, "clips").is_file()
    rec = sync(lib)
    assert read_backs == [] and rec.missing == rec.extra == rec.stale == [] and not rec.schema_changed
    with ClipIndex(lib, caption_only()) as index:
        assert index.check().missing == [] and read_backs == [1]     # a check reads the store itself


def rewrite_row(root: Path, clip: str, mark_writing: bool) -> None:
    """Change one stored row behind recap's back (same row count), as a sync cut off after its
    first write would leave it (mark_writing) or as another tool would (token untouched)."""
    with ClipIndex(root, caption_only()) as index:
        store = index.store
        assert store.exists()                # (loads the collection)
        row = store.get([clip], sorted(store.describe()))[0]
        row["row_hash"] = "0" * 24
        if mark_writing:
            store.set_sync_token(WRITING)
        store.client.upsert(store.collection, [row])
        store.flush()


def test_a_sync_cut_off_midway_is_not_believed(lib, read_backs):
    rewrite_row(lib, clip_id(2), mark_writing=True)
    rec = sync(lib)
    assert read_backs == [1] and rec.stale == [clip_id(2)] and rec.missing == rec.extra == []
    assert sync(lib).stale == [] and read_backs == [1]               # repaired and recorded again


def test_rows_lost_behind_its_back_show_in_the_count(lib, read_backs):
    with ClipIndex(lib, caption_only()) as index:
        index.store.client.delete(index.store.collection, ids=[clip_id(1), clip_id(5)])
        index.store.flush()
    rec = sync(lib)
    assert read_backs == [1] and sorted(rec.missing) == [clip_id(1), clip_id(5)]
    with ClipIndex(lib, caption_only()) as index:
        assert index.store.count() == rec.rows


def test_another_syncs_token_or_no_record_means_reading_the_store(lib, read_backs):
    with ClipIndex(lib, caption_only()) as index:
        index.store.set_sync_token("0123456789abcdef")                 # e.g. the store of a copied library
    assert sync(lib).stale == [] and read_backs == [1]
    ledger_path(lib, "clips").unlink()
    assert sync(lib).stale == [] and read_backs == [1, 1]
    assert sync(lib).stale == [] and read_backs == [1, 1]             # recorded again: believed


def test_a_row_changed_behind_its_back_with_the_token_intact_is_seen_by_a_check(lib, read_backs):
    """What the record cannot see: another tool rewriting a row in place. `--check` compares with
    the store itself, and drops the record the store contradicts: the next sync repairs the row."""
    rewrite_row(lib, clip_id(4), mark_writing=False)
    assert sync(lib).stale == [] and read_backs == []
    with ClipIndex(lib, caption_only()) as index:
        assert index.check().stale == [clip_id(4)] and read_backs == [1]
    assert not ledger_path(lib, "clips").exists()
    assert sync(lib).stale == [clip_id(4)] and read_backs == [1, 1]
    assert sync(lib).stale == [] and read_backs == [1, 1]


def test_a_store_that_cannot_hold_the_token_is_read_back_every_time(lib, read_backs, monkeypatch):
    """An older Milvus server without collection properties: syncs still work, never from the record."""
    def refuse(self, *args, **kwargs):
        raise RuntimeError("alter collection properties is not supported")

    with ClipIndex(lib, caption_only()) as index:
        index.store.set_sync_token("x")                       # (what the server held before: not ours)
        monkeypatch.setattr(type(index.store.client), "alter_collection_properties", refuse)
        assert index.store.set_sync_token("y") is False
    assert sync(lib).stale == [] and sync(lib).stale == [] and read_backs == [1, 1]

"""A Milvus Lite store that cannot get stuck: damaged stores (built here by truncating, deleting and
overwriting its files, and by a kill -9 while the collection is created) are rebuilt from Parquet
by `recap index` and `recap index --repair`, search never answers "nothing found" from a broken
store, and a store held by another process is named and waited for, while searches go on. An
unchanged library is synced from the record of the last sync (index/ledger.py) without reading the
store back, and any sign that the store changed since makes it read back."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from index.api import ClipIndex
from index.ledger import WRITING, ledger_path
from index.minilm import MiniLMQueryEncoder
from index.store import MilvusStore, StoreBusy
from pipeline.cli import index as index_cli
from pipeline.cli import search as search_cli
from pipeline.embed import load_index_config, run_index
from tests.index_fixtures import clip_id, make_library

ROOT = Path(__file__).resolve().parents[1]
QUERY = "puppy dashing over the shore as the sun goes down"
OFF = ["--set", "embedders.visual.enabled=false"]
VIA_MILVUS = [*OFF, "--set", "milvus.exact_max_clips=0"]     # search the store, not the Parquet vectors


def caption_only():
    return load_index_config(overrides=["embedders.visual.enabled=false"])


def embed_with_numpy(root: Path) -> None:
    """The captions' vectors, made by the NumPy MiniLM (same model, no torch import in this module)."""
    with ClipIndex(root, caption_only()) as index:
        stale = index.stale_embeddings(index.clip_table(), "caption")
        captions = dict(zip(index.clip_table().column("clip_id").to_pylist(),
                            index.clip_table().column("caption").to_pylist()))
        ids = sorted(stale)
        index.save_embeddings("caption", ids, MiniLMQueryEncoder().embed_texts([captions[c] for c in ids]),
                              [stale[c] for c in ids])


def indexed_library(root: Path) -> Path:
    """A synthetic library, embedded with NumPy vectors, with its Lite collection built."""
    make_library(root)
    embed_with_numpy(root)
    run_index(root, caption_only(), embed=False, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    return indexed_library(tmp_path_factory.mktemp("store") / "lib")


@pytest.fixture
def lib(indexed, tmp_path) -> Path:
    """A fresh copy of the indexed library (store included) for one test to damage."""
    return Path(shutil.copytree(indexed, tmp_path / "lib"))


def run_cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


def search_ids(capsys, lib: Path, *extra: str) -> tuple[int, list[str], str]:
    rc = run_cli(search_cli, [lib, QUERY, "--top-k", "3", "--json", *extra])
    out, err = capsys.readouterr()
    return rc, [json.loads(line)["clip_id"] for line in out.splitlines() if line.startswith("{")], err


def garbage(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(n))


def damage(lib: Path, kind: str) -> None:
    db = lib / "milvus.db"
    col = db / "collections" / "clips"
    data = next(col.rglob("data/*.parquet"))
    if kind == "half_created":            # what a kill while Lite creates the collection leaves
        shutil.rmtree(col)
        col.mkdir()
    elif kind == "schema_deleted":
        (col / "schema.json").unlink()
    elif kind == "schema_garbage":
        (col / "schema.json").write_bytes(garbage(500))
    elif kind == "data_truncated":
        data.write_bytes(data.read_bytes()[:1000])
    elif kind == "data_deleted":          # the store then opens and holds no rows
        data.unlink()
    elif kind == "data_garbage":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 3:len(raw) // 3 + 2000] = garbage(2000)
        data.write_bytes(bytes(raw))
    elif kind == "index_garbage":
        next(col.rglob("indexes/*")).write_bytes(garbage(3000))
    elif kind == "manifests_truncated":
        for m in col.glob("manifest.json*"):
            m.write_bytes(b"")
    elif kind == "manifests_deleted":
        for m in col.glob("manifest.json*"):
            m.unlink()
    elif kind == "collections_deleted":
        shutil.rmtree(db / "collections")
    elif kind == "lock_deleted":
        (db / "LOCK").unlink()
    elif kind == "file_in_its_place":
        shutil.rmtree(db)
        db.write_bytes(garbage(4000))
    else:
        raise ValueError(kind)


DAMAGE = ["half_created", "schema_deleted", "schema_garbage", "data_truncated", "data_deleted", "data_garbage",
          "index_garbage", "manifests_truncated", "manifests_deleted", "collections_deleted", "lock_deleted",
          "file_in_its_place"]


@pytest.fixture(scope="module")
def expected(indexed) -> list[str]:
    """The top hits of QUERY from the healthy store."""
    with ClipIndex(indexed, load_index_config(overrides=["embedders.visual.enabled=false",
                                                         "milvus.exact_max_clips=0"])) as index:
        return [h.clip_id for h in index.search(QUERY, top_k=3)]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_store_never_gives_an_empty_answer_and_is_rebuilt(lib, kind, expected, capsys):
    assert len(expected) == 3
    damage(lib, kind)
    # the exact path reads Parquet: the right answer whatever the store's state
    assert search_ids(capsys, lib, *OFF)[:2] == (0, expected)
    # through the store: the right answer, or an error that says what to do; never "nothing found"
    rc, ids, err = search_ids(capsys, lib, *VIA_MILVUS)
    assert (rc, ids) == (0, expected) or (rc == 2 and "recap index" in err and not ids), (rc, ids, err)
    # --repair removes and rebuilds the store from Parquet, whatever state it is in
    assert run_cli(index_cli, [lib, "--repair", *OFF]) == 0
    assert "rebuilding it from Parquet" in capsys.readouterr().out
    assert run_cli(index_cli, [lib, "--check", *OFF]) == 0, capsys.readouterr()
    assert search_ids(capsys, lib, *VIA_MILVUS)[:2] == (0, expected)
    if kind == "file_in_its_place":      # not Lite's: kept beside, never deleted
        assert (lib / "milvus.db.unreadable-1").read_bytes() == garbage(4000)
    # a plain `recap index` (no model needed: nothing is stale) repairs the same damage too
    damage(lib, kind)
    assert run_cli(index_cli, [lib, *OFF]) == 0, capsys.readouterr()
    assert run_cli(index_cli, [lib, "--check", *OFF]) == 0, capsys.readouterr()
    assert search_ids(capsys, lib, *VIA_MILVUS)[:2] == (0, expected)


def test_check_reports_a_damaged_store(lib, capsys):
    damage(lib, "data_truncated")
    assert run_cli(index_cli, [lib, "--check", *OFF]) == 1
    out = capsys.readouterr().out
    assert "differs from Parquet" in out and "is damaged" in out and "--repair" in out


def test_a_folder_that_is_not_lites_is_never_deleted(lib, capsys):
    (lib / "milvus.db" / "notes.txt").write_text("mine")
    assert run_cli(index_cli, [lib, "--repair", *OFF]) == 2
    assert "not removing it" in capsys.readouterr().err
    assert (lib / "milvus.db" / "notes.txt").read_text() == "mine"


KILL_DURING_CREATE = """
import sys, time
from pathlib import Path
import milvus_lite.db
from pipeline.embed import load_index_config, run_index

def stop_here(*args, **kwargs):          # the collection's folder exists, its schema is not written
    Path(sys.argv[2]).write_text("creating")
    time.sleep(600)

milvus_lite.db.save_schema = stop_here
run_index(sys.argv[1], load_index_config(overrides=["embedders.visual.enabled=false"]), embed=False,
          rebuild=True, log=lambda *_: None)
"""


def kill_during_create(lib: Path, tmp_path: Path) -> None:
    marker = tmp_path / "creating"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_CREATE, str(lib), str(marker)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), "the index job never reached collection creation"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (lib / "milvus.db" / "collections" / "clips").is_dir()
    assert not (lib / "milvus.db" / "collections" / "clips" / "schema.json").exists()


@pytest.mark.slow
def test_kill_9_while_the_collection_is_created(lib, tmp_path, expected, capsys):
    kill_during_create(lib, tmp_path)
    assert run_cli(index_cli, [lib, *OFF]) == 0, capsys.readouterr()
    assert search_ids(capsys, lib, *VIA_MILVUS)[:2] == (0, expected)
    kill_during_create(lib, tmp_path)
    assert run_cli(index_cli, [lib, "--repair", *OFF]) == 0, capsys.readouterr()
    assert run_cli(index_cli, [lib, "--check", *OFF]) == 0
    assert search_ids(capsys, lib, *VIA_MILVUS)[:2] == (0, expected)


HOLD = """
import sys
from pymilvus import MilvusClient
client = MilvusClient(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(lib):
    """Another process holding the library's Lite store until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lib / "milvus.db")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "holding"
    yield proc
    if proc.poll() is None:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_a_held_store_names_its_process_and_searches_go_on(lib, holder, expected, capsys):
    short = ["--set", "milvus.lock_wait_s=0.3"]
    assert run_cli(index_cli, [lib, *OFF, *short]) == 2
    err = capsys.readouterr().err
    assert f"in use by pid {holder.pid}" in err and "waiting up to 0.3 s" in err
    assert run_cli(index_cli, [lib, "--repair", *OFF, *short]) == 2
    assert f"in use by pid {holder.pid}" in capsys.readouterr().err
    assert (lib / "milvus.db" / "collections" / "clips" / "schema.json").exists()    # not removed
    # searches share: from Parquet, whichever path is configured
    assert search_ids(capsys, lib, *OFF)[:2] == (0, expected)
    assert search_ids(capsys, lib, *VIA_MILVUS)[:2] == (0, expected)
    with ClipIndex(lib, load_index_config(overrides=["embedders.visual.enabled=false", "milvus.lock_wait_s=0"])) as idx:
        with pytest.raises(StoreBusy, match=f"pid {holder.pid}"):
            idx.repair(log=lambda *_: None, rebuild=True)


def test_index_waits_for_the_store_to_be_released(lib, holder, capsys):
    threading.Timer(1.0, holder.stdin.close).start()     # the other process finishes a moment later
    assert run_cli(index_cli, [lib, "--repair", *OFF, "--set", "milvus.lock_wait_s=120"]) == 0
    assert f"in use by pid {holder.pid}" in capsys.readouterr().err
    assert run_cli(index_cli, [lib, "--check", *OFF]) == 0


@pytest.mark.slow
def test_two_commands_at_once(lib):
    """Real processes: two searches share the library; two index runs take turns."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    recap = [sys.executable, "-m", "pipeline.cli"]

    def both(argv: list[str]) -> list[subprocess.CompletedProcess]:
        procs = [subprocess.Popen(recap + argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]

    searches = both(["search", str(lib), QUERY, "--top-k", "3", "--json", *VIA_MILVUS])
    assert [r.returncode for r in searches] == [0, 0], [r.stderr for r in searches]
    # (one may have found the store held by the other and read Parquet: the same hits, scores to 1e-6)
    hits = [[(h["clip_id"], round(h["score"], 5)) for h in map(json.loads, r.stdout.splitlines())] for r in searches]
    assert hits[0] == hits[1] and clip_id(0) in {c for c, _ in hits[0]}
    runs = both(["index", str(lib), "--repair", *OFF])
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert run_cli(index_cli, [lib, "--check", *OFF]) == 0
    assert sorted(p.name for p in lib.glob("milvus.db*")) == ["milvus.db"]     # nothing left half-removed


# ---- the record of the last sync (index/ledger.py) ------------------------------------------------
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

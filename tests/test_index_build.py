"""Building the collection from Parquet a batch at a time (`index.rows`, `MilvusStore.write`): the
requests made column-wise store exactly what pymilvus' own row path stores, the streamed vectors
are the ones the whole-table read picks (latest part wins, stale ones dropped), and an incremental
repair rewrites only the rows whose scalars or vector bytes changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index.api import ClipIndex, model_id_of
from index.rows import ClipPositions, load_vectors
from index.store import rows_of
from pipeline.embed import load_index_config
from tests.index_fixtures import CLIPS, clip_id, make_library, write_captions

DIM = 8


def config(*extra: str):
    return load_index_config(overrides=["embedders.visual.enabled=false", "milvus.batch_rows=4", *extra])


def embed(root: Path, skip: tuple[int, ...] = (), seed: int = 0) -> dict[str, np.ndarray]:
    """Random unit vectors for the clips' current captions (one part), except clips `skip`."""
    rng = np.random.default_rng(seed)
    with ClipIndex(root, config()) as index:
        stale = index.stale_embeddings(index.clip_table(), "caption")
        ids = [c for c in stale if c not in {clip_id(i) for i in skip}]
        vecs = rng.normal(size=(len(ids), DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        index.save_embeddings("caption", ids, vecs, [stale[c] for c in ids])
    return dict(zip(ids, vecs))


def stored(index: ClipIndex) -> dict[str, dict]:
    fields = sorted(index.store.describe())
    ids = index.clip_table().column("clip_id").to_pylist()
    return {r["clip_id"]: {f: r.get(f) for f in fields} for r in index.store.get(ids, fields)}


def test_columnar_requests_store_what_pymilvus_rows_store(tmp_path):
    root = make_library(tmp_path / "lib")
    embed(root, skip=(3,))                   # one clip without a vector: has_caption false, null vector
    with ClipIndex(root, config()) as index:
        rec = index.repair(log=lambda *_: None)
        assert rec.schema_changed and len(rec.missing) == len(CLIPS) and rec.unembedded == {"caption": 1}
        ours = stored(index)
    with ClipIndex(root, config(f"milvus.uri={tmp_path / 'raw.db'}")) as index, index.desired() as want:
        index.store.create(want.scalars, want.dims)
        for batch in want.source.batches(4):
            index.store.client.insert(index.store.collection, rows_of(batch, index.store.fields()))
        index.store.flush()
        theirs = stored(index)
    assert len(ours) == len(CLIPS) and ours == theirs
    absent = ours[clip_id(3)]
    assert absent["has_caption"] is False and not any(absent["caption_vec"] or [])   # Lite: zeros for null
    assert ours[clip_id(0)]["camera_motion"] == "pan_left" and ours[clip_id(0)]["ocr_text"] is None


def test_streamed_vectors_are_the_latest_current_ones(tmp_path):
    root = make_library(tmp_path / "lib")
    first = embed(root, seed=1)
    rng = np.random.default_rng(2)
    with ClipIndex(root, config()) as index:
        clips = index.clip_table()
        want = index.stale_embeddings(clips, "caption") or {}
        assert want == {}                                          # all current after `embed`
        hashes = dict(zip(clips.column("clip_id").to_pylist(), index.want_hashes(clips, "caption")))
        # a later part, out of clip order, re-embeds three clips (the later vector wins) ...
        again = [clip_id(i) for i in (9, 2, 5)]
        newer = rng.normal(size=(3, DIM)).astype(np.float32)
        index.save_embeddings("caption", again, newer, [hashes[c].decode() for c in again])
        # ... and a still later one holds a stale vector of clip 7 (its latest: no current vector
        # even though an earlier part has one) and a clip the library does not have
        index.save_embeddings("caption", [clip_id(7), "feedfacefeedface"], rng.normal(size=(2, DIM)).astype(np.float32),
                              ["0" * 24, "1" * 24])
        oracle_ids, oracle_vecs = index.current_vectors(clips, "caption")     # the whole-table read
        scratch = load_vectors(root, "caption", model_id_of(index.cfg.embedders["caption"]),
                               ClipPositions(clips.column("clip_id")), index.want_hashes(clips, "caption"))
        try:
            ids = clips.column("clip_id").to_pylist()
            got = scratch.take(np.arange(len(ids)))
            assert sorted(c for c, p in zip(ids, scratch.present) if p) == sorted(oracle_ids)
            oracle = dict(zip(oracle_ids, oracle_vecs))
            for i, c in enumerate(ids):
                if scratch.present[i]:
                    np.testing.assert_array_equal(got[i], oracle[c])
        finally:
            scratch.close()
        assert clip_id(7) not in oracle and np.array_equal(oracle[clip_id(9)], newer[0])
        assert np.array_equal(oracle[clip_id(0)], first[clip_id(0)])
        assert index.stale_embeddings(clips, "caption") == {clip_id(7): hashes[clip_id(7)].decode()}


def test_batches_of_kept_rows_carry_the_full_pass_hashes(tmp_path):
    root = make_library(tmp_path / "lib")
    embed(root)
    with ClipIndex(root, config()) as index, index.desired() as want:
        full = [b for b in want.source.batches(4)]
        assert [len(b) for b in full] == [4, 4, 3]
        keep = np.zeros(len(CLIPS), bool)
        keep[[0, 5, 6, 7, 10]] = True
        kept = list(want.source.batches(2, keep=keep, hashes_only=True))
    assert [len(b) for b in kept] == [2, 2, 1]
    table = [c for b in full for c in b.ids.to_pylist()]
    every = dict(zip(table, [h for b in full for h in b.hashes]))
    ids = [c for b in kept for c in b.ids.to_pylist()]
    assert ids == [table[i] for i in (0, 5, 6, 7, 10)]
    assert [h for b in kept for h in b.hashes] == [every[c] for c in ids]
    assert len(set(every.values())) == len(CLIPS)


def test_repair_rewrites_only_changed_rows(tmp_path):
    root = make_library(tmp_path / "lib")
    embed(root)
    with ClipIndex(root, config()) as index:
        index.repair(log=lambda *_: None)
        assert index.check().clean
        before = stored(index)
        # the same input embedded again with other vector bytes (a retrained local model): stale
        hashes = index.stale_embeddings(index.clip_table(), "caption")
        assert hashes == {}
        want = dict(zip(index.clip_table().column("clip_id").to_pylist(),
                        index.want_hashes(index.clip_table(), "caption")))
        index.save_embeddings("caption", [clip_id(2)], np.ones((1, DIM), np.float32) / np.sqrt(DIM),
                              [want[clip_id(2)].decode()])
        # a caption longer than the field holds (multi-byte): cut at a character boundary
        write_captions(root, {clip_id(4): "é" * 40_000})
        embed(root, seed=3)
        rec = index.check()
        assert rec.missing == [] and rec.extra == [] and sorted(rec.stale) == sorted([clip_id(2), clip_id(4)])
        rec = index.repair(log=lambda *_: None)
        assert sorted(rec.stale) == sorted([clip_id(2), clip_id(4)]) and not rec.schema_changed
        assert index.check().clean
        after = stored(index)
    assert {c for c in after if after[c] != before[c]} == {clip_id(2), clip_id(4)}
    caption = after[clip_id(4)]["caption"]
    assert len(caption.encode()) <= 65535 and caption == "é" * (65535 // 2)

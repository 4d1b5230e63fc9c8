"""Semantic search over a small library with known captions: real MiniLM, real Milvus Lite."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from index.api import ClipIndex, SearchError
from index.store import StoreError
from index.where import WhereError
from pipeline.embed import embed_library, load_index_config, run_index
from pipeline.library import Library
from tests.index_fixtures import CLIPS, clip_id, make_library, write_captions

# paraphrases of the captions (no shared key phrase), and the clip each should find first
QUERIES = [
    ("puppy dashing over the shore as the sun goes down", 0),
    ("someone cutting vegetables for a meal", 1),
    ("drone shot over peaks covered in snow", 2),
    ("fast automobile on a rainy road after dark", 3),
    ("kids playing with sand at the seaside with mum and dad", 4),
    ("water drops hitting foliage in the jungle", 5),
    ("commuters waiting for the metro", 6),
    ("businessman presenting slides in an office", 7),
    ("a kitten napping by the window", 8),
    ("pyrotechnics lighting up the night sky above water", 9),
]


def caption_only_config():
    return load_index_config(overrides=["embedders.visual.enabled=false"])


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    root = make_library(tmp_path_factory.mktemp("lib") / "lib")
    rec = run_index(root, caption_only_config(), log=lambda *_: None)
    assert rec.schema_changed and len(rec.missing) == len(CLIPS)
    return root


@pytest.fixture(scope="module")
def lib(indexed):
    with ClipIndex(indexed, caption_only_config()) as lib:
        yield lib


def test_paraphrased_queries_find_their_clip(lib):
    wrong = []
    for query, want in QUERIES:
        hits = lib.search(query, top_k=3, where="not duplicate")
        if hits[0].clip_id != clip_id(want):
            wrong.append((query, [h.caption for h in hits]))
    assert not wrong, wrong


def test_hits_carry_what_the_cli_shows(lib):
    hit = lib.search("a golden retriever on a beach", top_k=1, where="not duplicate")[0]
    assert hit.rank == 1 and 0 < hit.score <= 1 and hit.clip_id == clip_id(0)
    assert hit.source == "/data/demo.mp4" and hit.start_s == 0.0 and hit.end_s == 4.0
    assert hit.caption == CLIPS[0][0] and hit.video_id == "v" * 32


def test_where_filters_results(lib):
    hits = lib.search("a dog on the beach", top_k=20, where='duration_s > 4 and camera_motion in ["pan_left", "shaky"]')
    assert {h.clip_id for h in hits} == {clip_id(10)}          # clip 0 is 4.0 s, not > 4
    hits = lib.search("a dog on the beach", top_k=20, where="duplicate")
    assert [h.clip_id for h in hits] == [clip_id(10)]
    hits = lib.search("beach", top_k=20, where="not passed")
    assert [h.clip_id for h in hits] == [clip_id(4)]


@pytest.mark.parametrize("where, message", [
    ("motion > 3", "unknown field 'motion'"),
    ("duration_s ~= 3", "unexpected character '~'"),
    ('camera_motion == "dolly"', "not a value of 'camera_motion'"),
    ('clip_id != "" or 1 == 1', "expected a field name"),
    ('caption > 3', "operator '>' needs a number field; 'caption' is a string field"),
    ("n_frames < 99999999999999999999999999", "integer 99999999999999999999999999 is out of range"),
])
def test_where_is_validated(lib, where, message):
    with pytest.raises(WhereError, match=message):
        lib.search("anything", where=where)


def test_like_finds_the_near_duplicate(lib):
    hits = lib.search(like=clip_id(0), top_k=3)
    assert hits[0].clip_id == clip_id(10)
    assert clip_id(0) not in {h.clip_id for h in hits}
    with pytest.raises(SearchError, match="not a clip id"):
        lib.search(like='x" or clip_id != "')
    with pytest.raises(SearchError, match="no clip"):
        lib.search(like="0123456789abcdef")
    with pytest.raises(SearchError, match="needs visual"):
        lib.search("dog", mode="visual")


def test_check_finds_a_deleted_vector_and_repair_restores_it(indexed):
    with ClipIndex(indexed, caption_only_config()) as lib:
        assert lib.check().clean
        before = [(h.clip_id, round(h.score, 5)) for h in lib.search("kids at the seaside", top_k=5)]
        lib.store.delete([clip_id(4)])
        extra = dict(lib.store.get([clip_id(1)], [f for f in lib.store.describe() if f != "clip_id"])[0], clip_id="feedfacefeedface")
        lib.store.upsert([extra])
        lib.store.flush()
        rec = lib.check()
        assert rec.missing == [clip_id(4)] and rec.extra == ["feedfacefeedface"] and not rec.stale
        rec = lib.repair(log=lambda *_: None)
        assert rec.missing == [clip_id(4)] and rec.extra == ["feedfacefeedface"]
        assert lib.check().clean
        after = [(h.clip_id, round(h.score, 5)) for h in lib.search("kids at the seaside", top_k=5)]
        assert after == before


def test_changed_caption_reembeds_one_clip_and_marks_it_stale(tmp_path):
    root = make_library(tmp_path / "lib")
    cfg = caption_only_config()
    run_index(root, cfg, log=lambda *_: None)
    with ClipIndex(root, cfg) as lib:
        # a new caption for one clip in the same version (a retried caption: the latest row wins)
        write_captions(root, {clip_id(8): "A hot air balloon drifts over green hills."})
        rec = lib.check()
        assert rec.missing == [] and rec.stale == [clip_id(8)]       # caption scalar changed
        assert embed_library(lib, cfg.execution, log=lambda *_: None) == {"caption": 1}
        assert embed_library(lib, cfg.execution, log=lambda *_: None) == {"caption": 0}   # nothing left to do
        lib.repair(log=lambda *_: None)
        assert lib.search("balloon floating above the countryside", top_k=1)[0].clip_id == clip_id(8)


def test_rebuild_from_parquet_gives_identical_results(indexed, tmp_path):
    queries = [q for q, _ in QUERIES[:4]]
    with ClipIndex(indexed, caption_only_config()) as lib:
        before = [[(h.clip_id, round(h.score, 5)) for h in lib.search(q, top_k=5)] for q in queries]
        # a new process finds the collection released: opening must load it
        lib.store.client.release_collection(lib.store.collection)
    with ClipIndex(indexed, caption_only_config()) as lib:
        assert [[(h.clip_id, round(h.score, 5)) for h in lib.search(q, top_k=5)] for q in queries] == before
        lib.store.drop()
    # a fresh collection from the Parquet side tables alone (no embedding step)
    rec = run_index(indexed, caption_only_config(), embed=False, log=lambda *_: None)
    assert rec.schema_changed and len(rec.missing) == len(CLIPS)
    with ClipIndex(indexed, caption_only_config()) as lib:
        after = [[(h.clip_id, round(h.score, 5)) for h in lib.search(q, top_k=5)] for q in queries]
    assert after == before


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "milvus" not in p.name}


def test_server_down_is_a_clear_error_and_parquet_is_untouched(tmp_path):
    root = make_library(tmp_path / "lib")
    before = _tree_digest(root)
    with pytest.raises(StoreError, match="cannot connect to Milvus at http://127.0.0.1:9"):
        run_index(root, caption_only_config(), milvus_uri="http://127.0.0.1:9")
    assert _tree_digest(root) == before


def run_cli(module, argv: list[str]) -> int:
    """A `recap` subcommand module run in-process, parsed exactly as pipeline/cli/__init__.py does."""
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_cli_search_json_and_bad_where(indexed, capsys):
    from pipeline.cli import index as index_cli
    from pipeline.cli import search as search_cli

    off = ["--set", "embedders.visual.enabled=false"]
    assert run_cli(search_cli, [str(indexed), "canine running by the sea in the evening", "--top-k", "2", "--json",
                                "--where", "passed and not duplicate", *off]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["clip_id"] == clip_id(0)
    assert run_cli(search_cli, [str(indexed), "dog", "--where", "duration_s > 3; drop", *off]) == 2
    assert "unexpected character ';'" in capsys.readouterr().err
    assert run_cli(search_cli, [str(indexed), "--like", clip_id(0), "--top-k", "1", *off]) == 0
    assert clip_id(10) in capsys.readouterr().out
    assert run_cli(index_cli, [str(indexed), "--check", *off]) == 0
    assert "Milvus matches Parquet" in capsys.readouterr().out


def test_semantic_dedup_groups_the_paraphrased_clip(lib):
    from index.dedup import duplicate_of, semantic_duplicates

    groups = semantic_duplicates(lib, threshold=0.6)
    assert [sorted([g.keep, *g.duplicates]) for g in groups] == [sorted([clip_id(0), clip_id(10)])]
    # keep-best: both pass; neither has aesthetic or sharpness; same size; clip 10 is longer (4.2 s)
    assert duplicate_of(groups) == {clip_id(0): clip_id(10)}
    assert groups[0].min_similarity >= 0.6
    assert semantic_duplicates(lib, threshold=0.99) == []


def _captions(root: Path, version: str = "") -> pa.Table:
    """clip_id, caption, caption_version of the clips the index would embed with `version`."""
    t = Library(root).clip_table(version)
    return t.filter(pc.is_valid(t.column("caption"))).select(["clip_id", "caption", "caption_version"])


def test_caption_version_choice(tmp_path):
    root = make_library(tmp_path / "lib")
    first = _captions(root, load_index_config().captions.version)
    other = write_captions(root, {clip_id(0): "A parrot on a branch."}, model="tiny-vlm", default=False)
    # the default version is still the one embedded; asking for the other one gives its clip only
    assert _captions(root, load_index_config().captions.version).equals(first)
    chosen = _captions(root, load_index_config(overrides=[f"captions.version={other}"]).captions.version)
    assert chosen.column("caption").to_pylist() == ["A parrot on a branch."]
    assert set(chosen.column("caption_version").to_pylist()) == {other}


def test_cli_index_shows_no_loading_bar(tmp_path, capsys):
    """Loading the bundled model says nothing ("Loading weights" bars were printed on every run)."""
    from pipeline.cli import index as index_cli

    root = make_library(tmp_path / "lib")
    assert run_cli(index_cli, [str(root), "--set", "embedders.visual.enabled=false"]) == 0
    captured = capsys.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert f"{len(CLIPS)} clips in the library" in captured.out

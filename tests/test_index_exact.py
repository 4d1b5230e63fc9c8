"""Lite's fast path (an exact scan of the Parquet vectors in this process) gives Milvus' answers;
`--where` takes the same fields as export and caption; `--like` takes a unique prefix of a clip id;
a library with nothing to embed says what to do instead of failing on an empty collection."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from index.api import ClipIndex, SearchError
from index.catalog import compile_for_schema
from index.where import WhereError
from pipeline.cli import index as index_cli
from pipeline.cli import search as search_cli
from pipeline.embed import load_index_config
from pipeline.library import Library
from tests.index_fixtures import CLIPS, clip_id, make_library, write_captions
from tests.test_index_store import OFF, embed_with_numpy, indexed_library, run_cli

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["a dog on the beach", "cooking in a kitchen", "city lights at night", "snow", "people waiting for a train"]
WHERES = [None, "not duplicate", "duration_s > 4", 'camera_motion in ["static", "pan_left"]',
          "passed and duration_s <= 5", "motion_score is null or motion_score > 3", "ocr_text is null",
          'not (camera_motion == "static") and n_frames >= 100', 'caption_version is not null and duration_s > 6.5',
          "duration_s > 100"]


def config(*extra: str):
    return load_index_config(overrides=["embedders.visual.enabled=false", *extra])


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    return indexed_library(tmp_path_factory.mktemp("exact") / "lib")


@pytest.fixture(scope="module")
def both(indexed):
    """The same library searched by the exact scan and through the Milvus Lite store."""
    with ClipIndex(indexed, config()) as fast, ClipIndex(indexed, config("milvus.exact_max_clips=0")) as slow:
        assert fast.uses_exact() and not slow.uses_exact()
        yield fast, slow


def hits(found) -> list[tuple[str, float]]:
    return [(h.clip_id, round(h.score, 5)) for h in found]


def same_hits(a, b) -> bool:
    """The same clips in the same order, scores equal to float32 precision: Milvus Lite sums a
    filtered search's products in another order than an unfiltered one (0.14176 against 0.14175)."""
    return [h.clip_id for h in a] == [h.clip_id for h in b] and \
        all(abs(x.score - y.score) < 1e-5 for x, y in zip(a, b))


@pytest.mark.parametrize("where", WHERES)
def test_exact_scan_gives_milvus_answers(both, where):
    fast, slow = both
    for q in QUERIES[:3]:
        for k in (2, 20):
            a, b = fast.search(q, top_k=k, where=where), slow.search(q, top_k=k, where=where)
            assert same_hits(a, b), (q, k, where, hits(a), hits(b))
            assert [h.to_dict() | {"score": 0} for h in a] == [h.to_dict() | {"score": 0} for h in b]
    for i in (0, 4, 10):
        a, b = fast.search(like=clip_id(i), top_k=4, where=where), slow.search(like=clip_id(i), top_k=4, where=where)
        assert same_hits(a, b), (i, where, hits(a), hits(b))
    assert fast._store is None       # the exact path never opened the store


def test_exact_scan_needs_no_store(indexed, tmp_path):
    lib = Path(shutil.copytree(indexed, tmp_path / "lib"))
    with ClipIndex(lib, config()) as index:
        before = hits(index.search(QUERIES[0], top_k=5))
    shutil.rmtree(lib / "milvus.db")
    with ClipIndex(lib, config()) as index:
        assert hits(index.search(QUERIES[0], top_k=5)) == before
    assert not (lib / "milvus.db").exists()


def test_a_new_caption_is_seen_by_a_long_lived_index(indexed, tmp_path):
    """The exact path keeps what it read while the files are unchanged, and rereads them when not."""
    from tests.index_fixtures import write_captions

    lib = Path(shutil.copytree(indexed, tmp_path / "lib"))
    with ClipIndex(lib, config()) as index:
        assert index.search("a hot air balloon", top_k=1)[0].clip_id != clip_id(8)
        write_captions(lib, {clip_id(8): "A hot air balloon drifts over green hills."})
        # the old vector is stale (its caption changed): clip 8 drops out until it is re-embedded
        assert clip_id(8) not in {h.clip_id for h in index.search("a hot air balloon", top_k=20)}
        embed_with_numpy(lib)
        assert index.search("a hot air balloon", top_k=1)[0].clip_id == clip_id(8)


def test_where_takes_the_fields_export_and_caption_take(both, indexed):
    """One field set: every filterable column of the clip table, `ocr_text` and `caption` included."""
    fast, slow = both
    schema = Library(indexed).clip_table().schema
    for index in both:
        assert set(index.fields()) == set(compile_for_schema("passed", schema).fields)
    for where in ('ocr_text == ""', 'caption == "x"', "file_bytes is null", "caption_version is not null"):
        compile_for_schema(where, schema)              # what export and caption accept ...
        assert same_hits(fast.search("dog", where=where), slow.search("dog", where=where))   # ... search takes
    for where, message in [("n_frames < 99999999999999999999999999", "out of range"),
                           ("duration_s > 1e999", "out of range"), ("ocr_text > 3", "needs a number field")]:
        with pytest.raises(WhereError, match=message) as from_export:
            compile_for_schema(where, schema)
        for index in both:
            with pytest.raises(WhereError) as from_search:
                index.search("dog", where=where)
            assert str(from_search.value) == str(from_export.value)


def test_like_takes_a_unique_prefix(both, capsys):
    ids = [clip_id(i) for i in range(len(CLIPS))]
    want = ids[0]
    prefix = next(want[:n] for n in range(1, 17) if sum(i.startswith(want[:n]) for i in ids) == 1)
    shared = next(a[:1] for a in ids if sum(b.startswith(a[:1]) for b in ids) > 1)
    for index in both:
        assert hits(index.search(like=prefix, top_k=3)) == hits(index.search(like=want, top_k=3))
        with pytest.raises(SearchError, match=f"prefix '{shared}' is ambiguous"):
            index.search(like=shared)
        with pytest.raises(SearchError, match="no clip 'zz'"):
            index.search(like="zz")
    lib = both[0].root
    assert run_cli(search_cli, [lib, "--like", prefix, "--top-k", "1", *OFF]) == 0
    assert run_cli(search_cli, [lib, "--like", shared, *OFF]) == 2
    assert "ambiguous" in capsys.readouterr().err


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_nothing_to_index_says_what_to_do_and_writes_nothing(tmp_path, capsys):
    root = make_library(tmp_path / "lib", with_captions=False)
    before = _digest(root)
    assert run_cli(index_cli, [root, *OFF]) == 2
    err = capsys.readouterr().err
    assert "no captions yet" in err and f"recap caption {root} --model" in err and "--backend signals" in err
    assert "embedders.visual.enabled=true" in err
    assert _digest(root) == before and not (root / "milvus.db").exists()
    for extra in ([], ["--set", "milvus.exact_max_clips=0"]):
        assert run_cli(search_cli, [root, "a dog", *OFF, *extra]) == 2
        assert "no captions yet" in capsys.readouterr().err
    assert run_cli(index_cli, [root, "--repair", *OFF]) == 2
    assert "no captions yet" in capsys.readouterr().err
    assert _digest(root) == before


def test_a_caption_version_that_is_not_there_or_not_indexed_says_so(tmp_path, capsys):
    """--set captions.version=V: a V the library does not have was "no captions yet" (it has some),
    and a V not indexed sent the user to a plain `recap index`, which indexes the default version."""
    root = shutil.copytree(indexed_library(tmp_path / "src" / "lib"), tmp_path / "lib")
    other = write_captions(root, {clip_id(0): "a red kite"}, model="someone/else", default=False)
    for cli in (index_cli, search_cli):
        assert run_cli(cli, [root, *(["a dog"] if cli is search_cli else []), *OFF,
                             "--set", "captions.version=0000nope"]) == 2
        err = capsys.readouterr().err
        assert "captions.version '0000nope' is not a caption version" in err and other in err, err
    assert run_cli(search_cli, [root, "a kite", *OFF, "--set", f"captions.version={other}"]) == 2
    assert f"recap index {root} --set captions.version={other}`" in capsys.readouterr().err
    assert run_cli(index_cli, [root, *OFF, "--set", f"captions.version={other}"]) == 0
    assert run_cli(search_cli, [root, "a kite", *OFF, "--set", f"captions.version={other}"]) == 0
    assert clip_id(0) in capsys.readouterr().out


def test_search_loads_no_torch(indexed):
    """A text query on the bundled model runs MiniLM in NumPy: no torch, no sentence-transformers."""
    code = ("import sys\nfrom index.api import ClipIndex\nfrom pipeline.embed import load_index_config\n"
            f"idx = ClipIndex({str(indexed)!r}, load_index_config(overrides=['embedders.visual.enabled=false']))\n"
            "assert idx.search('a dog', top_k=1)\n"
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'pymilvus') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_rank_fusion_is_milvus_formula():
    """score = sum of 1 / (k + rank), rank from 1; equal scores keep first-seen order, as Milvus Lite's
    ranker does (tests/test_index_visual.py compares whole hybrid searches with Milvus)."""
    from index.exact import rrf

    lists = [[(3, 0.9), (1, 0.8), (7, 0.7)], [(1, 0.95), (5, 0.9), (3, 0.1), (9, 0.05)]]
    got = rrf(lists, 60, 5)
    assert [r for r, _ in got] == [1, 3, 5, 7, 9]
    assert got[0][1] == pytest.approx(1 / 62 + 1 / 61) and got[2][1] == pytest.approx(1 / 62)

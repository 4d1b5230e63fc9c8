"""Several queries at once: `search_many` gives each text the hits `search` gives it, on the exact
scan and through Milvus Lite (hybrid fusion included), embedding all the texts in one forward pass
of each model and asking the store once; `recap search` takes several texts or a --queries-file."""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path

import pytest

from index import exact
from index.api import ClipIndex, SearchError
from index.store import StoreDamaged
from pipeline.cli import search as search_cli
from pipeline.embed import load_index_config, run_index
from tests.index_fixtures import CLIPS, clip_id
from tests.test_index_store import OFF, indexed_library, run_cli
from tests.test_index_visual import visual_lib  # noqa: F401  (the fixture: a library with a tiny CLIP)

DOG = "a golden retriever on a sandy beach"
QUERIES = [DOG, "cooking in a kitchen", "city lights at night", "snow", DOG, "people waiting for a train"]
WHERES = [None, "not duplicate", "duration_s > 4", 'camera_motion in ["static", "pan_left"]', "duration_s > 100"]


def config(*extra: str):
    return load_index_config(overrides=["embedders.visual.enabled=false", *extra])


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    return indexed_library(tmp_path_factory.mktemp("many") / "lib")


@pytest.fixture(scope="module", params=["exact", "milvus"])
def index(request, indexed):
    """The library searched by the exact scan, or through the Lite store (`milvus.exact_max_clips=0`)."""
    with ClipIndex(indexed, config(*(["milvus.exact_max_clips=0"] if request.param == "milvus" else []))) as idx:
        assert idx.uses_exact() == (request.param == "exact")
        yield idx


def same(many, singles) -> None:
    """The same hits, rows and order; scores to float32 rounding (a batch is one matrix product)."""
    assert len(many) == len(singles)
    for a, b in zip(many, singles):
        assert [h.to_dict() | {"score": 0} for h in a] == [h.to_dict() | {"score": 0} for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


class Counter:
    """Wraps a real bound method and counts its calls (the method still does the work)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("where", WHERES)
def test_search_many_gives_each_text_its_search_hits(index, where):
    for k in (2, 20):
        many = index.search_many(QUERIES, top_k=k, where=where)
        same(many, [index.search(q, top_k=k, where=where) for q in QUERIES])
        same([many[0]], [many[4]])                             # the same text twice: the same hits
        assert all(len(hits) == min(k, len(hits)) for hits in many)
    if index.uses_exact():
        assert index._store is None                           # the exact path never opened the store


def test_the_answers_are_the_right_ones(index):
    dog, kitchen, night, snow, _, train = index.search_many(QUERIES, top_k=1)
    assert [h[0].clip_id for h in (dog, kitchen, night, snow, train)] == [clip_id(i) for i in (0, 1, 3, 2, 6)]


def test_one_forward_pass_and_one_ranking_for_all_texts(index, monkeypatch):
    encoder = index.model("caption")                          # the bundled NumPy MiniLM
    forward = Counter(encoder._forward)
    monkeypatch.setattr(encoder, "_forward", forward)
    if index.uses_exact():
        ranking = Counter(exact.ranked)
        monkeypatch.setattr(exact, "ranked", ranking)
    else:
        ranking = Counter(index.store.search)
        monkeypatch.setattr(index.store, "search", ranking)
    many = index.search_many(QUERIES, top_k=3, where="not duplicate")
    assert len(forward.calls) == 1 and list(forward.calls[0][0][0]) == sorted(QUERIES, key=len)
    assert len(ranking.calls) == 1                            # one matrix product / one store.search
    queries = ranking.calls[0][0][1]
    assert len(queries) == len(QUERIES)                       # with every query's vector
    assert [len(h) for h in many] == [3] * len(QUERIES)
    index.search(QUERIES[0], top_k=3)                         # one text: the same path, with one
    assert len(forward.calls) == 2 and list(forward.calls[1][0][0]) == [QUERIES[0]]


def test_inputs_search_many_refuses(index):
    assert index.search_many([]) == []
    with pytest.raises(SearchError, match="list of text queries"):
        index.search_many(DOG)                # a string is not a list of queries
    with pytest.raises(SearchError, match="list of text queries"):
        index.search_many(["a dog", None])


def test_a_store_missing_rows_fails_every_short_query(indexed, tmp_path):
    lib = Path(shutil.copytree(indexed, tmp_path / "lib"))
    with ClipIndex(lib, config("milvus.exact_max_clips=0")) as index:
        before = index.search_many(QUERIES, top_k=3)
        top = {h.clip_id for hits in before for h in hits}
        lost = [c for c in map(clip_id, range(len(CLIPS))) if c not in top]
        assert lost
        index.store.delete(lost)                               # rows no query has among its top 3
        index.store.flush()
        same(index.search_many(QUERIES, top_k=3), before)      # full answers: nothing to doubt
        held = f"holds {len(CLIPS) - len(lost)} of the library's {len(CLIPS)} clips"
        with pytest.raises(StoreDamaged, match=held):
            index.search_many(QUERIES, top_k=len(CLIPS))       # every query short, the store short too
        with pytest.raises(StoreDamaged, match=held):
            index.search_many(QUERIES, top_k=5, where="duration_s > 6")   # 3 clips kept: short answers


# ---- the CLI -------------------------------------------------------------------------------------

def cli(capsys, indexed, *argv) -> tuple[int, str, str]:
    rc = run_cli(search_cli, [indexed, *argv, *OFF])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_one_query_prints_as_before(indexed, capsys):
    rc, out, _ = cli(capsys, indexed, DOG, "--top-k", "2", "--json")
    assert rc == 0
    hits = [json.loads(line) for line in out.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["clip_id"] == clip_id(0) and "query" not in hits[0]
    rc, out, _ = cli(capsys, indexed, DOG, "--top-k", "2")
    assert rc == 0 and out.splitlines()[0].split()[:1] == ["1"] and "query" not in out


def test_cli_several_positional_queries(indexed, capsys):
    with ClipIndex(indexed, config()) as index:
        expected = [[h.to_dict() for h in index.search(q, top_k=2)] for q in (DOG, "snow")]
    rc, out, err = cli(capsys, indexed, DOG, "snow", "--top-k", "2", "--json")
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["query"] for line in lines] == [DOG, "snow"]
    for line, want in zip(lines, expected):                    # each hit has the single-query fields
        assert [h | {"score": 0} for h in line["hits"]] == [h | {"score": 0} for h in want]
    rc, out, err = cli(capsys, indexed, DOG, "snow", "--top-k", "2")
    assert rc == 0, err
    blocks = out.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"query 1 of 2: {DOG}", "query 2 of 2: snow"]
    assert clip_id(0) in blocks[0] and clip_id(2) in blocks[1]
    assert all(b.splitlines()[1].split()[0] == "1" for b in blocks)


def test_cli_queries_file(indexed, capsys, tmp_path, monkeypatch):
    f = tmp_path / "queries.txt"
    f.write_text(f"# prompts for the beach set\n\n{DOG}\n   \n  snow  \n# done\n")
    rc, out, err = cli(capsys, indexed, "--queries-file", f, "--top-k", "1", "--json")
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["query"], [h["clip_id"] for h in x["hits"]]) for x in lines] == \
        [(DOG, [clip_id(0)]), ("snow", [clip_id(2)])]
    # texts given as arguments come first; a file of one query is still grouped by query
    one = tmp_path / "one.txt"
    one.write_text("snow\n")
    rc, out, err = cli(capsys, indexed, "cooking in a kitchen", "--queries-file", one, "--top-k", "1")
    assert rc == 0, err
    assert [line for line in out.splitlines() if line.startswith("query ")] == \
        ["query 1 of 2: cooking in a kitchen", "query 2 of 2: snow"]
    rc, out, err = cli(capsys, indexed, "--queries-file", one, "--top-k", "1", "--json")
    assert rc == 0 and [json.loads(line)["query"] for line in out.splitlines()] == ["snow"]
    monkeypatch.setattr("sys.stdin", io.StringIO("snow\ncity lights at night\n"))    # '-' reads stdin
    rc, out, err = cli(capsys, indexed, "--queries-file", "-", "--top-k", "1", "--json")
    assert rc == 0, err
    assert [json.loads(line)["hits"][0]["clip_id"] for line in out.splitlines()] == [clip_id(2), clip_id(3)]


def test_cli_usage_errors(indexed, capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n   \n")
    rc, out, err = cli(capsys, indexed, "--queries-file", empty)
    assert rc == 2 and not out and "holds no queries" in err and str(empty) in err
    rc, out, err = cli(capsys, indexed, "--queries-file", tmp_path / "missing.txt")
    assert rc == 2 and not out and "cannot read --queries-file" in err
    rc, out, err = cli(capsys, indexed, "snow", "--like", clip_id(0))
    assert rc == 2 and "not both" in err
    rc, out, err = cli(capsys, indexed)
    assert rc == 2 and "give a text query" in err
    rc, out, err = cli(capsys, indexed, "snow", "dog", "--where", "duration_s > 3; drop")
    assert rc == 2 and "unexpected character ';'" in err


# ---- hybrid: the bundled MiniLM and a tiny CLIP ------------------------------------------------------

@pytest.mark.slow     # loads torch, sentence-transformers and a CLIP to index the library (~15 s)
def test_hybrid_search_many_on_both_paths(visual_lib, monkeypatch):  # noqa: F811
    root, model = visual_lib
    cfg = load_index_config(overrides=[f"embedders.visual.model={model}", "embedders.visual.enabled=true",
                                       "embedders.visual.device=cpu", "embedders.caption.device=cpu"])
    run_index(root, cfg, log=lambda *_: None)
    slow_cfg = copy.deepcopy(cfg)
    slow_cfg.milvus.exact_max_clips = 0
    texts = ["a red screen", "blue", "a green picture", "red"]
    with ClipIndex(root, cfg) as fast, ClipIndex(root, slow_cfg) as slow:
        for idx in (fast, slow):
            for mode in ("hybrid", "visual"):
                many = idx.search_many(texts, top_k=4, mode=mode, where="duration_s >= 0.5")
                singles = [idx.search(t, top_k=4, mode=mode, where="duration_s >= 0.5") for t in texts]
                # (equal fused scores may come in either order)
                assert [sorted((-round(h.score, 5), h.clip_id) for h in hits) for hits in many] == \
                    [sorted((-round(h.score, 5), h.clip_id) for h in hits) for hits in singles], (mode, idx)
        clip = slow.model("visual")
        towers = Counter(clip.model.get_text_features)
        monkeypatch.setattr(clip.model, "get_text_features", towers)
        minilm = slow.model("caption")
        forward = Counter(minilm._forward)
        monkeypatch.setattr(minilm, "_forward", forward)
        hybrid = Counter(slow.store.hybrid)
        monkeypatch.setattr(slow.store, "hybrid", hybrid)
        many = slow.search_many(texts, top_k=3, mode="hybrid", where="duration_s >= 1")
        assert len(towers.calls) == 1 and towers.calls[0][1]["input_ids"].shape[0] == len(texts)
        assert len(forward.calls) == 1 and len(hybrid.calls) == 1     # one Milvus hybrid_search for all
        assert [len(v) for v in hybrid.calls[0][0][0].values()] == [len(texts)] * 2
        assert many[0][0].clip_id == "clip0"

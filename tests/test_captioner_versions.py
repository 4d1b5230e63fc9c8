"""Caption versions in the library: one version per model/prompt/parameters, never overwritten,
reruns skip what is done, the default version, the signal captioner, missing weights writing
nothing; through the `recap caption` command (in process, and once on Ray)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from captioner.captioner import signal_spec, version_id, version_spec
from captioner.prompts import load_prompt
from pipeline.caption.config import load_caption_config
from pipeline.library.captions import CaptionStore, read_captions
from pipeline.library.schema import CAPTION_SCHEMA
from tests.captioner_lib import make_library, tiny_model

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "frames.num_frames=2", "--set", "frames.max_pixels=12544", "--set", "generation.max_new_tokens=12",
        "--set", "model.device=cpu", "--quiet"]


def caption(*argv: str) -> int:
    """`recap caption ARGS` in this process (the module the `recap` command dispatches to)."""
    from pipeline.cli import caption as caption_cli

    parser = argparse.ArgumentParser()
    caption_cli.add_arguments(parser)
    return caption_cli.run(parser.parse_args([str(a) for a in argv]))


@pytest.fixture
def library(tmp_path):
    return make_library(tmp_path)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_model(tmp_path_factory, "qwen2_5_vl")


def test_version_id_follows_everything_that_shapes_the_text():
    dense = load_prompt("dense")
    base = version_spec(load_caption_config(None, ["model.id=m"]), dense)
    assert version_id(base) == version_id(version_spec(load_caption_config(None, ["model.id=m"]), dense))
    changed = [version_spec(load_caption_config(None, ["model.id=other"]), dense),
               version_spec(load_caption_config(None, ["model.id=m", "model.revision=abc"]), dense),
               version_spec(load_caption_config(None, ["model.id=m"]), load_prompt("short")),
               version_spec(load_caption_config(None, ["model.id=m", "generation.temperature=0.5"]), dense),
               version_spec(load_caption_config(None, ["model.id=m", "frames.num_frames=16"]), dense),
               version_spec(load_caption_config(None, ["model.id=m", "prompt.hints=false"]), dense),
               version_spec(load_caption_config(None, ["model.id=m", "model.backend=openai"]), dense)]
    ids = {version_id(s) for s in changed}
    assert len(ids) == len(changed) and version_id(base) not in ids
    # batch size and execution settings do not change the text: same version
    same = version_spec(load_caption_config(None, ["model.id=m", "model.batch_size=32", "execution.actors=4"]), dense)
    assert version_id(same) == version_id(base)


def test_store_appends_parts_and_reads_the_latest_row(tmp_path):
    store = CaptionStore(tmp_path)
    cols = {"backend": "signals", "model_id": "x", "revision": None, "prompt_id": "p", "prompt_sha": "s",
            "params": "{}", "attempts": 1}
    store.append([{"clip_id": "a", "version": "v1", "text": "", "status": "error", "reason": "frames: gone", **cols},
                  {"clip_id": "b", "version": "v1", "text": "B.", "status": "ok", **cols}])
    assert store.done("v1") == {"b"}                       # an error row is retried on rerun
    store.append([{"clip_id": "a", "version": "v1", "text": "A.", "status": "ok", **cols}])
    assert store.done("v1") == {"a", "b"}
    latest = store.read("v1")
    assert latest.num_rows == 2 and sorted(latest.column("text").to_pylist()) == ["A.", "B."]
    assert store.read("v1", latest=False).num_rows == 3
    assert all(pq.read_schema(p).equals(CAPTION_SCHEMA) for p in store.parts())
    stale, fresh = store.root / ".part-x.parquet.abc.tmp", store.root / ".part-y.parquet.def.tmp"
    stale.write_bytes(b"half")  # what a crash mid-write leaves ...
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh.write_bytes(b"half")  # ... and what another process may be writing right now
    store.append([{"clip_id": "a", "version": "v2", "text": "A2.", "status": "ok", **cols}])   # the next write cleans up
    assert not stale.exists() and fresh.exists()
    with pytest.raises(KeyError):
        store.set_default("v9")
    store.set_default("v1")
    assert store.default() == "v1" and read_captions(tmp_path).num_rows == 2


def test_signal_captions_for_every_clip_then_rerun_skips(library, capsys):
    lib, clips = library
    assert caption(lib, "--backend", "signals") == 0
    out = capsys.readouterr().out
    assert "measured signals only" in out and "3 clips captioned" in out
    store = CaptionStore(lib)
    version = version_id(signal_spec())
    rows = {r["clip_id"]: r for r in store.read(version).to_pylist()}
    assert set(rows) == {c["clip_id"] for c in clips} and {r["status"] for r in rows.values()} == {"ok"}
    assert "panning left" in rows[clips[0]["clip_id"]]["text"]
    assert store.default() == version                     # first version written becomes the default
    parts = store.parts()
    assert caption(lib, "--backend", "signals") == 0
    assert "0 clips captioned, 3 already done" in capsys.readouterr().out
    assert store.parts() == parts


def test_model_versions_add_up_and_never_overwrite(library, qwen, capsys):
    lib, clips = library
    assert caption(lib, "--backend", "signals") == 0
    assert caption(lib, "--model", qwen, "--local", *FAST) == 0
    store = CaptionStore(lib)
    versions = store.versions()
    assert len(versions) == 2
    dense = versions[1]
    assert dense["model_id"] == str(qwen) and dense["prompt_id"] == "dense" and dense["backend"] == "transformers"
    assert sum(dense["counts"].values()) == 3
    rows = store.read(dense["version"]).to_pylist()
    for r in rows:
        assert r["status"] in ("ok", "flagged") and (r["status"] == "ok" or r["reason"])
        assert r["n_input_tokens"] > 0 and 0 <= r["n_output_tokens"] <= 12 and r["n_frames"] == 2
        assert r["latency_s"] > 0 and r["attempts"] >= 1
    before = store.read(latest=False)

    assert caption(lib, "--model", qwen, "--local", *FAST) == 0          # rerun: nothing to do
    assert "0 clips captioned, 3 already done" in capsys.readouterr().out
    assert caption(lib, "--model", qwen, "--local", "--prompt", "short", "--make-default", *FAST) == 0
    after = store.read(latest=False)
    assert after.num_rows == before.num_rows + 3
    short = [v for v in store.versions() if v["prompt_id"] == "short"][0]
    assert store.default() == short["version"]
    old_rows = before.to_pylist()
    assert [r for r in after.to_pylist() if r["batch_id"] in {o["batch_id"] for o in old_rows}] == old_rows
    assert caption(lib, "--set-default", dense["version"]) == 0 and store.default() == dense["version"]
    capsys.readouterr()
    assert caption(lib, "--list") == 0
    listing = capsys.readouterr().out
    assert f"* {dense['version']}" in listing and short["version"] in listing


def test_where_and_filter_view_select_clips(library, capsys):
    lib, clips = library
    assert caption(lib, "--backend", "signals", "--where", "clip_mode == 'remux'") == 0
    assert {r["clip_id"] for r in CaptionStore(lib).read().to_pylist()} == {clips[1]["clip_id"]}
    assert caption(lib, "--backend", "signals", "--where", "no_such_column > 1") == 2
    assert "no_such_column" in capsys.readouterr().err


def test_only_clips_that_pass_the_filter_view_unless_all(library, capsys):
    import pyarrow as pa

    from pipeline.library.schema import VIEW_SCHEMA
    from pipeline.library.views import write_view

    lib, clips = library
    ids = [c["clip_id"] for c in clips]
    view = pa.Table.from_pylist([{"clip_id": ids[0], "passed": True, "reject_reasons": [], "duplicate_of": None},
                                 {"clip_id": ids[1], "passed": False, "reject_reasons": ["motion.min"],
                                  "duplicate_of": None},
                                 {"clip_id": ids[2], "passed": True, "reject_reasons": [], "duplicate_of": None}],
                                schema=VIEW_SCHEMA)
    write_view(lib, view, {})
    assert caption(lib, "--backend", "signals") == 0
    store = CaptionStore(lib)
    assert {r["clip_id"] for r in store.read().to_pylist()} == {ids[0], ids[2]}
    capsys.readouterr()
    assert caption(lib, "--backend", "signals", "--all", "--where", "not passed") == 0
    assert "1 clips captioned, 0 already done, 1 selected" in capsys.readouterr().out
    assert {r["clip_id"] for r in store.read().to_pylist()} == set(ids)


def test_unreadable_clip_is_an_error_row_and_is_retried(library, qwen):
    lib, clips = library
    moved = lib / "media" / "enc.mp4.away"
    (lib / "media" / "enc.mp4").rename(moved)
    assert caption(lib, "--model", qwen, "--local", *FAST) == 3             # some clips failed
    store = CaptionStore(lib)
    rows = {r["clip_id"]: r for r in store.read().to_pylist()}
    bad = rows[clips[0]["clip_id"]]
    assert bad["status"] == "error" and bad["reason"].startswith("frames: ")
    moved.rename(lib / "media" / "enc.mp4")
    assert caption(lib, "--model", qwen, "--local", *FAST) == 0
    assert store.done(bad["version"]) == {c["clip_id"] for c in clips}


def test_missing_model_is_a_clear_error_and_writes_nothing(library, capsys):
    lib, _ = library
    assert caption(lib, "--model", lib.parent / "no-such-model", "--local") == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "hf download" in err and "nothing was written" in err
    # a hub id not in the cache: recap does not go to the network for it unless asked (a fresh
    # process with the hub online but unreachable, so an attempt would show as a connection error)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(lib.parent / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    code = ("import argparse, sys; from pipeline.cli import caption as c; p = argparse.ArgumentParser(); "
            "c.add_arguments(p); sys.exit(c.run(p.parse_args(sys.argv[1:])))")
    proc = subprocess.run([sys.executable, "-c", code, str(lib), "--model", "recap-test/no-such-vlm"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "recap-test/no-such-vlm" in proc.stderr and "hf download recap-test/no-such-vlm" in proc.stderr
    assert "not found in the local Hugging Face cache (recap downloads nothing unless asked" in proc.stderr
    assert not CaptionStore(lib).parts()


@pytest.mark.slow
def test_ray_actor_pool_captions_the_library(library, qwen, capsys):
    """The real stage: frame preparation as Ray tasks, generation in a one-actor pool."""
    lib, clips = library
    assert caption(lib, "--model", qwen, *FAST) == 0
    rows = CaptionStore(lib).read().to_pylist()
    assert {r["clip_id"] for r in rows} == {c["clip_id"] for c in clips}
    assert {r["status"] for r in rows} <= {"ok", "flagged"} and all(r["n_frames"] == 2 for r in rows)


@pytest.mark.slow
def test_frame_preparation_stays_its_own_stage(library, qwen):
    """Ray Data must not fuse decoding into the generation actors (the GPU would wait on it)."""
    from pipeline.caption.job import caption_stages, select_clips
    from pipeline.stages.runner import ray_dataset
    from tests.captioner_lib import fast_config

    lib, clips = library
    cfg = fast_config(qwen)
    ds = ray_dataset(caption_stages(cfg, str(lib)), select_clips(lib), cfg.execution)
    assert len(list(ds.iter_rows())) == len(clips)
    stats = ds.stats()
    assert "MapBatches(caption_frames)" in stats and "MapBatches(caption)" in stats
    assert "MapBatches(caption_frames)->MapBatches(caption)" not in stats

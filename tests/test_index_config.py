"""Index config values are checked when the config loads, with a message naming the key; a bad
value stops `recap index` before anything is written (no unloadable collection, no traceback)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.cli import index as index_cli
from pipeline.embed import load_index_config
from tests.index_fixtures import make_library
from tests.test_index_store import OFF, run_cli
from trainer.typedconfig import ConfigError


@pytest.mark.parametrize("override, message", [
    ("milvus.lite_index=BOGUS", "milvus.lite_index: 'BOGUS' is not one Milvus Lite builds"),
    ("milvus.lite_index=IVF_PQ", "milvus.lite_index: 'IVF_PQ'"),
    ("milvus.server_index=DISKANN2", "milvus.server_index: 'DISKANN2'"),
    ("milvus.batch_rows=0", "milvus.batch_rows: must be an integer >= 1, got 0"),
    ("milvus.batch_rows=-5", "milvus.batch_rows: must be an integer >= 1, got -5"),
    ("milvus.timeout_s=0", "milvus.timeout_s: must be a number >= 0.001, got 0"),
    ("milvus.timeout_s=nan", "milvus.timeout_s:"),
    ("milvus.lock_wait_s=-1", "milvus.lock_wait_s: must be a number >= 0"),
    ("milvus.exact_max_clips=-1", "milvus.exact_max_clips: must be an integer >= 0"),
    ("milvus.index_params.nlist=0", "milvus.index_params.nlist: must be an integer >= 1, got 0"),
    ("milvus.index_params.efconstruction=200", "milvus.index_params.efconstruction: unknown (known: M, "),
    ("milvus.search_params.ef=-1", "milvus.search_params.ef: must be an integer >= 1"),
    ("milvus.uri=localhost:19530", "milvus.uri: 'localhost:19530' is neither a server"),
    ("milvus.uri=http://", "milvus.uri: 'http://' is not a server address"),
    ("milvus.collection=my-clips", "milvus.collection: 'my-clips' is not a collection name"),
    ("embedders.caption.batch_size=0", "embedders.caption.batch_size: must be an integer >= 1, got 0"),
    ("embedders.visual.frames=0", "embedders.visual.frames: must be an integer >= 1, got 0"),
    ("embedders.caption.device=gpu", "embedders.caption.device: 'gpu' is not one of"),
    ("embedders.caption.model=", "embedders.caption.model: empty"),
    ("rrf_k=0", "rrf_k: must be an integer >= 1, got 0"),
    ("dedup.threshold=1.5", "dedup.threshold: must be a cosine similarity in [-1, 1], got 1.5"),
    ("dedup.neighbours=0", "dedup.neighbours: must be an integer >= 1, got 0"),
])
def test_bad_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_index_config(overrides=[override])


def test_good_values_load():
    cfg = load_index_config(overrides=["milvus.lite_index=HNSW", "milvus.uri=http://milvus:19530",
                                       "milvus.server_index=IVF_FLAT", "embedders.caption.device=cuda:1",
                                       "milvus.uri=/data/other.db", "milvus.exact_max_clips=0"])
    assert cfg.milvus.is_lite() and cfg.milvus.lite_index == "HNSW" and cfg.milvus.exact_max_clips == 0


def test_cli_refuses_a_bad_index_type_before_writing(tmp_path: Path, capsys):
    root = make_library(tmp_path / "lib")
    assert run_cli(index_cli, [root, *OFF, "--set", "milvus.lite_index=BOGUS"]) == 2
    assert "milvus.lite_index: 'BOGUS'" in capsys.readouterr().err
    assert not (root / "milvus.db").exists() and not (root / "embeddings").exists()
    assert run_cli(index_cli, [root, *OFF, "--set", "milvus.batch_rows=0"]) == 2
    assert "milvus.batch_rows" in capsys.readouterr().err

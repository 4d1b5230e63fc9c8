"""The proof: a tiny DiT trained through the real commands (samples --semantic -> ingest -> caption
--from -> export -> train -> sample) follows its prompts, and the number means something: without
the prompt, or untrained, the same count falls to chance. See bench/prompt_following.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.prompt_following import run_proof


def test_trained_model_follows_its_prompts(tmp_path: Path):
    started = time.perf_counter()
    report = run_proof(tmp_path, per_pair=4, seeds_per_caption=2)
    r = report["results"]
    print(json.dumps(report, indent=1))
    assert "64 clips captioned" in report["import"]                   # every video -> one clip -> its caption
    assert r["guided"]["samples"] == 32
    assert r["guided"]["follows"] >= 0.8, r
    assert r["unconditional"]["follows"] <= 0.3, r                    # chance is 1/16
    assert r["untrained"]["follows"] <= 0.3, r
    assert r["extension"]["follows"] >= 0.75, r                       # continues colour and direction
    assert (Path(report["contact_sheet"])).is_file()
    assert time.perf_counter() - started < 15 * 60

"""The proof chain: a tiny DiT trained through the real commands (samples --semantic -> ingest ->
caption --from -> export -> train -> sample) follows what its captions say, and the numbers mean
something: without the prompt, or untrained, they fall to chance. See bench/prompt_following.py.

Measured on the 2-core machine (~6.5-7 minutes in all, 4.7 of them training): colour and direction
together 100% with guidance and without (chance: 1/16), 0-3% without the prompt, 0% untrained.
The test holds the issue's bar (>= 80%) with room for a machine whose floating point differs. Its
time is not asserted (no timed asserts): `make test` prints the slowest tests' durations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.prompt_following import run_proof


@pytest.mark.slow
@pytest.mark.timeout(1800)   # 5-8 min on a quiet 2-core machine, 10+ under load: pytest's default 600 s is no margin
def test_trained_model_follows_its_prompts(tmp_path: Path):
    report = run_proof(tmp_path, per_pair=4, seeds_per_caption=2)
    r = report["results"]
    print(json.dumps(report, indent=1))
    assert "64 clips captioned" in report["import"]                   # every video -> one clip -> its caption
    assert r["guided"]["samples"] == 32
    assert r["guided"]["follows"] >= 0.8, r                           # colour and direction both right
    assert r["guided"]["colour"] >= 0.9, r
    assert r["no_guidance"]["follows"] >= 0.5, r
    assert r["unconditional"]["follows"] <= 0.25, r                   # without the prompt: chance is 1/16
    assert r["unconditional"]["colour"] <= 0.5, r                     # ... and 1/4 for the colour alone
    assert r["untrained"]["follows"] <= 0.25 and r["untrained"]["colour"] <= 0.5, r
    assert r["extension"]["follows"] >= 0.75, r                       # continuing real clips keeps their motion
    assert Path(report["contact_sheet"]).is_file()

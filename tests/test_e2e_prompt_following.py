"""The proof chain: a tiny DiT trained through the real commands (samples --semantic -> ingest ->
caption --from -> export -> train -> sample) picks up what its captions say, and the numbers mean
something: without the prompt, or untrained, they fall to chance. See bench/prompt_following.py.

What a 2-core CPU run reaches in ~4 minutes (measured, see the report in the test output): the
colour of the prompt ~100% of the time, colour and direction together ~35% (chance: 1/16). The
issue's target of 80% for colour and direction together is not reached at this budget, so this
test guards the chain and the conditioning, with margins, not that target.
"""

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
    assert r["guided"]["colour"] >= 0.9, r                            # the prompt's colour
    assert r["no_guidance"]["colour"] >= 0.8, r
    assert r["unconditional"]["colour"] <= 0.5, r                     # without the prompt: chance is 1/4
    assert r["untrained"]["colour"] <= 0.5, r
    assert r["guided"]["follows"] > r["untrained"]["follows"], r
    assert Path(report["contact_sheet"]).is_file()
    assert time.perf_counter() - started < 15 * 60

"""The prompt-following tracker (tests/support/measure_motion.py) reads colour and direction correctly
from the ground-truth semantic videos, at their own size and at the exported training size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.samples.semantic import (
    CAPTIONS_FILE,
    COLOURS,
    DIRECTIONS,
    TRUTH_FILE,
    caption_for,
    semantic_frames,
    write_semantic_samples,
)
from tests.support.measure_motion import follows, name_colour, parse_caption, track
from trainer.shards import decode_mp4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("semantic")
    write_semantic_samples(out, seed=3, per_pair=2)
    return out


def downscale(frames: np.ndarray, size: int, step: int) -> np.ndarray:
    """What export makes of a clip: every `step`-th frame, area-resized to size x size."""
    import cv2
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames[::step]])


def test_corpus_files_and_captions(corpus: Path):
    import json
    truth = json.loads((corpus / TRUTH_FILE).read_text())
    lines = [json.loads(line) for line in (corpus / CAPTIONS_FILE).read_text().splitlines()]
    assert len(truth["videos"]) == len(lines) == 2 * len(COLOURS) * len(DIRECTIONS)
    for line in lines:
        v = truth["videos"][line["uri"]]
        assert (corpus / line["uri"]).is_file()
        assert line["caption"] == caption_for(v["colour"], v["direction"])
        assert parse_caption(line["caption"]) == (v["colour"], v["direction"])


@pytest.mark.parametrize("size,step", [(64, 1), (32, 2), (16, 4)])
def test_tracker_reads_the_ground_truth(corpus: Path, size: int, step: int):
    import json
    truth = json.loads((corpus / TRUTH_FILE).read_text())["videos"]
    right = 0
    for name, v in truth.items():
        frames = downscale(decode_mp4((corpus / name).read_bytes()), size, step)
        right += follows(frames, v["caption"])
    assert right / len(truth) >= 0.95, f"{right}/{len(truth)} read correctly at {size} px"


def test_no_object_and_no_motion_are_not_guessed():
    rng = np.random.default_rng(0)
    still = np.repeat(semantic_frames(rng, "red", "left", 32, 9)[:1], 9, axis=0)
    found = track(still)
    assert found.colour == "red" and found.direction is None
    blank = np.full((9, 32, 32, 3), 40, np.uint8)
    assert track(blank).colour is None and not follows(blank, caption_for("red", "left"))


def test_colour_names_and_caption_parsing():
    for name, rgb in COLOURS.items():
        assert name_colour(np.array(rgb)) == name
    assert name_colour(np.array([200, 90, 60])) == "red"          # an orange-ish red is still red
    assert parse_caption("A Yellow square moving UP on a dark background") == ("yellow", "up")
    assert parse_caption("a cat") == (None, None)

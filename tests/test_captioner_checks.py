"""Caption checks, prompt assembly with signal hints, and the deterministic signal caption (no model)."""

from __future__ import annotations

import pytest

from captioner.checks import check_caption, repetition_reason, strip_boilerplate
from captioner.prompts import load_prompt, signal_facts
from captioner.signal_caption import signal_caption

GOOD = ("A woman in a red raincoat walks a small white dog along a wet cobblestone street at dusk. "
        "Shop windows glow warm yellow behind her while the camera tracks alongside at waist height.")


@pytest.mark.parametrize("raw", [
    "The video shows a woman in a red raincoat walking a dog.",
    "This clip depicts a woman in a red raincoat walking a dog.",
    "In this video, a woman in a red raincoat walking a dog.",
    "Sure! Here is a detailed description of the video: a woman in a red raincoat walking a dog.",
    "Here's a description of the clip: The video shows a woman in a red raincoat walking a dog.",
])
def test_boilerplate_openings_are_stripped(raw):
    assert strip_boilerplate(raw).startswith("A woman in a red raincoat")


def test_content_that_merely_starts_like_boilerplate_is_kept():
    text = "The video game console sits on a shelf next to a lamp."
    assert strip_boilerplate(text) == text


@pytest.mark.parametrize("text", [
    "a dog a dog a dog a dog",
    "The cat sat on the mat. " * 12,
    GOOD + " and the camera moves and the camera moves and the camera moves and the camera moves",
    "erpleerpleerpleerpleerpleerpleerpleerple",
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
])
def test_repetition_loops_are_detected(text):
    assert repetition_reason(text) == "repetition"
    verdict = check_caption(text, hit_token_limit=False)
    assert (verdict.status, verdict.reason, verdict.retryable) == ("flagged", "repetition", True)


def test_ordinary_dense_caption_passes():
    assert repetition_reason(GOOD) is None
    assert check_caption(GOOD, hit_token_limit=False) == check_caption(GOOD, False, 5)
    assert check_caption(GOOD, False).status == "ok" and check_caption(GOOD, False).reason is None


def test_empty_and_short_are_flagged_for_retry():
    assert check_caption("  \n\n ", False).reason == "empty"
    assert check_caption("The video shows", False).reason == "empty"
    short = check_caption("A dog.", False, min_words=5)
    assert (short.status, short.reason, short.retryable) == ("flagged", "too_short", True)


def test_truncated_output_is_trimmed_to_its_last_sentence_or_flagged():
    cut = GOOD + " Then a cyclist rides past and the"
    trimmed = check_caption(cut, hit_token_limit=True)
    assert (trimmed.status, trimmed.reason, trimmed.text) == ("ok", "trimmed", GOOD)
    hopeless = check_caption("A woman in a red raincoat walks her dog along the", hit_token_limit=True)
    assert (hopeless.status, hopeless.reason, hopeless.retryable) == ("flagged", "truncated", False)
    # the same text that ended on its own is fine
    assert check_caption(cut, hit_token_limit=False).status == "ok"


def test_prompt_hints_come_from_measured_signals_only():
    dense = load_prompt("dense")
    row = {"camera_motion": "pan_left", "ocr_text": "OPEN DAILY", "motion_score": 3.0}
    facts = signal_facts(row)
    assert facts == ["camera: pans left", 'on-screen text (OCR, may contain errors): "OPEN DAILY"']
    with_hints = dense.render(facts)
    assert "Measured facts" in with_hints and "pans left" in with_hints and "OPEN DAILY" in with_hints
    bare = dense.render(signal_facts({"camera_motion": None, "ocr_text": ""}))
    assert "Measured facts" not in bare and "{hints}" not in bare
    assert bare.startswith("Describe this video clip") and "80 to 200 words" in bare
    assert load_prompt("short").sha != dense.sha


def test_prompt_from_a_file_and_unknown_prompt(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Say what happens.")
    p = load_prompt(str(path))
    assert p.id == "mine" and p.render(["camera: static"]).startswith("Say what happens.\nMeasured facts")
    with pytest.raises(FileNotFoundError, match="dense"):
        load_prompt("no-such-prompt")


def test_signal_caption_is_deterministic_and_uses_what_is_measured():
    row = {"clip_id": "c", "duration_s": 4.2, "camera_motion": "pan_left", "motion_score": 5.0, "brightness": 180.0,
           "colorfulness": 80.0, "contrast": 20.0, "bars": "letterbox", "ocr_text": "BREAKING NEWS",
           "width": 1280, "height": 720, "fps": 25.0}
    text = signal_caption(row)
    assert text == signal_caption(dict(row))
    for phrase in ("4.2-second", "panning left", "moderate motion", "bright", "vivid colours", "low contrast",
                   "letterboxed", '"BREAKING NEWS"', "1280x720 at 25 fps"):
        assert phrase in text, phrase
    bare = signal_caption({"clip_id": "c", "duration_s": 2.0, "camera_motion": None, "brightness": 30.0})
    assert bare == "A 2.0-second shot. The picture is dark."


# every sentence the signal caption can write, as a pattern: what is filled in is a phrase of its kind
_NOUN = r"(almost no colour|muted colours|rich colours|vivid colours|low contrast|high contrast)"
_SENTENCES = [
    r"A( \d+\.\d-second)? shot( filmed with a ([a-z]+ )*camera( [a-z]+)*(, with [a-z ]+ motion)?| with [a-z ]+ motion)?\.",
    rf"The picture is (dark|dim|evenly lit|bright)(, with {_NOUN}( and {_NOUN})?)?\.",
    rf"The picture has {_NOUN}( and {_NOUN})?\.",
    r"The frame is (letter|pillar|window)boxed\.",
    r"\d+x\d+( at \d+ fps)?\.",
]


def test_signal_captions_are_whole_sentences_for_every_combination():
    import itertools
    import re

    levels = {"motion_score": [None, 0.1, 1.0, 5.0, 30.0], "camera_motion": [None, "static", "zoom_in", "shaky"],
              "brightness": [None, 30.0, 80.0, 120.0, 200.0], "colorfulness": [None, 5.0, 20.0, 50.0, 90.0],
              "contrast": [None, 10.0, 50.0, 90.0], "bars": [None, "none", "pillarbox"]}
    for values in itertools.product(*levels.values()):
        row = dict(zip(levels, values), duration_s=3.0, width=640, height=360, fps=25.0)
        text = signal_caption(row)
        sentences = re.split(r"(?<=\.) (?=[A-Z0-9])", text)
        for s in sentences:
            assert any(re.fullmatch(p, s) for p in _SENTENCES), f"not a sentence we write: {s!r} in {text!r}"

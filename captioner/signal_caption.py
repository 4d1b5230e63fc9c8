"""The signal caption: a deterministic sentence or two built from a clip's measured signals
(camera motion, motion level, brightness, contrast, colourfulness, black bars, on-screen text,
duration). No model and no pixels: it says how the clip was filmed, not what it shows. It is what
the offline demo uses when no VLM weights are available, stored as its own caption version.
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "recap/signals"
REVISION = "2"          # bump when the wording rules change: a new version, old captions kept
PROMPT_ID = "signals"

CAMERA = {
    "static": "a static camera", "pan_left": "a camera panning left", "pan_right": "a camera panning right",
    "tilt_up": "a camera tilting up", "tilt_down": "a camera tilting down",
    "zoom_in": "a camera zooming in", "zoom_out": "a camera zooming out", "shaky": "a shaky handheld camera",
}


def _level(value: float | None, cuts: list[tuple[float, str]]) -> str | None:
    if value is None:
        return None
    for limit, word in cuts:
        if value < limit:
            return word
    return cuts[-1][1]


def signal_caption(row: dict[str, Any]) -> str:
    """Caption of one clips/ row from whichever signal columns it has (absent or null ones are skipped)."""
    motion = _level(row.get("motion_score"), [(0.5, "almost no motion"), (3.0, "gentle motion"),
                                              (15.0, "moderate motion"), (float("inf"), "fast motion")])
    camera = CAMERA.get(row.get("camera_motion") or "")
    light = _level(row.get("brightness"), [(50, "dark"), (100, "dim"), (170, "evenly lit"), (float("inf"), "bright")])
    colour = _level(row.get("colorfulness"), [(10, "almost no colour"), (35, "muted colours"),
                                              (70, "rich colours"), (float("inf"), "vivid colours")])
    contrast = _level(row.get("contrast"), [(25, "low contrast"), (70, None), (float("inf"), "high contrast")])

    # training text: whole sentences a person would write, whichever signals are missing
    shot = f"A {row['duration_s']:.1f}-second shot" if row.get("duration_s") is not None else "A shot"
    if camera:
        shot += f" filmed with {camera}" + (f", with {motion}" if motion else "")
    elif motion:
        shot += f" with {motion}"
    parts = [shot + "."]
    qualities = " and ".join(w for w in (colour, contrast) if w)   # noun phrases
    if light:
        parts.append(f"The picture is {light}" + (f", with {qualities}." if qualities else "."))
    elif qualities:
        parts.append(f"The picture has {qualities}.")
    bars = row.get("bars")
    if bars and bars != "none":
        parts.append(f"The frame is {bars}ed." if bars.endswith("box") else f"The frame has {bars} bars.")
    text = (row.get("ocr_text") or "").strip()
    if text:
        parts.append(f'On-screen text reads "{text[:160]}".')
    if row.get("width") and row.get("height"):
        parts.append(f"{row['width']}x{row['height']}" + (f" at {row['fps']:.0f} fps." if row.get("fps") else "."))
    return " ".join(parts)

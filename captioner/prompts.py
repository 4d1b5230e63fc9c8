"""Prompt templates (`configs/prompts/<id>.txt`) and the measured-signal hints fed into them.

A template is plain text with one `{hints}` placeholder. With hints on, it is filled from
`configs/prompts/hints.txt` and one line per measured fact the clip has (camera motion, on-screen
text); a clip without measured facts gets no hint section at all. The prompt id and a hash of the
template text both go into the caption version, so editing a template makes a new version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.typedconfig import default_config

PROMPT_DIR = default_config("prompts")

CAMERA_PHRASES = {
    "static": "static (locked off)", "pan_left": "pans left", "pan_right": "pans right",
    "tilt_up": "tilts up", "tilt_down": "tilts down", "zoom_in": "zooms in (or moves forward)",
    "zoom_out": "zooms out (or moves back)", "shaky": "handheld, shaky",
}


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    text: str
    hints_text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256((self.text + "\0" + self.hints_text).encode()).hexdigest()[:12]

    def render(self, facts: list[str] | None = None) -> str:
        hints = self.hints_text.format(facts="\n".join(f"- {f}" for f in facts)).strip() if facts else ""
        return self.text.replace("{hints}", hints).strip()


def load_prompt(id_or_path: str) -> PromptTemplate:
    """`dense` / `short` (files in configs/prompts/) or a path to a .txt template."""
    path = Path(id_or_path)
    if path.suffix == ".txt" and path.is_file():
        prompt_id = path.stem
    else:
        path = PROMPT_DIR / f"{id_or_path}.txt"
        prompt_id = id_or_path
        if not path.is_file():
            known = sorted(p.name.removesuffix(".txt") for p in PROMPT_DIR.iterdir()
                           if p.name.endswith(".txt") and p.name != "hints.txt")
            raise FileNotFoundError(f"unknown prompt {id_or_path!r}: known {known}, or give a path to a .txt file")
    text = path.read_text()
    if "{hints}" not in text:
        text = text.rstrip() + "\n{hints}\n"
    return PromptTemplate(prompt_id, text, (PROMPT_DIR / "hints.txt").read_text())


def signal_facts(row: dict[str, Any]) -> list[str]:
    """Hint lines from a clip row's measured signals; columns that are absent or null are skipped."""
    facts = []
    camera = row.get("camera_motion")
    if camera:
        facts.append(f"camera: {CAMERA_PHRASES.get(camera, camera.replace('_', ' '))}")
    text = (row.get("ocr_text") or "").strip()
    if text:
        facts.append(f'on-screen text (OCR, may contain errors): "{text[:200]}"')
    return facts

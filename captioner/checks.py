"""Caption checks: strip boilerplate openings, and flag empty, too short, truncated and
degenerate (repetition loop) outputs with a reason.

`check_caption` returns the cleaned text, a status and a reason:
  ok        usable caption (reason None, or `trimmed`: it hit the token limit and was cut back to
            its last complete sentence)
  flagged   not usable as is: `empty`, `too_short`, `repetition` or `truncated`
The captioner retries flagged outputs (with sampling) before storing the last verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RETRYABLE = ("empty", "too_short", "repetition")

# Openings that carry no information: "Sure! Here is a description:", "In this video, ...",
# "The video shows ...", "This clip depicts ...". Applied repeatedly, longest first.
_LEADS = [
    r"(sure|certainly|of course|okay|ok)[!,.]?\s+(here(\s+is|'s)\s+[^:\n]{0,80}:\s*)?",
    r"here(\s+is|'s)\s+(a|the|my)\s+[^:\n]{0,80}:\s*",
    r"(in|throughout)\s+(this|the)\s+(video|clip|footage|scene|sequence)(\s+clip)?,?\s+",
    r"(the|this)\s+(video|clip|footage|scene|sequence|animation|image sequence|frames?)(\s+clip)?\s+"
    r"(shows|depicts|features|captures|presents|displays|showcases|portrays|begins with|opens with|is of)(\s+|$)",
    r"(description|caption)\s*:\s*",
]
_LEAD_RE = re.compile(r"^\s*(?:" + "|".join(_LEADS) + ")", re.I)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


@dataclass(frozen=True)
class Verdict:
    text: str
    status: str          # "ok" | "flagged"
    reason: str | None   # None | trimmed | empty | too_short | repetition | truncated

    @property
    def retryable(self) -> bool:
        return self.status == "flagged" and self.reason in RETRYABLE


def strip_boilerplate(text: str) -> str:
    """Remove chatty or template openings and capitalise what is left."""
    text = text.strip().strip('"').strip()
    for _ in range(3):
        stripped = _LEAD_RE.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return text[:1].upper() + text[1:] if text else text


def repetition_reason(text: str, min_repeats: int = 3, max_n: int = 12) -> str | None:
    """`repetition` when the text loops: a word n-gram (n <= max_n) repeated back to back at least
    `min_repeats` times covering a third of the text, the text ending in 4+ repeats of its last
    n words (a loop cut off by the token limit), a tail made of one repeated character pattern,
    or very few distinct word 4-grams in a long text."""
    words = text.split()
    n_words = len(words)
    if n_words >= 6:
        low = [w.lower().strip(".,;:!?") for w in words]
        for n in range(1, min(max_n, n_words // min_repeats) + 1):
            # a run of positions j with low[j] == low[j + n] is a block of period n
            run = 0
            for j in range(n_words - n):
                run = run + 1 if low[j] == low[j + n] else 0
                if run >= (min_repeats - 1) * n and run + n >= max(n_words / 3, 6):
                    return "repetition"
            # a loop still running when generation stopped: the last n words, 4+ times in a row
            tail = low[-n:]
            count = 1
            while count * n + n <= n_words and low[n_words - (count + 1) * n:n_words - count * n] == tail:
                count += 1
            if count >= 4 and count * n >= 6:
                return "repetition"
        if n_words >= 40:
            grams = [tuple(low[i:i + 4]) for i in range(n_words - 3)]
            if len(set(grams)) / len(grams) < 0.5:
                return "repetition"
    # character loops without spaces ("abababab...", "!!!!!!!")
    m = re.search(r"(.{1,12}?)\1{5,}$", text[-200:], re.S)
    if m and len(m.group(0)) >= 24:
        return "repetition"
    return None


def trim_to_sentence(text: str) -> str:
    """Text up to its last complete sentence ('' when there is none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:ends[-1]].strip() if ends else ""


def check_caption(raw: str, hit_token_limit: bool, min_words: int = 5) -> Verdict:
    """Clean `raw` and judge it; `hit_token_limit` says generation stopped at max_new_tokens."""
    text = strip_boilerplate(raw)
    if not text.strip():
        return Verdict("", "flagged", "empty")
    if repetition_reason(text):
        return Verdict(text, "flagged", "repetition")
    if hit_token_limit:
        trimmed = trim_to_sentence(text)
        if len(trimmed.split()) >= min_words:
            return Verdict(trimmed, "ok", "trimmed")
        return Verdict(text, "flagged", "truncated")
    if len(text.split()) < min_words:
        return Verdict(text, "flagged", "too_short")
    return Verdict(text, "ok", None)

"""Import captions that came with a corpus (alt text, human or model captions) as their own caption
version: `recap caption LIB --from FILE.jsonl`.

Each line of FILE names a source video and, optionally, a time range:

    {"uri": "videos/a.mp4", "start_s": 0.0, "end_s": 4.5, "caption": "a dog runs on a beach"}

(`text` is accepted for `caption`; a relative uri is taken from FILE's folder, as in ingest
manifests; no range means the whole video). A clip takes the caption of the line of its video
whose range covers most of the clip, if that covers at least `min_overlap` of the clip's duration.
The version is the hash of the file's content, so importing the same file twice adds nothing and
an edited file is a new version.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.captioner import version_id
from pipeline.ingest.sources import json_lines, manifest_entry
from pipeline.library import Library
from pipeline.library.layout import storable

IMPORT_BACKEND = "import"


@dataclass
class ImportSummary:
    version: str = ""
    lines: int = 0
    matched_clips: int = 0            # clips given a caption by this run
    already: int = 0                  # clips that had this version already
    unmatched_clips: int = 0          # clips of the library no line covers
    unused_lines: int = 0             # lines that matched no clip
    unknown_sources: list[str] = field(default_factory=list)   # uris not in the library


def _seconds(value: Any, where: str, key: str) -> float | None:
    """A line's `start_s` / `end_s` (None when absent): a finite number, or the text of one. NaN
    would compare false with every bound and so cover the whole video; a list, a bool or a word
    is a mistake in the file, said with its line."""
    if value is None:
        return None
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"{where}: {key} must be a number of seconds, not {value!r}")
    return seconds


def read_caption_lines(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a caption file, uris resolved like ingest resolves manifest entries."""
    path = Path(path)
    out = []
    for number, record in json_lines(path):
        text = record.get("caption", record.get("text")) if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(record.get("uri"), str) or not record["uri"] \
                or not isinstance(text, str):
            raise ValueError(f"{path}:{number}: a line needs 'uri' and 'caption' (or 'text')")
        start = _seconds(record.get("start_s"), f"{path}:{number}", "start_s")
        end = _seconds(record.get("end_s"), f"{path}:{number}", "end_s")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"{path}:{number}: end_s must be after start_s")
        # storable: the name as the library stores it (a non-UTF-8 name written by json.dumps as \udcNN)
        out.append({"uri": storable(manifest_entry(path.parent, str(record["uri"])).uri), "text": text.strip(),
                    "start_s": start, "end_s": end, "line": number})
    if not out:
        raise ValueError(f"{path}: no captions")
    return out


def overlap(clip_start: float, clip_end: float, start: float | None, end: float | None) -> float:
    """Share of the clip [clip_start, clip_end) that [start, end) covers (None = open end)."""
    lo = clip_start if start is None else max(clip_start, start)
    hi = clip_end if end is None else min(clip_end, end)
    return max(0.0, hi - lo) / max(clip_end - clip_start, 1e-9)


def import_captions(lib_root: str | Path, path: str | Path, min_overlap: float = 0.5) -> ImportSummary:
    """Store the captions of `path` for the clips they cover as one new caption version."""
    lib = Library(lib_root)
    with lib.lock("caption"):
        return _import(lib, Path(path), min_overlap)


def _import(lib: Library, path: Path, min_overlap: float) -> ImportSummary:
    lines = read_caption_lines(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    params = {"min_overlap": min_overlap}
    spec = {"backend": IMPORT_BACKEND, "model_id": path.name, "revision": None, "prompt_id": IMPORT_BACKEND,
            "prompt_sha": sha[:16], "params": params}
    summary = ImportSummary(version=version_id(spec), lines=len(lines))
    video_of_uri = {uri: video_id for video_id, uri in lib.source_uris().items()}
    clips = lib.read("clips", ["clip_id", "video_id", "start_s", "end_s"]).to_pylist()
    by_video: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if line["uri"] in video_of_uri:
            by_video.setdefault(video_of_uri[line["uri"]], []).append(line)
        elif line["uri"] not in summary.unknown_sources:
            summary.unknown_sources.append(line["uri"])

    store = lib.captions
    done = store.done(summary.version)
    used: set[int] = set()
    rows = []
    for clip in clips:
        best, best_share = None, 0.0
        for line in by_video.get(clip["video_id"], []):
            share = overlap(clip["start_s"], clip["end_s"], line["start_s"], line["end_s"])
            if share > best_share:
                best, best_share = line, share
        if best is None or best_share < min_overlap:
            summary.unmatched_clips += 1
            continue
        used.add(best["line"])
        if clip["clip_id"] in done:
            summary.already += 1
            continue
        rows.append({"clip_id": clip["clip_id"], "version": summary.version, "backend": IMPORT_BACKEND,
                     "model_id": path.name, "revision": None, "prompt_id": IMPORT_BACKEND,
                     "prompt_sha": sha[:16], "params": json.dumps(params | {"line": best["line"]}),
                     "text": best["text"], "status": "ok" if best["text"] else "flagged",
                     "reason": None if best["text"] else "empty", "attempts": 0})
    summary.unused_lines = len(lines) - len(used)
    store.append(rows)
    summary.matched_clips = len(rows)
    if store.default() is None and rows:
        store.set_default(summary.version)  # like a captioning run: the first version written is the default
    return summary


__all__ = ["import_captions", "read_caption_lines", "overlap", "ImportSummary", "IMPORT_BACKEND"]

"""A small clip library with known captions and signals, written through the real library writer."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from captioner.captioner import version_id
from pipeline.library import Library
from pipeline.library.views import write_view

# (caption, duration_s, camera_motion, passed, duplicate_of index or None)
CLIPS = [
    ("A golden retriever runs along a sandy beach at sunset, waves rolling in behind it.", 4.0, "pan_left", True, None),
    ("A chef slices onions on a wooden cutting board in a busy restaurant kitchen.", 6.0, "static", True, None),
    ("Aerial view of a snowy mountain range with a winding road through the valley.", 8.0, "pan_right", True, None),
    ("A red sports car speeds down a wet city street at night under neon signs.", 3.0, "pan_right", True, None),
    ("Two children build a sandcastle while their parents watch from beach chairs.", 5.0, "static", False, None),
    ("A close-up of raindrops falling on a green leaf in a tropical forest.", 2.5, "zoom_in", True, None),
    ("A crowded subway platform as a train pulls into the station during rush hour.", 7.0, "static", True, None),
    ("A man in a suit gives a presentation to colleagues in a glass meeting room.", 4.5, "tilt_up", True, None),
    ("A cat sleeps curled up on a sunny windowsill next to a potted plant.", 3.5, "static", True, None),
    ("Fireworks explode in colourful bursts over a river, reflected in the water.", 6.5, "zoom_out", True, None),
    ("A dog sprints across the sand by the ocean in the evening light.", 4.2, "shaky", True, 0),
]


def clip_id(i: int) -> str:
    return hashlib.blake2b(f"clip{i}".encode(), digest_size=8).hexdigest()


def make_library(root: Path, with_captions: bool = True) -> Path:
    """Write videos/, clips/, the filter view and (optionally) captions/ for CLIPS."""
    lib = Library(root, write=True)
    now = datetime.now(timezone.utc)
    video_id = "v" * 32
    videos = [{"video_id": video_id, "uri": "/data/demo.mp4", "ingested_at": now}]
    clips = []
    t = 0.0
    for i, (_, dur, *_rest) in enumerate(CLIPS):
        n = int(dur * 25)
        clips.append({"clip_id": clip_id(i), "video_id": video_id, "shot_index": i, "clip_index": i,
                      "start_frame": int(t * 25), "end_frame": int(t * 25) + n, "n_frames": n, "start_s": t,
                      "end_s": t + dur, "duration_s": dur, "fps": 25.0, "width": 640, "height": 360,
                      "clip_mode": "reference", "path": None})
        t += dur
    for i, (row, c) in enumerate(zip(clips, CLIPS)):
        row.update({"camera_motion": c[2], "motion_score": float(i)})
    lib.commit({"videos": videos, "clips": clips})
    lib.close()
    ids = [clip_id(i) for i in range(len(CLIPS))]
    view = pa.table({
        "clip_id": ids,
        "passed": [c[3] for c in CLIPS],
        "reject_reasons": [[] if c[3] else ["motion.min"] for c in CLIPS],
        "duplicate_of": [None if c[4] is None else clip_id(c[4]) for c in CLIPS],
    })
    write_view(root, view, {})
    if with_captions:
        write_captions(root, {ids[i]: c[0] for i, c in enumerate(CLIPS)})
    return root


def write_captions(root: Path, captions: dict[str, str], model: str = "recap/signals", default: bool = True) -> str:
    """Caption rows as `recap caption` writes them (one new version per model); returns the version."""
    spec = {"backend": "signals", "model_id": model, "revision": None, "prompt_id": "dense", "prompt_sha": "0", "params": "{}"}
    version = version_id(spec)
    store = Library(root).captions
    store.append([{**spec, "clip_id": c, "version": version, "text": t, "status": "ok", "attempts": 1}
                  for c, t in captions.items()])
    if default:
        store.set_default(version)
    return version

"""Print a summary of a clip library: videos, shots, clips, durations and failures."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from pipeline.filters.evaluate import reason_counts
from pipeline.library import CaptionStore, Library, LibraryError
from pipeline.library.views import read_view


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lib", metavar="LIB", help="library folder")


def run(args: argparse.Namespace) -> int:
    try:
        lines = summary_lines(Library(args.lib))
    except LibraryError as e:      # not a library, or a damaged file of one
        print(f"recap info: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def summary_lines(lib: Library) -> list[str]:
    """Human summary of a library (also used by the demo)."""
    videos = lib.read("videos").to_pylist()
    shots = lib.read("shots", ["start_transition"]).column("start_transition").to_pylist()
    clips = lib.read("clips", ["duration_s", "clip_mode", "file_bytes"]).to_pylist()
    errors = lib.read("errors", ["error_type", "source"]).to_pylist()
    video_s = sum(v["duration_s"] or 0 for v in videos)
    clip_s = sum(c["duration_s"] for c in clips)
    lines = [
        f"library {lib.root}",
        f"  videos  {len(videos):>6}  {video_s:8.1f} s" + ("   codecs: " if videos else "")
        + ", ".join(f"{k}={v}" for k, v in Counter(v["video_codec"] for v in videos).most_common()),
        f"  shots   {len(shots):>6}" + ("              starts: " if shots else "")
        + ", ".join(f"{k}={v}" for k, v in Counter(shots).most_common()),
        f"  clips   {len(clips):>6}  {clip_s:8.1f} s   ({100 * clip_s / video_s if video_s else 0:.0f}% of video kept)",
    ]
    if clips:
        durations = sorted(c["duration_s"] for c in clips)
        lines.append(f"          length min/median/max {durations[0]:.2f}/{durations[len(durations) // 2]:.2f}/"
                     f"{durations[-1]:.2f} s; files {sum(c['file_bytes'] or 0 for c in clips) / 1e6:.1f} MB")
    damaged = [v for v in videos if v.get("decode_warnings")]
    if damaged:
        lines.append(f"  damaged {len(damaged):>6}   videos ingested from what decoded (see videos.decode_warnings), "
                     f"e.g. {Path(damaged[0]['uri']).name}: {damaged[0]['decode_warnings']}")
    lines.append(f"  errors  {len(errors):>6}" + ("   " + ", ".join(
        f"{k}={v}" for k, v in Counter(e["error_type"] for e in errors).most_common()) if errors else ""))
    if not clips:   # `recap filter` and `recap caption` would refuse: say why instead of sending the user there
        lines.append("  no clips yet: nothing to filter or caption (see errors/, and the videos' n_clips against "
                     "clips.min_seconds)")
        return lines
    lines += _view_lines(lib) + _caption_lines(lib.captions)
    return lines


def _view_lines(lib: Library) -> list[str]:
    found = read_view(lib.root)
    if found is None:
        return ["  filter  (no view yet: run `recap filter`)"]
    view = found[0]
    kept = sum(view.column("passed").to_pylist())
    reasons = ", ".join(f"{k}={v}" for k, v in list(reason_counts(view).items())[:5])
    lines = [f"  passed  {kept:>6}   of {view.num_rows}" + (f"; rejected for {reasons}" if reasons else "")]
    if lib.view_is_stale():
        lines.append("  warning: the filter view is older than the newest clips (they count as not passed): "
                     "run `recap filter`")
    return lines


def _caption_lines(store: CaptionStore) -> list[str]:
    versions = store.versions()
    if not versions:
        return ["  captions (none yet: run `recap caption`)"]
    default = store.default()
    return [f"  captions version {v['version']}{' (default)' if v['version'] == default else ''}: "
            f"{sum(v['counts'].values())} clips ("
            + ", ".join(f"{k} {n}" for k, n in v["counts"].items()) + f"), {v['model_id'] or v['backend']}"
            for v in versions]

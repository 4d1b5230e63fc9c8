"""Print a summary of a clip library: videos, shots, clips, durations and failures.

`--json` prints the same figures as one JSON object, for scripts and monitoring. `--errors` lists
the sources that are failing now (their latest outcome an error; one a later run ingested is not
listed): each one's uri, and where and why it failed (with --json, a JSON list)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.cli.display import one_line
from pipeline.filters.evaluate import reason_counts
from pipeline.library import CaptionStore, Library, LibraryError
from pipeline.library.views import read_view


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lib", metavar="LIB", help="library folder")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--errors", action="store_true",
                   help="list the sources failing now, with where and why, instead of the summary")


def run(args: argparse.Namespace) -> int:
    try:
        lib = Library(args.lib)
        if args.errors:
            found = lib.failing_sources()
            print(json.dumps(found, indent=2, ensure_ascii=False, default=lambda t: t.isoformat()) if args.json
                  else "\n".join(failure_lines(found)))
            return 0
        summary = library_summary(lib)
    except LibraryError as e:      # not a library, or a damaged file of one
        print(f"recap info: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else "\n".join(summary_lines(summary)))
    return 0


def failure_lines(found: list[dict[str, Any]]) -> list[str]:
    """`Library.failing_sources` for a person: the uri, then its kind, stage and message (less the uri it repeats)."""
    if not found:
        return ["no failing sources"]
    lines = [f"{len(found)} failing source(s) (`error`: bad input, retried only with sources.retry_errors; "
             "`failed`: retried by the next run):"]
    for f in found:
        message = str(f.get("message") or "")
        message = message[len(f["uri"]):].lstrip(": ") if message.startswith(f["uri"]) else message
        lines += [f"  {one_line(f['uri'])}",
                  f"      {f['outcome']}: {f.get('error_type') or '?'} at {f.get('stage') or '?'}: {one_line(message)}"]
    return lines


def library_summary(lib: Library) -> dict[str, Any]:
    """What `recap info` reports, as data: counts, durations (seconds), error kinds, the filter
    view's verdicts (None before `recap filter`), the caption versions and the last ingest run."""
    videos = lib.read("videos", ["uri", "duration_s", "video_codec", "decode_warnings"]).to_pylist()
    shots = lib.read("shots", ["start_transition"]).column("start_transition").to_pylist()
    clips = lib.read("clips", ["duration_s", "clip_mode", "file_bytes"]).to_pylist()
    failing = lib.failing_sources()
    video_s = sum(v["duration_s"] or 0 for v in videos)
    clip_s = sum(c["duration_s"] for c in clips)
    durations = sorted(c["duration_s"] for c in clips)
    damaged = [v for v in videos if v.get("decode_warnings")]
    return {
        "library": str(lib.root),
        "videos": {"count": len(videos), "seconds": video_s,
                   "codecs": dict(Counter(v["video_codec"] for v in videos).most_common()),
                   "damaged": len(damaged),
                   "damaged_example": ({"uri": damaged[0]["uri"], "decode_warnings": damaged[0]["decode_warnings"]}
                                       if damaged else None)},
        "shots": {"count": len(shots), "starts": dict(Counter(shots).most_common())},
        "clips": {"count": len(clips), "seconds": clip_s, "share_of_video": clip_s / video_s if video_s else 0.0,
                  "length_s": ({"min": durations[0], "median": durations[len(durations) // 2], "max": durations[-1]}
                               if clips else None),
                  "file_bytes": sum(c["file_bytes"] or 0 for c in clips)},
        "errors": {"count": len(failing), "kinds": dict(Counter(f.get("error_type") for f in failing).most_common())},
        "removed_sources": sum(1 for outcome in lib.handled_sources().values() if outcome == "removed"),
        "filter": _view_summary(lib) if clips else None,
        "captions": _caption_summary(lib.captions) if clips else [],
        "ingest_runs": _runs_summary(lib.meta.get("runs", [])),
    }


def _runs_summary(runs: Any) -> dict[str, Any]:
    """How many ingest runs library.json records, and the last one's time, command and counts (a
    record edited by hand into another shape counts as none)."""
    runs = runs if isinstance(runs, list) else []
    last = runs[-1] if runs and isinstance(runs[-1], dict) else None
    return {"count": len(runs), "last": {k: last.get(k) for k in ("at", "command", "summary")} if last else None}


def _view_summary(lib: Library) -> dict[str, Any] | None:
    found = read_view(lib.root)
    if found is None:
        return None
    view = found[0]
    return {"passed": sum(view.column("passed").to_pylist()), "of": view.num_rows,
            "rejected_for": reason_counts(view), "stale": lib.view_is_stale()}


def _caption_summary(store: CaptionStore) -> list[dict[str, Any]]:
    default = store.default()
    return [{"version": v["version"], "default": v["version"] == default, "counts": v["counts"],
             "model": v["model_id"] or v["backend"]} for v in store.versions()]


def _errors_command(s: dict[str, Any]) -> str:
    return f"`recap info {shlex.quote(s['library'])} --errors`"


def summary_lines(s: dict[str, Any]) -> list[str]:
    """`library_summary` for a person."""
    videos, shots, clips, errors = s["videos"], s["shots"], s["clips"], s["errors"]
    lines = [
        f"library {s['library']}",
        f"  videos  {videos['count']:>6}  {videos['seconds']:8.1f} s" + ("   codecs: " if videos["count"] else "")
        + ", ".join(f"{k}={v}" for k, v in videos["codecs"].items()),
        f"  shots   {shots['count']:>6}" + ("              starts: " if shots["count"] else "")
        + ", ".join(f"{k}={v}" for k, v in shots["starts"].items()),
        f"  clips   {clips['count']:>6}  {clips['seconds']:8.1f} s   ({100 * clips['share_of_video']:.0f}% of video kept)",
    ]
    if clips["length_s"]:
        length = clips["length_s"]
        lines.append(f"          length min/median/max {length['min']:.2f}/{length['median']:.2f}/"
                     f"{length['max']:.2f} s; files {clips['file_bytes'] / 1e6:.1f} MB")
    if videos["damaged"]:
        example = videos["damaged_example"]
        lines.append(f"  damaged {videos['damaged']:>6}   videos ingested from what decoded (see videos.decode_warnings), "
                     f"e.g. {one_line(Path(example['uri']).name)}: {example['decode_warnings']}")
    lines.append(f"  errors  {errors['count']:>6}" + ("   " + ", ".join(
        f"{k}={v}" for k, v in errors["kinds"].items()) + f" (listed by {_errors_command(s)})" if errors["count"] else ""))
    if s["removed_sources"]:
        lines.append(f"  removed {s['removed_sources']:>6}   sources taken out with `recap remove` (not ingested again)")
    last = s["ingest_runs"]["last"]
    if last:
        done = last["summary"] if isinstance(last["summary"], dict) else {}
        try:
            what = (f"{done.get('ingested', 0)} ingested, {done.get('failed', 0)} failed, {done.get('clips', 0)} clips "
                    f"in {float(done.get('wall_seconds', 0)):.1f} s")
        except (TypeError, ValueError):      # a record edited by hand
            what = "(its record is not recap's)"
        lines.append(f"  runs    {s['ingest_runs']['count']:>6}   last {str(last['at'])[:16].replace('T', ' ')} UTC: "
                     + what + (f" ({one_line(str(last['command']))})" if last["command"] else ""))
    if not clips["count"]:   # `recap filter` and `recap caption` would refuse: say why instead of sending the user there
        lines.append(f"  no clips yet: nothing to filter or caption (see {_errors_command(s)}, and the videos' "
                     "n_clips against clips.min_seconds)")
        return lines
    view = s["filter"]
    if view is None:
        lines.append("  filter  (no view yet: run `recap filter`)")
    else:
        reasons = ", ".join(f"{k}={v}" for k, v in list(view["rejected_for"].items())[:5])
        lines.append(f"  passed  {view['passed']:>6}   of {view['of']}" + (f"; rejected for {reasons}" if reasons else ""))
        if view["stale"]:
            lines.append("  warning: the filter view is older than the newest clips (they count as not passed): "
                         "run `recap filter`")
    if not s["captions"]:
        lines.append("  captions (none yet: run `recap caption`)")
    lines += [f"  captions version {v['version']}{' (default)' if v['default'] else ''}: "
              f"{sum(v['counts'].values())} clips (" + ", ".join(f"{k} {n}" for k, n in v["counts"].items())
              + f"), {v['model']}" for v in s["captions"]]
    return lines

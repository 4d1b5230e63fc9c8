"""The library report: an HTML page plus PNGs showing what the signals measured and what the
filters did: a histogram per signal with its thresholds, pass rate per filter, clip lengths,
camera-motion counts, and a strip of example thumbnails for every rejection reason.

Everything comes from the Parquet tables and the filter view, except the thumbnails: one frame
per example clip, decoded with PyAV at report time (from the clip file, or from the source video
for `reference` clips).
"""

from __future__ import annotations

import html
import json
import os
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.filters.config import FilterConfig, from_saved_config, load_filter_config
from pipeline.filters.evaluate import DUPLICATE, evaluate, reason_counts
from pipeline.library import Library
from pipeline.library.layout import REPORT_DIR
from pipeline.library.views import read_view
from pipeline.plots import histogram_bins
from trainer.typedconfig import to_dict

# numeric signals shown as histograms: column -> (title, log scale)
HISTOGRAMS: dict[str, tuple[str, bool]] = {
    "fps": ("Frame rate (frames / s)", False),
    "motion_score": ("Motion (% width / s)", True),
    "camera_shake": ("Camera shake (% width / s)", True),
    "sharpness": ("Sharpness (Laplacian variance)", True),
    "brightness": ("Brightness (mean luma)", False),
    "contrast": ("Contrast (luma std)", False),
    "colorfulness": ("Colourfulness (Hasler-Suesstrunk)", False),
    "text_area": ("Text area (share of frame)", False),
    "aesthetic_score": ("Aesthetic score", False),
    "frozen_share": ("Frozen frames (share)", False),
    "black_share": ("Black frames (share)", False),
    "blank_share": ("Blank frames (share)", False),
}
EXAMPLES_PER_REASON = 6
FAILURES_SHOWN = 200      # rows of the failed-sources table; `recap info LIB --errors` has them all


class ReportError(Exception):
    """The report cannot be written where it was asked for."""


@dataclass
class ReportData:
    clips: pa.Table
    view: pa.Table
    cfg: FilterConfig
    view_source: str  # where the view came from, for the page


def load_report_data(lib_root: str | Path) -> ReportData:
    clips = Library(lib_root).clips()
    saved = read_view(lib_root)
    if saved is not None and saved[0].num_rows == clips.num_rows:
        view, cfg_dict = saved
        return ReportData(clips, view, from_saved_config(cfg_dict), "LIB/views/filters.parquet (`recap filter`)")
    cfg = load_filter_config()
    return ReportData(clips, evaluate(clips, cfg), cfg,
                      "computed now with configs/filters.yaml (no stored view: run `recap filter LIB` to save one)")


def _values(clips: pa.Table, column: str) -> np.ndarray:
    col = clips.column(column)
    return np.asarray([v for v in col.to_pylist() if v is not None], dtype=np.float64)


def _thresholds(cfg: FilterConfig, column: str) -> list[tuple[str, float]]:
    out = []
    for name, rule in cfg.filters.items():
        if rule.enabled and rule.column == column:
            out += [(f"{name}.min", rule.min)] if rule.min is not None else []
            out += [(f"{name}.max", rule.max)] if rule.max is not None else []
    return out


def plot_histogram(path: Path, values: np.ndarray, title: str, log: bool, thresholds: list[tuple[str, float]],
                   n_total: int) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=100)
    if values.size and np.ptp(values) == 0:    # one value for every clip: say it, an axis around it means nothing
        ax.text(0.5, 0.5, f"every measured clip: {values[0]:g}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    elif values.size:
        if log:
            bins = histogram_bins(values, most=40, log=True)
            ax.hist(np.clip(values, bins[0], None), bins=bins, color="#4c72b0")
            ax.set_xscale("log")
        else:
            ax.hist(values, bins=histogram_bins(values, most=40), color="#4c72b0")
        for label, x in thresholds:
            ax.axvline(x, color="#c44e52", linestyle="--", linewidth=1.5)
            ax.text(x, ax.get_ylim()[1] * 0.95, f" {label}={x:g}", color="#c44e52", fontsize=7, va="top",
                    rotation=90, ha="right")
    else:
        ax.text(0.5, 0.5, "not measured for any clip", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{title}  (n={values.size} of {n_total})", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_bars(path: Path, labels: list[str], values: list[float], title: str, xlabel: str,
              color: str = "#4c72b0", as_percent: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(labels), 3) + 1), dpi=100)
    y = np.arange(len(labels))
    ax.barh(y, values, color=color)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.1f}%" if as_percent else f" {v:g}", va="center", fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    if as_percent:
        ax.set_xlim(0, 110)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def thumbnail(path: Path, t_s: float, width: int = 192) -> np.ndarray | None:
    """One RGB frame near `t_s` seconds of a video file, `width` px wide; None if it cannot be read."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.time_base and t_s > 1:   # PyAV 19: an unset time base is a falsy 0/1, not None
                container.seek(int(max(t_s - 1, 0) / stream.time_base), stream=stream, backward=True)
            frame = None
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= t_s:
                    break
            if frame is None:
                return None
            height = max(2, round(frame.height * width / frame.width / 2) * 2)
            return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    except (av.FFmpegError, OSError, IndexError):
        return None


def clip_media(lib: Library, clip: dict[str, Any], video_uris: dict[str, str]) -> tuple[Path | None, float]:
    """Where to see a clip and from when: its own file (checked to lie inside the library), else
    its source video at the clip's start; (None, 0) when neither is there."""
    if clip.get("path"):
        path = lib.media_path(clip["path"])
        if path.exists():
            return path, (clip.get("file_start_frame") or 0) / (clip.get("fps") or 25.0)
    uri = video_uris.get(clip.get("video_id"))
    if uri and Path(uri).exists():
        return Path(uri), clip.get("start_s") or 0.0
    return None, 0.0


def clip_thumbnail(lib: Library, clip: dict[str, Any], video_uris: dict[str, str]) -> np.ndarray | None:
    """The middle frame of a clip: from its file when it has one, else from the source video."""
    path, start = clip_media(lib, clip, video_uris)
    return thumbnail(path, start + (clip.get("duration_s") or 0) / 2) if path else None


def _example(lib: Library, clip: dict[str, Any], uris: dict[str, str], out: Path, caption: str) -> str:
    """One clip as a figure: its thumbnail, linked to its file (or its source at its start time)."""
    image = clip_thumbnail(lib, clip, uris)
    text = f"<figcaption><code>{html.escape(clip['clip_id'])}</code>{caption}</figcaption>"
    if image is None:
        return f'<figure><div class="nothumb">no media</div>{text}</figure>'
    name = f"thumbs/{clip['clip_id']}.jpg"     # ids are checked by the library: a plain file name
    Image.fromarray(image).save(out / name, quality=85)
    path, start = clip_media(lib, clip, uris)
    href = Path(os.path.relpath(path, out)).as_posix() + (f"#t={start:.2f}" if start else "")
    return f'<figure><a href="{html.escape(href)}"><img src="{name}"></a>{text}</figure>'


def build_report(lib_root: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write `index.html` and its PNGs to `out_dir` (default LIB/report); return the HTML path."""
    matplotlib.use("Agg")   # files only, whatever display the machine has
    lib_root = Path(lib_root)
    lib = Library(lib_root)
    data = load_report_data(lib_root)      # not a library, or no clips: fail before writing anything
    out = Path(out_dir) if out_dir else lib_root / REPORT_DIR
    try:
        (out / "thumbs").mkdir(parents=True, exist_ok=True)
    except OSError as e:    # a file where the folder should be, no permission, read-only file system
        raise ReportError(f"cannot write the report to {out}: {e.strerror}") from None
    clips, view, cfg = data.clips, data.view, data.cfg
    n = clips.num_rows
    by_id = {cid: i for i, cid in enumerate(clips.column("clip_id").to_pylist())}
    order = np.array([by_id[c] for c in view.column("clip_id").to_pylist()])
    clips = clips.take(pa.array(order))  # row i of clips is row i of the view
    passed = np.asarray(view.column("passed").to_pylist(), bool)
    reasons = view.column("reject_reasons").to_pylist()
    sections: list[str] = []

    # summary
    n_videos = lib.read("videos", ["video_id"]).num_rows          # as `recap info` counts them
    with_clips = len(set(clips.column("video_id").to_pylist()))
    hours = float(np.nansum(_values(clips, "duration_s"))) / 3600 if "duration_s" in clips.column_names else 0.0
    kept_hours = float(np.nansum(np.asarray(clips.column("duration_s").to_pylist(), float)[passed])) / 3600 \
        if "duration_s" in clips.column_names else 0.0
    coverage_rows = []
    for column in HISTOGRAMS:
        if column in clips.column_names:
            measured = n - clips.column(column).null_count
            note = ""
            if column == "aesthetic_score" and measured == 0:
                note = "no aesthetic model configured (signals.aesthetic.model / head): column is null, the filter is skipped"
            coverage_rows.append(f"<tr><td>{column}</td><td>{measured} / {n}</td><td>{html.escape(note)}</td></tr>")
        else:
            coverage_rows.append(f"<tr><td>{column}</td><td>column absent</td><td>rule skipped</td></tr>")
    sections.append(f"""
<h2>Summary</h2>
<table class="kv">
<tr><th>clips</th><td>{n}</td></tr><tr><th>videos</th><td>{n_videos} ({with_clips} with clips)</td></tr>
<tr><th>clip hours</th><td>{hours:.2f}</td></tr>
<tr><th>passing</th><td>{int(passed.sum())} clips ({100 * passed.mean() if n else 0:.1f}%), {kept_hours:.2f} h</td></tr>
<tr><th>duplicates</th><td>{int(view.column('duplicate_of').is_valid().to_numpy(zero_copy_only=False).sum())}</td></tr>
<tr><th>filter view</th><td>{html.escape(data.view_source)}</td></tr>
</table>
<h3>Signal coverage</h3>
<table><tr><th>signal</th><th>measured</th><th>note</th></tr>{''.join(coverage_rows)}</table>""")

    # pass rate per filter
    counts = reason_counts(view)
    labels = ["all filters (passed)"] + list(counts)
    rates = [100 * passed.mean() if n else 0] + [100 * (1 - c / max(n, 1)) for c in counts.values()]
    plot_bars(out / "pass_rate.png", labels, rates, "Clips passing each filter (first row: all of them)",
              "% of clips passing", color="#55a868", as_percent=True)
    sections.append('<h2>Pass rate per filter</h2><img src="pass_rate.png">')

    # clip length and camera motion
    figs = []
    if "duration_s" in clips.column_names:
        plot_histogram(out / "duration.png", _values(clips, "duration_s"), "Clip length (s)", False,
                       _thresholds(cfg, "duration_s"), n)
        figs.append('<img src="duration.png">')
    if "camera_motion" in clips.column_names:
        values = [v for v in clips.column("camera_motion").to_pylist() if v is not None]
        kinds, kind_counts = np.unique(values, return_counts=True) if values else ([], [])
        plot_bars(out / "camera_motion.png", list(kinds), [int(c) for c in kind_counts],
                  "Camera motion", "clips")
        figs.append('<img src="camera_motion.png">')
    sections.append('<h2>Clip length and camera motion</h2><div class="grid">' + "".join(figs) + "</div>")

    # histograms per signal
    figs = []
    for column, (title, log) in HISTOGRAMS.items():
        if column not in clips.column_names:
            continue
        plot_histogram(out / f"hist_{column}.png", _values(clips, column), title, log, _thresholds(cfg, column), n)
        figs.append(f'<img src="hist_{column}.png">')
    sections.append('<h2>Signals (dashed: filter thresholds)</h2><div class="grid">' + "".join(figs) + "</div>")

    # examples per rejection reason (a duplicate beside the clip kept in its place)
    uris = lib.source_uris()
    row_of = {cid: i for i, cid in enumerate(clips.column("clip_id").to_pylist())}
    strips = []
    for reason in counts:
        picks = [i for i, r in enumerate(reasons) if reason in r][:EXAMPLES_PER_REASON]
        cells = []
        for i in picks:
            clip = clips.slice(i, 1).to_pylist()[0]
            why = html.escape(f"{_reason_value(reason, clip, cfg, view, i)} · {', '.join(reasons[i])}")
            cell = _example(lib, clip, uris, out, why)
            kept = view.column("duplicate_of")[i].as_py() if reason == DUPLICATE else None
            if kept in row_of:
                cell = (f'<div class="pair">{cell}'
                        + _example(lib, clips.slice(row_of[kept], 1).to_pylist()[0], uris, out, "kept instead")
                        + "</div>")
            cells.append(cell)
        strips.append(f'<h3>{html.escape(reason)} <small>({counts[reason]} clips)</small></h3>'
                      f'<div class="strip">{"".join(cells)}</div>')
    sections.append("<h2>Examples per rejection reason</h2>" + ("".join(strips) or "<p>No clip rejected.</p>"))
    sections.append(_failures_section(lib))

    config_json = html.escape(json.dumps(to_dict(cfg), indent=1))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>recap library report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ margin: 0 0 4px; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 28px; }}
table {{ border-collapse: collapse; margin: 8px 0; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-size: 13px; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.strip {{ display: flex; gap: 8px; flex-wrap: wrap; }}
figure {{ margin: 0; width: 192px; }} figcaption {{ font-size: 11px; color: #555; overflow-wrap: break-word; }}
figcaption code {{ display: block; white-space: nowrap; overflow-x: auto; }}
.pair {{ display: flex; gap: 4px; padding: 4px; background: #f3f3f3; }}
.nothumb {{ width: 192px; height: 108px; background: #eee; color: #888; display: flex; align-items: center; justify-content: center; }}
pre {{ background: #f6f6f6; padding: 8px; font-size: 11px; max-height: 240px; overflow: auto; }}
</style></head><body>
<h1>recap library report</h1><div>{html.escape(str(lib_root.resolve()))}</div>
{''.join(sections)}
<h2>Filter config</h2><pre>{config_json}</pre>
</body></html>"""
    index = out / "index.html"
    index.write_text(page)
    return index


def _failures_section(lib: Library) -> str:
    """The sources failing now (`Library.failing_sources`), the first FAILURES_SHOWN of them."""
    found = lib.failing_sources()
    if not found:
        return "<h2>Failed sources</h2><p>None.</p>"
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(f.get(k) or ''))}</td>"
                         for k in ("uri", "outcome", "error_type", "stage", "message")) + "</tr>"
        for f in found[:FAILURES_SHOWN])
    more = (f"<p>{len(found) - FAILURES_SHOWN} more: <code>recap info {html.escape(shlex.quote(str(lib.root)))} "
            "--errors</code> lists them all.</p>" if len(found) > FAILURES_SHOWN else "")
    return (f"<h2>Failed sources <small>({len(found)}: "
            + html.escape(", ".join(f"{k}={v}" for k, v in Counter(f.get("error_type") for f in found).most_common()))
            + ")</small></h2><table><tr><th>source</th><th>outcome</th><th>kind</th><th>stage</th><th>message</th></tr>"
            + rows + "</table>" + more)


def _reason_value(reason: str, clip: dict[str, Any], cfg: FilterConfig, view: pa.Table, row: int) -> str:
    """What made the clip fail `reason`, e.g. `motion_score=0.21` or `duplicate of <id>`."""
    if reason == "duplicate":
        return f"duplicate of {str(view.column('duplicate_of')[row].as_py())[:12]}"
    rule = cfg.filters.get(reason.split(".")[0])
    if rule is None:
        return reason
    value = clip.get(rule.column)
    return f"{rule.column}={value:.3g}" if isinstance(value, float) else f"{rule.column}={value}"


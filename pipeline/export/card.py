"""What `recap export` leaves next to the shards: `manifest.parquet` (one row per written sample)
and the dataset card `README.md` with its plots (`card/*.png`)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import matplotlib.pyplot as plt
import pyarrow as pa
import yaml

from pipeline.export.buckets import bucket_table
from pipeline.library.files import CannotWrite, atomic_write_bytes, atomic_write_table
from pipeline.plots import histogram_bins
from trainer.shards import Bucket

if TYPE_CHECKING:
    from pipeline.export.buckets import BucketConfig
    from pipeline.export.job import Plan, Selection

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("clip_id", pa.string()), ("video_id", pa.string()), ("source", pa.string()),
    ("split", pa.string()), ("shard", pa.string()), ("bucket", pa.string()), ("resolution", pa.string()),
    ("aspect", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("frames", pa.int32()),
    ("fps", pa.float64()), ("sample_s", pa.float64()), ("clip_duration_s", pa.float64()),
    ("caption_version", pa.string()), ("caption_chars", pa.int32()), ("caption_words", pa.int32()),
    ("sample_bytes", pa.int64()), ("query_score", pa.float64()),
])


def write_manifest(out: Path, plan: "Plan", records: list[dict[str, Any]]) -> pa.Table:
    """`SHARDS/manifest.parquet`: the samples that are in the shards, in shard order."""
    written = {(r["shard"], s["key"]): s["bytes"] for r in records for s in r["samples"]}
    rows = []
    for shard in plan.shards:
        for s in shard.samples:
            size = written.get((shard.name, s.meta.key))
            if size is None:
                continue
            m, b = s.meta, Bucket.parse(s.meta.bucket)
            rows.append({
                "key": m.key, "clip_id": m.clip_id, "video_id": m.lineage["video_id"],
                "source": m.lineage["source_uri"], "split": m.split, "shard": shard.name, "bucket": m.bucket,
                "resolution": m.lineage["resolution"], "aspect": m.lineage["aspect"], "width": b.width,
                "height": b.height, "frames": b.frames, "fps": m.fps, "sample_s": b.frames / m.fps,
                "clip_duration_s": m.lineage["end_s"] - m.lineage["start_s"],
                "caption_version": m.caption_version or None, "caption_chars": len(m.caption),
                "caption_words": len(m.caption.split()), "sample_bytes": size,
                "query_score": m.lineage.get("query_score"),
            })
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    atomic_write_table(out / "manifest.parquet", table)
    return table


# ---- plots ----------------------------------------------------------------------------------------
def _histograms(out: Path, manifest: pa.Table) -> list[tuple[str, str]]:
    """PNG histograms by split; returns (title, relative path) of those drawn."""
    matplotlib.use("Agg")

    folder = out / "card"
    folder.mkdir(exist_ok=True)
    split = manifest.column("split").to_pylist()
    drawn = []
    plots = [("clip_duration_s", "Source clip duration (s)", "duration.png"),
             ("caption_words", "Caption length (words)", "caption_length.png")]
    for column, title, name in plots:
        values = manifest.column(column).to_pylist()
        if column == "caption_words" and not any(values):
            continue          # no captions: the card says so instead of plotting zeros
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        groups = [[v for v, s in zip(values, split) if s == name_] for name_ in ("train", "val")]
        labels = [f"{n} ({len(g)})" for n, g in zip(("train", "val"), groups)]
        ax.hist([g for g in groups], bins=histogram_bins(values), stacked=True, label=labels,
                color=["#4878a8", "#e08a3c"])
        ax.set_xlabel(title)
        ax.set_ylabel("samples")
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        tmp = folder / f".{name}.tmp.png"
        try:
            fig.savefig(tmp)
            tmp.replace(folder / name)
        except OSError as e:     # a full disk: named in one line, no half picture left behind
            tmp.unlink(missing_ok=True)
            raise CannotWrite(folder / name, e) from None
        finally:
            plt.close(fig)
        drawn.append((title, f"card/{name}"))
    return drawn


# ---- the card -------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines + [""]


def write_card(out: Path, sel: "Selection", plan: "Plan", records: list[dict[str, Any]], manifest: pa.Table,
               job: dict[str, Any], buckets: "BucketConfig") -> Path:
    """`SHARDS/README.md`: what is inside, where it came from and how it was made."""

    rows = manifest.to_pylist()
    splits = Counter(r["split"] for r in rows)
    videos = {s: {r["video_id"] for r in rows if r["split"] == s} for s in ("train", "val")}
    hours = sum(r["sample_s"] for r in rows) / 3600
    tar_bytes = sum(r["tar_bytes"] for r in records)
    shards = sorted(r["shard"] for r in records if r["tar_bytes"])
    errors = [e for r in records for e in r["errors"]]
    L = [f"# Dataset card: {out.name}", "",
         f"WebDataset shards written by `recap export` from the clip library `{job['library']}` "
         f"(plan `{job['fingerprint']}`, finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).", "",
         f"- **{len(rows)} samples**: {splits.get('train', 0)} train, {splits.get('val', 0)} val; "
         f"{hours * 60:.1f} minutes of video at {buckets.fps:g} fps",
         f"- **{len(shards)} shards**, {tar_bytes / 1e6:.1f} MB: "
         + ", ".join(f"{s} {sum(1 for n in shards if n.startswith(s + '-'))}" for s in ("train", "val")),
         f"- **Split by source video**: {len(videos['train'])} videos in train, {len(videos['val'])} in val, "
         f"{len(videos['train'] & videos['val'])} in both",
         "- Per sample: `KEY.mp4` (H.264, exactly the bucket's width x height x frames) and `KEY.json` "
         "(`trainer.shards.SampleMeta`: caption, every caption version, signals, lineage); KEY is the clip_id.",
         ""]
    for note in sel.notes:
        L += [f"> **Note:** {note}", ""]
    L += ["## Selection", ""] + _table(["step", "clips left"], [[w, n] for w, n in sel.steps])
    left_out = [[f"fits no bucket: `{k}`", v] for k, v in sorted(plan.skipped.items())]
    left_out += [["could not be rendered", len(errors)]] if errors else []
    if left_out:
        L += ["Left out after selection:", ""] + _table(["reason", "clips"], left_out)
    if errors:
        L += ["First render errors:", ""] + [f"- `{e['key']}`: {e['error']}" for e in errors[:10]] + [""]

    L += ["## Buckets", "",
          f"Frame rate {buckets.fps:g} fps; frame counts {buckets.frames}; sides multiples of {buckets.multiple}. "
          "Each clip takes the nearest aspect ratio, the largest resolution it covers without upscaling and "
          "the longest window its duration holds (centred); black bars are cropped first.", ""]
    per = Counter((r["bucket"], r["resolution"], r["aspect"], r["split"]) for r in rows)
    keys = sorted({k[:3] for k in per}, key=lambda k: (-sum(per[(*k, s)] for s in ("train", "val")), k))
    L += _table(["bucket (WxHxT)", "resolution", "aspect", "train", "val", "total"],
                [[f"`{b}`", res, asp, per[(b, res, asp, "train")], per[(b, res, asp, "val")],
                  per[(b, res, asp, "train")] + per[(b, res, asp, "val")]] for b, res, asp in keys])
    L += ["<details><summary>All spatial buckets of this config</summary>", ""]
    L += _table(["resolution", "aspect", "width", "height"], [list(r) for r in bucket_table(buckets)])
    L += ["</details>", ""]

    L += ["## Captions", ""]
    with_caption = sum(1 for r in rows if r["caption_chars"])
    if not sel.captions:
        L += ["No captions: the library had no caption versions when this was exported. Every sample has "
              "`caption: \"\"` and `captions: {}`; nothing was made up. Caption the library "
              "(`recap caption LIB`) and export again.", ""]
    else:
        L += [f"Training caption (`caption`) from version `{sel.caption_version or 'latest ok per clip'}`"
              + ("" if sel.caption_version else " (no default version was set)")
              + f"; {with_caption} of {len(rows)} samples have one. `captions` holds every `ok` version.", ""]
        L += _table(["version", "backend", "model", "prompt", "clips ok (library)"],
                    [[f"`{v['version']}`", v["backend"], v["model_id"], v["prompt_id"], v["counts"].get("ok", 0)]
                     for v in sel.versions])
    plots = _histograms(out, manifest)
    if plots:
        L += ["## Distributions", ""] + [f"![{title}]({path})" for title, path in plots] + [""]

    L += ["## How it was made", "", "Command(s), in order (a rerun resumes the same plan):", "", "```"]
    L += [f"{r['command'] or '(python API)'}    # {r['started_at']}" for r in job.get("runs", [])] + ["```", ""]
    config = {"args": job["args"], "export": job["config"], "buckets": job["buckets"]}
    L += ["Resolved configuration:", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    n_train_shards = sum(1 for s in shards if s.startswith("train-"))
    L += ["## Reading it", "", "```python",
          "import webdataset as wds                       # any WebDataset reader",
          f"ds = wds.WebDataset(\"{out.name}/train-{{000000..{max(0, n_train_shards - 1):06d}}}.tar\")",
          "",
          "from trainer.shards import BucketLoader, list_shards   # recap's per-bucket batches",
          f"loader = BucketLoader(list_shards(\"{out.name}\", \"train\"), batch_size=8)",
          "```", "",
          "`manifest.parquet` lists every sample (key, clip_id, video_id, bucket, split, shard, ...).", ""]
    path = out / "README.md"
    atomic_write_bytes(path, "\n".join(L).encode())
    return path

"""What a library's many small batches cost its readers, and what compaction gives back.

A job commits every few videos (`execution.commit_every: 16`), so a library of N videos has about
N/16 part files per table. This writes a library of `--batches` committed batches of 16 videos
(5 clips each, the clips table's columns with plausible values) through `Library.commit`, then
times, with the parts as committed and again after `Library.compact()` (same rows, checked):

- `read clips`: `Library.read("clips")`, what filter, search, export and the web UI start from;
- `clip table`: `Library.clip_table()` (clips + videos + the filter view);
- `open to write`: `Library(write=True)` (lock and crash recovery, what every ingest run does first);

medians of `--repeats`, in this process (the page cache warm after the first read), and the
compaction's own wall time.

  .venv/bin/python bench/library_parts.py --batches 2000

--captions N instead appends N caption parts of --rows rows (a caption job's writes) to a caption
store, merging after every append as `recap caption` does (`CaptionStore.compact`, tiered), and
prints the merges' total time, how many rows they rewrote, the parts left and a read of them all:

  .venv/bin/python bench/library_parts.py --captions 1000 --rows 256
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.library import CaptionStore, Library  # noqa: E402
from pipeline.library.layout import utcnow  # noqa: E402

VIDEOS_PER_BATCH = 16
CLIPS_PER_VIDEO = 5


def batch_rows(b: int) -> dict[str, list[dict]]:
    videos, clips, sources = [], [], []
    for v in range(VIDEOS_PER_BATCH):
        vid = f"{b:06d}{v:02d}" + "0" * 56
        uri = f"/data/video_{b:06d}_{v:02d}.mp4"
        videos.append({"video_id": vid, "uri": uri, "size_bytes": 10_000_000, "container": "mov,mp4", "video_codec": "h264",
                       "pix_fmt": "yuv420p", "width": 1280, "height": 720, "display_width": 1280, "display_height": 720,
                       "fps": 30.0, "is_vfr": False, "duration_s": 15.0, "n_frames": 450, "n_shots": 5,
                       "n_clips": CLIPS_PER_VIDEO, "ingest_s": 0.5, "ingested_at": utcnow()})
        sources.append({"uri": uri, "video_id": vid, "outcome": "ingested", "at": utcnow()})
        for c in range(CLIPS_PER_VIDEO):
            clips.append({"clip_id": f"{vid[:16]}_{c:03d}", "video_id": vid, "shot_index": c, "clip_index": c,
                          "start_frame": 90 * c, "end_frame": 90 * c + 90, "n_frames": 90, "start_s": 3.0 * c,
                          "end_s": 3.0 * c + 3, "duration_s": 3.0, "fps": 30.0, "width": 1280, "height": 720,
                          "clip_mode": "remux", "path": f"media/{vid[:2]}/{vid}/{c}.mp4",
                          "motion_score": 1.0 + c, "camera_motion": "static", "brightness": 100.0,
                          "sharpness": 50.0, "text_area": 0.0, "ocr_text": "", "phash": [1, 2, 3]})
    return {"videos": videos, "clips": clips, "sources": sources}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(root: Path, repeats: int) -> dict[str, float]:
    def open_to_write() -> None:
        Library(root, write=True).close()
    return {"read clips": timed(lambda: Library(root).read("clips"), repeats),
            "clip table": timed(lambda: Library(root).clip_table(), repeats),
            "open to write": timed(open_to_write, repeats)}


def caption_merges(parts: int, rows: int, work: Path) -> None:
    import pyarrow.parquet as pq

    store = CaptionStore(work / "lib")
    text = "a dense caption of a clip " * 20       # ~500 characters, a VLM caption's length
    merge_s, rewritten = 0.0, 0
    for k in range(parts):
        store.append([{"clip_id": f"c{k}_{i}", "version": "v1", "backend": "transformers", "model_id": "m",
                       "prompt_id": "p", "prompt_sha": "s", "params": "{}", "text": text, "status": "ok",
                       "attempts": 1} for i in range(rows)])
        t0 = time.perf_counter()
        made = store.compact()
        merge_s += time.perf_counter() - t0
        if made is not None:
            rewritten += pq.read_metadata(made).num_rows
    read_s = timed(lambda: store.read(), 3)
    print(f"{parts} parts of {rows} rows ({parts * rows:,} captions): merges {merge_s:.1f} s in all, "
          f"{rewritten:,} rows rewritten, {len(store.parts())} parts left, read all: {read_s:.2f} s (median of 3)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--captions", type=int, metavar="N", help="caption store mode: N parts (see above)")
    ap.add_argument("--rows", type=int, default=256, help="--captions: rows per part")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recap-parts-"))
    try:
        if args.captions:
            caption_merges(args.captions, args.rows, work)
            return
        root = work / "lib"
        t0 = time.perf_counter()
        with Library(root, write=True) as lib:
            for b in range(args.batches):
                lib.commit(batch_rows(b))
        print(f"wrote {args.batches} batches ({args.batches * VIDEOS_PER_BATCH} videos, "
              f"{args.batches * VIDEOS_PER_BATCH * CLIPS_PER_VIDEO} clips) in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = Library(root).read("clips")
        before = measure(root, args.repeats)
        t0 = time.perf_counter()
        with Library(root, write=True) as lib:
            lib.compact()
        compact_s = time.perf_counter() - t0
        assert Library(root).read("clips").equals(rows), "compaction changed the rows"
        after = measure(root, args.repeats)
        print(f"\n| reader (median of {args.repeats}) | {args.batches} parts per table, s | after compaction, s | ratio |")
        print("|---|---|---|---|")
        for k in before:
            print(f"| {k} | {before[k]:.3f} | {after[k]:.3f} | {before[k] / after[k]:.0f}x |")
        print(f"| compaction itself (`Library.compact`, once) | | {compact_s:.2f} | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`recap serve` at 100k clips: how long until the first page of results, and how big a page is.

Builds a synthetic library through `pipeline.library.Library.commit` (N clips in batches of 1,000
as an ingest commits them, 1,000 source videos, signals, a filter view with rejects and
duplicates, a caption per clip and a 384-d caption vector per clip, so text search runs on the
exact path), starts the real `recap serve LIB --port 0` in a subprocess, and times from the
outside over HTTP:

- start: process start to the "serving ... at URL" line;
- first page: the first `GET /api/clips?limit=60` (reads the clip table: the cold cost);
- warm pages (p50/p95): page 1, a deep page, a `where` page, a sorted page, and the 2nd..Nth page
  of a `where` (kept per request after the first);
- search: the first text search (loads the bundled MiniLM and the Parquet vectors), then warm
  p50/p95 of text search and "more like this";
- sizes: the JSON of one 60-clip page (and gzip, as a proxy would send it), the page's HTML, JS and CSS;
- the server's resident memory after all of it.

  .venv/bin/python bench/serve.py                  # 100k clips
  .venv/bin/python bench/serve.py --clips 10000 --reps 20
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.api import input_hash, model_id_of  # noqa: E402
from pipeline.embed import load_index_config  # noqa: E402
from pipeline.library import Library  # noqa: E402
from pipeline.library.embeddings import write_embeddings  # noqa: E402
from pipeline.library.views import write_view  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shaky"]
WORDS = ["a dog", "a red car", "waves", "a city street", "mountains", "a kitchen", "children", "fireworks",
         "a forest", "a train"]
ACTIONS = ["running", "at night", "in the rain", "from above", "in slow motion", "at sunset"]
BATCH = 1000
DIM = 384
PAGE = 60


def build(root: Path, n: int, rng: np.random.Generator) -> None:
    t0 = time.perf_counter()
    lib = Library(root, write=True)
    now = datetime.now(timezone.utc)
    n_videos = max(1, n // 100)
    lib.commit({"videos": [{"video_id": f"{v:032x}", "uri": f"/data/raw/video_{v:05d}.mp4", "ingested_at": now}
                           for v in range(n_videos)]})
    duration = rng.uniform(1.0, 20.0, n)
    motion = rng.gamma(2.0, 1.5, n)
    camera = rng.choice(CLASSES, n)
    captions = [f"{WORDS[i % len(WORDS)]} {ACTIONS[(i // 7) % len(ACTIONS)]}, shot {i}" for i in range(n)]
    ids = [f"c{i:07d}" for i in range(n)]
    for lo in range(0, n, BATCH):
        rows = []
        for i in range(lo, min(n, lo + BATCH)):
            v = i % n_videos
            start = float((i // n_videos) * 20)
            rows.append({"clip_id": ids[i], "video_id": f"{v:032x}", "shot_index": i // n_videos,
                         "clip_index": i // n_videos, "start_frame": int(start * 25),
                         "end_frame": int((start + duration[i]) * 25), "n_frames": int(duration[i] * 25),
                         "start_s": start, "end_s": start + float(duration[i]), "duration_s": float(duration[i]),
                         "fps": 25.0, "width": 1280, "height": 720, "clip_mode": "reference", "path": None,
                         "motion_score": float(motion[i]), "camera_motion": str(camera[i]),
                         "brightness": float(rng.uniform(20, 230)), "sharpness": float(rng.gamma(2, 60)),
                         "ocr_text": "SALE 50%" if i % 13 == 0 else "", "text_area": 0.02 if i % 13 == 0 else 0.0})
        lib.commit({"clips": rows})
    lib.close()
    passed = motion > 0.5
    dup = np.where(rng.random(n) < 0.05, np.maximum(np.arange(n) - 1, 0), -1)
    write_view(root, pa.table({
        "clip_id": ids, "passed": passed & (dup < 0),
        "reject_reasons": [([] if p else ["motion.min"]) + (["duplicate"] if d >= 0 else []) for p, d in zip(passed, dup)],
        "duplicate_of": [ids[d] if d >= 0 else None for d in dup]}), {}, source_batch=Library(root).newest_batch())
    spec = {"backend": "import", "model_id": "bench", "revision": None, "prompt_id": "bench", "prompt_sha": "0",
            "params": "{}"}
    store = Library(root).captions
    store.append([{**spec, "clip_id": c, "version": "benchversion", "text": t, "status": "ok", "attempts": 1}
                  for c, t in zip(ids, captions)])
    store.set_default("benchversion")
    cfg = load_index_config(overrides=["embedders.visual.enabled=false"])
    mid = model_id_of(cfg.embedders["caption"])
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_embeddings(root, "caption", mid, ids, x, [input_hash(mid, t) for t in captions])
    print(f"built {n} clips in {n // BATCH + (n % BATCH > 0)} committed batches, {n_videos} videos: "
          f"{time.perf_counter() - t0:.1f} s", flush=True)


def get(url: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        body = r.read()
    return 1000 * (time.perf_counter() - t), body


def stats(ms: list[float]) -> str:
    return f"p50 {np.percentile(ms, 50):7.1f} ms  p95 {np.percentile(ms, 95):7.1f} ms"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=30, help="requests per warm measurement")
    p.add_argument("--keep", metavar="DIR", help="build (or reuse) the library here instead of a temporary folder")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="recap-bench-serve-"))
    root = work / "lib"
    if not (root / "library.json").exists():
        build(root, args.clips, rng)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    t0 = time.perf_counter()
    try:
        line = proc.stdout.readline()
        start_ms = 1000 * (time.perf_counter() - t0)
        url = re.search(r"at (http://\S+)", line).group(1)
        first_ms, body = get(f"{url}/api/clips?limit={PAGE}")
        page = json.loads(body)
        assert page["total"] == args.clips and len(page["items"]) == PAGE, page["total"]
        print(f"clips {args.clips}: server start {start_ms:.0f} ms; first results page (cold: reads the clip "
              f"table) {first_ms:.0f} ms; start to first page {start_ms + first_ms:.0f} ms")
        print(f"page of {PAGE} clips: {len(body) / 1024:.1f} KiB JSON, {len(gzip.compress(body)) / 1024:.1f} KiB gzipped")
        shell = sum(len(get(f"{url}{path}")[1]) for path in ("/", "/static/app.js", "/static/app.css"))
        print(f"page shell (HTML + JS + CSS, once): {shell / 1024:.1f} KiB")
        where = urllib.parse.quote('duration_s > 4 and camera_motion in ["pan_left", "pan_right"] and not duplicate')
        deep = max(0, args.clips - PAGE)
        cases = {
            "page 1": f"/api/clips?limit={PAGE}",
            f"deep page (offset {deep})": f"/api/clips?limit={PAGE}&offset={deep}",
            "status": "/api/status",
            "sorted by duration desc (first call sorts)": f"/api/clips?limit={PAGE}&sort=duration_s&desc=true",
        }
        for name, path in cases.items():
            ms = [get(url + path)[0] for _ in range(args.reps)]
            print(f"  {name:<46} first {ms[0]:7.1f} ms  {stats(ms[1:])}")
        first, _ = get(f"{url}/api/clips?limit={PAGE}&where={where}")
        ms = [get(f"{url}/api/clips?limit={PAGE}&offset={PAGE * (i + 1)}&where={where}")[0] for i in range(args.reps)]
        print(f"  {'where page (first call filters)':<46} first {first:7.1f} ms  next pages {stats(ms)}")
        first, body = get(f"{url}/api/search?q=a+dog+running+at+sunset&limit={PAGE}")
        total = json.loads(body)["total"]
        ms = [get(f"{url}/api/search?q={urllib.parse.quote(f'{w} {a}')}&limit={PAGE}")[0]
              for w, a in zip(WORDS * 10, ACTIONS * 10)][:args.reps]
        print(f"  {'text search (first loads MiniLM + vectors)':<46} first {first:7.1f} ms  {stats(ms)}  ({total} hits)")
        ms = [get(f"{url}/api/search?like=c{i * 997 % args.clips:07d}&limit={PAGE}")[0] for i in range(args.reps)]
        print(f"  {'more like this':<46} {'':19} {stats(ms)}")
        ms = [get(f"{url}/api/search?q=a+red+car+at+night&where={where}&limit={PAGE}&offset={PAGE * i}")[0]
              for i in range(min(args.reps, 10))]
        print(f"  {'text search + where, pages 1-10':<46} {'':19} {stats(ms)}")
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        print(f"server resident memory after all requests: {rss:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`recap export`: shards read back by the `webdataset` package and by the trainer's loader hold
exactly the selected clips, with the right frames, bucket shapes and captions; no source video is
in both splits; a killed export resumes without duplicates; an empty selection is an error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.export.buckets import BucketConfig, assign, window
from pipeline.export.plan import _picture, split_videos
from pipeline.library import Library
from pipeline.library.layout import utcnow
from pipeline.library.selections import list_selections, read_selection, write_selection
from pipeline.library.views import write_view
from tests.avfiles import frame_image, write_video
from tests.conftest import ROOT
from tests.index_fixtures import write_captions

FPS = 25
SIZE = (160, 96)
BUCKETS = """fps: 8
frames: [5, 9]
resolutions: {tiny: 9216}
aspect_ratios: ["4:3", "16:9"]
multiple: 16
"""
# the CLI module as `recap export` runs it (as pipeline/cli/__init__.py runs it)
EXPORT = [sys.executable, "-c", "import argparse, sys; from pipeline.cli import export as m; "
          "p = argparse.ArgumentParser(); m.add_arguments(p); sys.exit(m.run(p.parse_args(sys.argv[1:])))"]


def export(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EXPORT, *args, "--no-progress"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if check and proc.returncode != 0:
        raise AssertionError(f"export exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _encode_range(path: Path, start: int, end: int, size: tuple[int, int] = SIZE) -> Path:
    """Frames [start, end) of the test pattern in their own file (as remux/encode leave clips)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "12"}
        for i in range(start, end):
            for packet in s.encode(av.VideoFrame.from_ndarray(frame_image(i, *size), format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def _letterboxed(path: Path, n_frames: int) -> Path:
    """160x128 with 16-px black bars above and below a 160x96 picture."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 160, 128, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "12"}
        for i in range(n_frames):
            img = np.zeros((128, 160, 3), np.uint8)
            img[16:112] = frame_image(i, *SIZE)
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def _clip(video_id: str, index: int, start: int, end: int, **extra) -> dict:
    return {"clip_id": f"{video_id[:6]}c{index}", "video_id": video_id, "shot_index": index, "clip_index": index,
            "start_frame": start, "end_frame": end, "n_frames": end - start, "start_s": start / FPS,
            "end_s": end / FPS, "duration_s": (end - start) / FPS, "fps": float(FPS), "width": SIZE[0],
            "height": SIZE[1], "clip_mode": "reference", "path": None, "bars": "none",
            "motion_score": 1.5 + index, **extra}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, dict]:
    """Four 3-s source videos, 10 clips: reference clips, file clips (one starting 7 frames into its
    file), a letterboxed clip, a clip too short for any bucket, one rejected by the filter view,
    one duplicate; two caption versions (one the default) on some clips."""
    root = tmp_path_factory.mktemp("export")
    lib = Library(root / "lib", write=True)
    videos, clips = [], []
    for v in range(3):
        video_id = f"{v}" * 32
        src = write_video(root / f"src{v}.mp4", n_frames=75, fps=FPS, size=SIZE, gop=25, bframes=0)
        videos.append({"video_id": video_id, "uri": str(src), "width": SIZE[0], "height": SIZE[1], "ingested_at": utcnow()})
        clips += [_clip(video_id, 0, 0, 37), _clip(video_id, 1, 37, 75)]
    # video 1's clips live in files, the second one 7 frames into its file (a remux keyframe)
    media = root / "lib" / "media"
    _encode_range(media / "a.mp4", 0, 37)
    _encode_range(media / "b.mp4", 30, 75)
    clips[2].update(clip_mode="encode", path="media/a.mp4", file_start_frame=0)
    clips[3].update(clip_mode="remux", path="media/b.mp4", file_start_frame=7)
    box = "3" * 32
    src = _letterboxed(root / "box.mp4", 50)
    videos.append({"video_id": box, "uri": str(src), "width": 160, "height": 128, "ingested_at": utcnow()})
    clips += [_clip(box, 0, 0, 40, height=128, bars="letterbox", crop_x=0, crop_y=16, crop_w=160, crop_h=96),
              _clip(box, 1, 40, 50)]                              # 0.4 s: too short for 5 frames at 8 fps
    lib.commit({"videos": videos, "clips": clips})
    ids = [c["clip_id"] for c in clips]
    rejected, duplicate = ids[1], ids[5]
    lib.close()
    write_view(root / "lib", pa.table({
        "clip_id": ids, "passed": [i not in (rejected, duplicate) for i in ids],
        "reject_reasons": [["motion.min"] if i == rejected else ["duplicate"] if i == duplicate else [] for i in ids],
        "duplicate_of": [ids[4] if i == duplicate else None for i in ids]}), {})
    old = write_captions(root / "lib", {ids[0]: "an old caption of clip zero"}, model="old-model", default=False)
    new = write_captions(root / "lib", {i: f"a moving white bar, clip {i}" for i in ids[:4]}, model="new-model")
    truth = {"clips": {c["clip_id"]: c for c in clips}, "selected": {ids[0], ids[2], ids[3], ids[4], ids[6]},
             "too_short": ids[7], "letterbox": ids[6], "old": old, "new": new,
             "uri": {v["video_id"]: v["uri"] for v in videos}}
    return root / "lib", truth


@pytest.fixture(scope="module", params=["local", "ray"])
def exported(library, tmp_path_factory, request) -> tuple[Path, subprocess.CompletedProcess]:
    """The export on one machine without Ray (the default: samples rendered on several threads)
    and as Ray tasks (what --ray-address runs): every test below holds for both."""
    lib, _ = library
    out = tmp_path_factory.mktemp("shards") / "out"
    buckets = out.parent / "buckets.yaml"
    buckets.write_text(BUCKETS)
    proc = export(str(lib), "--out", str(out), "--buckets", str(buckets), "--val-fraction", "0.3",
                  "--shard-size", "10KB", "--seed", "1", "--set", f"execution.executor={request.param}")
    return out, proc


def _samples(out: Path) -> list[dict]:
    import webdataset as wds

    from trainer.shards import list_shards

    tars = list_shards(out, "train") + list_shards(out, "val")
    return list(wds.WebDataset(tars, shardshuffle=False))


def _frame_index(frame: np.ndarray, candidates: range, crop: list[float]) -> int:
    """Which test-pattern frame a decoded frame shows: the candidate that, cropped and resized like
    the sample, is closest to it."""
    import cv2

    h, w = frame.shape[:2]
    y0, y1 = round(crop[1] * SIZE[1]), round(crop[3] * SIZE[1])
    x0, x1 = round(crop[0] * SIZE[0]), round(crop[2] * SIZE[0])
    refs = [cv2.resize(frame_image(i, *SIZE)[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_AREA) for i in candidates]
    return candidates[int(np.argmin([np.abs(r.astype(int) - frame).mean() for r in refs]))]


def test_shards_hold_exactly_the_selection_with_the_right_frames(library, exported):
    from trainer.shards import Bucket, SampleMeta, decode_mp4

    lib, truth = library
    out, proc = exported
    samples = _samples(out)
    metas = [SampleMeta.from_json(s["json"]) for s in samples]
    keys = [m.key for m in metas]
    assert len(keys) == len(set(keys)) and set(keys) == truth["selected"]
    assert "failed samples: 0" in proc.stdout
    assert len(list(out.glob("*.tar"))) >= 3                      # 10KB shards: about two samples each
    manifest = pq.read_table(out / "manifest.parquet")
    assert sorted(manifest.column("key").to_pylist()) == sorted(keys)
    for s, m in zip(samples, metas):
        clip = truth["clips"][m.key]
        b = Bucket.parse(m.bucket)
        assert m.key == s["__key__"] and m.fps == 8.0
        video = decode_mp4(s["mp4"])
        assert video.shape == (b.frames, b.height, b.width, 3)
        # every output frame is the source frame nearest its time, inside the clip's range
        want = [clip["start_frame"] + i for i in window(clip["n_frames"], FPS, 8.0, b.frames)]
        got = [_frame_index(f, range(clip["start_frame"], clip["end_frame"]), m.lineage["aspect_crop"]) for f in video]
        assert got == want, (m.key, clip["clip_mode"])
        assert m.lineage["source_uri"] == truth["uri"][clip["video_id"]]
        assert m.lineage["frame_start"] == clip["start_frame"] and m.lineage["video_id"] == clip["video_id"]
        assert m.signals["motion_score"] == clip["motion_score"]


def test_dry_run_plans_what_the_export_writes_and_writes_nothing(library, exported, tmp_path):
    lib, _ = library
    out, _ = exported
    buckets = out.parent / "buckets.yaml"
    dry = tmp_path / "dry"
    proc = export(str(lib), "--out", str(dry), "--buckets", str(buckets), "--val-fraction", "0.3",
                  "--shard-size", "10KB", "--seed", "1", "--dry-run")
    assert not dry.exists() and proc.stdout.strip().endswith("dry run: nothing was written")
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    splits = Counter(row["split"] for row in manifest)
    shards = len(list(out.glob("*.tar")))
    plan = next(line for line in proc.stdout.splitlines() if line.startswith("plan: "))
    assert plan.startswith(f"plan: {len(manifest)} samples ("
                           + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())) + f") in {shards} shard(s)")
    by_bucket = next(line for line in proc.stdout.splitlines() if line.startswith("by bucket: "))
    assert sorted(by_bucket.removeprefix("by bucket: ").split(", ")) == sorted(
        f"{k} {v}" for k, v in Counter(row["bucket"] for row in manifest).items())


def test_letterbox_is_cropped_and_picks_the_wide_bucket(library, exported):
    from trainer.shards import decode_mp4

    _, truth = library
    out, _ = exported
    (s,) = [s for s in _samples(out) if s["__key__"] == truth["letterbox"]]
    meta = json.loads(s["json"])
    assert meta["bucket"] == "128x64x9" and meta["lineage"]["aspect"] == "16:9"   # 160x96 inside 160x128
    video = decode_mp4(s["mp4"])
    assert video[:, :3].mean() > 40 and video[:, -3:].mean() > 40               # no black rows left


def test_captions_default_version_and_every_version(library, exported):
    _, truth = library
    out, _ = exported
    metas = {s["__key__"]: json.loads(s["json"]) for s in _samples(out)}
    ids = list(truth["clips"])
    m0 = metas[ids[0]]
    assert m0["caption"] == f"a moving white bar, clip {ids[0]}" and m0["caption_version"] == truth["new"]
    assert m0["captions"] == {truth["old"]: "an old caption of clip zero", truth["new"]: m0["caption"]}
    assert metas[ids[4]]["caption"] == "" and metas[ids[4]]["captions"] == {}
    card = (out / "README.md").read_text()
    assert truth["new"] in card and truth["old"] in card and "3 of 5 samples have one" in card
    assert (out / "card" / "duration.png").stat().st_size > 5000
    assert (out / "card" / "caption_length.png").stat().st_size > 5000


def test_no_source_video_in_both_splits_and_the_trainer_reads_them(library, exported):
    from trainer.shards import BucketLoader, list_shards

    out, _ = exported
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    by_split = {s: {r["video_id"] for r in manifest if r["split"] == s} for s in ("train", "val")}
    assert by_split["train"] and by_split["val"] and not by_split["train"] & by_split["val"]
    for r in manifest:
        assert Path(out / r["shard"]).name.startswith(r["split"] + "-")
    train = [r for r in manifest if r["split"] == "train"]
    loader = BucketLoader(list_shards(out, "train"), batch_size=1, shuffle_buffer=2)
    keys = set()
    for batch in loader:
        if loader.state.epoch > 0:
            break
        keys.add(batch.metas[0].key)
        assert batch.video.shape[1:] == (batch.bucket.frames, batch.bucket.height, batch.bucket.width, 3)
    assert keys == {r["key"] for r in train} and not loader.skipped
    card = (out / "README.md").read_text()
    assert "fits no bucket: `too_short` | 1" in card and f"{len(manifest)} samples" in card


def one_sample_shards(lib: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """(out, `recap export` arguments): the library into `out`, one sample per shard, without Ray:
    many shards, for a job stopped part-way."""
    out = tmp_path / "out"
    buckets = tmp_path / "buckets.yaml"
    buckets.write_text(BUCKETS)
    return out, [str(lib), "--out", str(out), "--buckets", str(buckets), "--val-fraction", "0.3",
                 "--set", "max_samples_per_shard=1", "--set", "execution.executor=local"]


def test_killed_export_resumes_without_duplicates(library, tmp_path):
    lib, truth = library
    out, args = one_sample_shards(lib, tmp_path)
    proc = subprocess.Popen([*EXPORT, *args, "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    done = out / ".export" / "done"
    deadline = time.monotonic() + 120
    while not (done.is_dir() and any(done.glob("*.json"))) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = sorted(p.stem for p in done.glob("*.json"))
    assert 1 <= len(finished) < len(truth["selected"]), "the export was not killed half way"
    mtimes = {n: (out / n).stat().st_mtime_ns for n in finished}
    (out / ".train-000099.tar.tmp").write_bytes(b"half a shard")    # what a kill mid-write leaves
    again = export(*args)
    assert "resuming" in again.stdout
    assert not list(out.glob(".*.tmp"))
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == mtimes    # done shards not redone
    keys = [s["__key__"] for s in _samples(out)]
    assert len(keys) == len(set(keys)) and set(keys) == truth["selected"]
    job = json.loads((out / ".export" / "job.json").read_text())
    assert len(job["runs"]) == 2


def test_empty_selection_and_another_plan_are_clear_errors(library, exported, tmp_path):
    lib, _ = library
    out, _ = exported
    proc = export(str(lib), "--out", str(tmp_path / "none"), "--where", "duration_s > 1000", check=False)
    assert proc.returncode == 2 and "no clips selected" in proc.stderr and "--where duration_s > 1000: 0" in proc.stderr
    assert not (tmp_path / "none").exists()
    proc = export(str(lib), "--out", str(tmp_path / "big"), "--where", "duration_s > 1", check=False)
    assert proc.returncode == 2 and "fits a bucket (too_small: 5)" in proc.stderr    # default buckets: 144p+
    proc = export(str(lib), "--out", str(out), "--where", "duration_s > 1", "--buckets", str(out.parent / "buckets.yaml"),
                  check=False)
    assert proc.returncode == 2 and "holds another export" in proc.stderr
    proc = export(str(lib), "--out", str(tmp_path / "x"), "--caption-version", "nope", check=False)
    assert proc.returncode == 2 and "no caption version 'nope'" in proc.stderr


def test_a_named_selection_is_exported_as_chosen(library):
    from pipeline.export.selection import ExportError, select

    lib, truth = library
    ids = list(truth["clips"])
    rejected = ids[1]                       # the filter view rejects it; a person chose it anyway
    write_selection(lib, "picked", [ids[0], rejected, ids[0], "0123456789abcdef"])
    assert list_selections(lib) == ["picked"] and read_selection(lib, "picked")[:2] == [ids[0], rejected]
    sel = select(lib, selection="picked")
    assert set(sel.clips.column("clip_id").to_pylist()) == {ids[0], rejected}
    assert any("1 clips of selection 'picked' are not in the library" in n for n in sel.notes)
    with pytest.raises(ExportError, match="no selection 'nope'"):
        select(lib, selection="nope")
    with pytest.raises(ValueError, match="selection name"):
        write_selection(lib, "../escape", ids)


def test_split_by_video_is_seeded_and_keeps_train():
    counts = {f"video{i}": 1 + i % 4 for i in range(40)}
    a, b = split_videos(counts, 0.2, seed=0), split_videos(counts, 0.2, seed=0)
    assert a == b and a != split_videos(counts, 0.2, seed=1)
    val = sum(counts[v] for v, s in a.items() if s == "val")
    assert abs(val - 0.2 * sum(counts.values())) <= 4
    assert set(split_videos({"only": 5}, 0.5, 0).values()) == {"train"}
    assert set(split_videos(counts, 0.0, 0).values()) == {"train"}


def test_bucket_assignment():
    cfg = BucketConfig(fps=8, frames=[9, 17], resolutions={"small": 36864, "big": 230400},
                       aspect_ratios=["9:16", "1:1", "16:9"])
    a = assign(640, 360, 50, 30.0, cfg)
    assert a.bucket.name == "640x352x9" and a.resolution == "big" and a.aspect == "16:9"   # 50 frames: 1.7 s
    assert assign(300, 170, 200, 30.0, cfg).bucket.name == "256x144x17"                     # no upscaling
    assert assign(360, 640, 200, 30.0, cfg).aspect == "9:16"
    assert assign(640, 360, 20, 30.0, cfg) == "too_short"
    assert assign(100, 60, 200, 30.0, cfg) == "too_small"
    assert assign(1000, 100, 200, 30.0, cfg) == "aspect"
    assert window(30, 30.0, 8.0, 9) is not None and window(28, 30.0, 8.0, 9) is None


def test_query_selects_search_hits_that_pass_the_filters(tmp_path):
    from pipeline.embed import load_index_config, run_index
    from pipeline.export.selection import select
    from tests.index_fixtures import CLIPS, clip_id, make_library

    root = make_library(tmp_path / "lib")
    run_index(root, load_index_config(), log=lambda *a: None)
    sel = select(root, query="a dog running on the beach", top_k=3)
    ids = sel.clips.column("clip_id").to_pylist()
    assert len(ids) == 3 and clip_id(0) in ids and max(sel.scores, key=sel.scores.get) == clip_id(0)
    rejected = {clip_id(i) for i, c in enumerate(CLIPS) if not c[3] or c[4] is not None}
    assert not rejected & set(ids)           # the failed sandcastle and the duplicate dog are out
    sel = select(root, query="a dog running on the beach", top_k=3, where="duration_s < 4")
    assert set(sel.clips.column("duration_s").to_pylist()) <= {3.0, 3.5, 2.5} and len(sel.clips) == 3
    assert sel.steps[-1][0].startswith("--query")
    # several queries: the union of each one's top hits, each clip with its best score
    dog, car = select(root, query="a dog running on the beach", top_k=1), select(root, query="a car in the city at night", top_k=1)
    both = select(root, query=["a dog running on the beach", "a car in the city at night"], top_k=1)
    assert both.scores == pytest.approx({**dog.scores, **car.scores}, abs=1e-5)    # (a batch rounds a little differently)
    assert set(both.clips.column("clip_id").to_pylist()) == {clip_id(0), clip_id(3)}
    assert "a clip any of them finds" in both.steps[-1][0]


def test_samples_render_several_at_once_and_are_written_in_order(monkeypatch):
    """A shard's samples render on `threads` threads, a bounded few ahead of the writer, and come
    out in plan order; a sample that fails comes out with its error in its place."""
    import threading
    from types import SimpleNamespace

    from pipeline.export import writer

    lock, state = threading.Lock(), {"active": 0, "most": 0, "started": 0}

    def fake_render(spec: int) -> bytes:
        with lock:
            state["active"] += 1
            state["started"] += 1
            state["most"] = max(state["most"], state["active"])
        time.sleep(0.005 * (spec % 3))           # later samples can finish first
        with lock:
            state["active"] -= 1
        if spec == 5:
            raise ValueError("broken clip")
        return f"mp4 {spec}".encode()

    monkeypatch.setattr(writer, "render_mp4", fake_render)
    out = []
    for consumed, item in enumerate(writer._rendered([SimpleNamespace(spec=i) for i in range(12)], 3)):
        assert state["started"] <= consumed + 1 + 3 + 1          # never more than a few ahead
        out.append(item)
        time.sleep(0.01)                                         # a slow writer
    assert [s.spec for s, _, _ in out] == list(range(12))
    assert [mp4 for _, mp4, e in out if e is None] == [f"mp4 {i}".encode() for i in range(12) if i != 5]
    assert isinstance(out[5][2], ValueError) and out[5][1] is None
    assert state["most"] >= 2 and state["most"] <= 3


def test_a_clip_file_resampled_at_ingest_gives_the_frames_of_their_times(tmp_path):
    """clips.mode=encode with clips.encode_fps writes the clip at another rate than the source's:
    its windows index the file's frames, so a 25-fps clip in a 50-fps file is not sampled at half
    speed (it was: source-rate indices into the file's frames) nor short of frames at a lower rate."""
    from pipeline.export.buckets import load_buckets
    from pipeline.export.config import load_export_config
    from pipeline.export.plan import plan_export
    from pipeline.export.render import render_frames
    from pipeline.export.selection import select

    lib = Library(tmp_path / "lib", write=True)
    src = write_video(tmp_path / "src.mp4", n_frames=75, fps=FPS, size=SIZE, gop=25, bframes=0)
    video_id = "7" * 32
    media = tmp_path / "lib" / "media"
    media.mkdir(exist_ok=True)
    for rate, name in ((2 * FPS, "fast.mp4"), (12.5, "slow.mp4")):   # every source frame held at `rate`
        with av.open(str(media / name), "w") as out:
            s = out.add_stream("libx264", rate=Fraction(rate))
            s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
            s.options = {"preset": "ultrafast", "crf": "12"}
            for k in range(round(75 / FPS * rate)):
                img = frame_image(int(k * FPS / rate + 1e-6), *SIZE)
                for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in s.encode():
                out.mux(packet)
    clips = [_clip(video_id, i, 0, 75, clip_mode="encode", path=f"media/{name}", file_start_frame=0,
                   file_n_frames=round(75 / FPS * rate)) for i, (name, rate) in enumerate((("fast.mp4", 50), ("slow.mp4", 12.5)))]
    lib.commit({"videos": [{"video_id": video_id, "uri": str(src), "width": SIZE[0], "height": SIZE[1],
                            "ingested_at": utcnow()}], "clips": clips})
    lib.close()
    buckets = load_buckets(None, ["frames=[9]", "resolutions={tiny: 9216}", 'aspect_ratios=["16:9"]'])
    plan = plan_export(tmp_path / "lib", select(tmp_path / "lib"), buckets, load_export_config())
    samples = {s.meta.key: s for shard in plan.shards for s in shard.samples}
    assert sorted(samples) == sorted(c["clip_id"] for c in clips)
    for clip in clips:
        s = samples[clip["clip_id"]]
        got = [_frame_index(f, range(75), s.meta.lineage["aspect_crop"]) for f in render_frames(s.spec)]
        steps = np.diff(got)
        assert steps.min() >= 2 and steps.max() <= 4 and abs(np.mean(steps) - FPS / 8) < 0.3, (clip["path"], got)
        assert abs((got[0] + got[-1]) / 2 - 37) <= 2, got                  # the centred window
        # the file's rate is known from its frame count over the clip's time: source frames +-1
        assert np.abs(np.subtract(s.meta.lineage["sample_frames"], [got[0], got[-1]])).max() <= 1


def test_a_bar_crop_of_a_clip_whose_stream_switched_size_is_in_its_own_pixels() -> None:
    """A stream that switches picture size (320x240, then 640x480) gives a clip of the second size
    a crop in 640x480 pixels: it was read as fractions of the video's first (coded) size, so a
    letterbox crop of rows 60..420 became 0.25..1.0 of the frame instead of 0.125..0.875."""
    video = {"width": 320, "height": 240, "display_width": 320, "display_height": 240, "rotation": 0}
    row = {"width": 640, "height": 480, "crop_x": 0, "crop_y": 60, "crop_w": 640, "crop_h": 360}
    box, pw, ph = _picture(row, video)
    assert box == pytest.approx((0.0, 0.125, 1.0, 0.875)) and (pw, ph) == pytest.approx((640, 360))
    same = {**row, "width": 320, "height": 240, "crop_y": 30, "crop_w": 320, "crop_h": 180}
    assert _picture(same, video)[0] == pytest.approx((0.0, 0.125, 1.0, 0.875))   # the video's own size: as before


def test_a_clip_file_ingest_shrank_is_bucketed_by_its_own_pixels() -> None:
    """clips.encode_width=320 on a 640x360 source wrote 320x180 clip files, and export chose the
    bucket from the source's 640x360 (the row's size): every sample a 2x upscale, against the
    card's "without upscaling". The file's size now caps the picture."""
    video = {"width": 640, "height": 360, "display_width": 640, "display_height": 360, "rotation": 0}
    row = {"width": 640, "height": 360, "clip_mode": "encode", "file_width": 320, "file_height": 180}
    assert _picture(row, video)[1:] == pytest.approx((320, 180))
    assert _picture({**row, "file_width": 640}, video)[1:] == pytest.approx((640, 360))       # not resized
    assert _picture({**row, "clip_mode": "remux", "file_width": 320}, video)[1:] == pytest.approx((640, 360))
    turned = {**video, "rotation": 90, "display_width": 360, "display_height": 640}          # a phone video
    assert _picture({**row, "width": 360, "height": 640}, turned)[1:] == pytest.approx((180, 320))

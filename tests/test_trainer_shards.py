"""The shard schema: the writer's tars read back by the `webdataset` package and by the trainer's
bucket loader; corrupt samples are skipped and counted; the loader resumes exactly."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from trainer.shards import (
    Bucket,
    BucketLoader,
    SampleMeta,
    ShardWriter,
    SkipCounter,
    decode_into,
    decode_mp4,
    default_decode_workers,
    encode_mp4,
    iter_raw_samples,
    list_shards,
    shard_name,
    write_shard,
)
from trainer.synthetic import write_synthetic_shards
from trainer.train import load_job_config
from trainer.typedconfig import ConfigError

BUCKETS = ["32x16x5", "16x16x1", "16x32x3"]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(out, BUCKETS, per_bucket=6, seed=1, samples_per_shard=5)
    return out


def test_mp4_round_trip_keeps_every_frame():
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (5, 1, 1, 3), dtype=np.uint8), 16, 1).repeat(24, 2)
    back = decode_mp4(encode_mp4(frames, fps=8.0, crf=10))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 6


def test_webdataset_package_reads_the_shards(shard_dir: Path):
    import webdataset as wds
    shards = list_shards(shard_dir)
    assert len(shards) == 4 and all(Path(s).name.startswith("train-") for s in shards)
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(samples) == 18
    meta = SampleMeta.from_json(samples[0]["json"])
    assert meta.key == samples[0]["__key__"] and meta.caption.startswith("a ")
    assert decode_mp4(samples[0]["mp4"]).shape[0] == Bucket.parse(meta.bucket).frames


def test_loader_draws_whole_batches_per_bucket(shard_dir: Path):
    loader = BucketLoader(list_shards(shard_dir), batch_size=3, seed=0, shuffle_buffer=4)
    seen = []
    for _, batch in zip(range(12), loader):
        b = batch.bucket
        assert batch.video.shape == (3, b.frames, b.height, b.width, 3)
        assert {m.bucket for m in batch.metas} == {b.name}
        seen.append(b.name)
    assert set(seen) == set(BUCKETS)
    assert loader.state.epoch >= 1          # 18 samples / 3 = 6 batches per epoch
    assert not loader.skipped


def test_loader_resumes_from_its_state(shard_dir: Path):
    def keys(loader, n):
        return [tuple(m.key for m in batch.metas) for _, batch in zip(range(n), loader)]
    shards = list_shards(shard_dir)
    full = keys(BucketLoader(shards, batch_size=2, seed=3, shuffle_buffer=4), 14)
    first = BucketLoader(shards, batch_size=2, seed=3, shuffle_buffer=4)
    head = keys(first, 5)
    second = BucketLoader(shards, batch_size=2, seed=3, shuffle_buffer=4)
    second.load_state_dict(first.state_dict())
    assert head + keys(second, 9) == full


def test_ranks_read_disjoint_samples(shard_dir: Path):
    shards = list_shards(shard_dir)
    per_rank = []
    for rank in range(2):
        loader = BucketLoader(shards, batch_size=1, seed=0, rank=rank, world_size=2, shuffle_buffer=1)
        keys = set()
        for batch in loader:                  # one epoch: each sample goes to exactly one rank
            if loader.state.epoch > 0:
                break
            keys.add(batch.metas[0].key)
        per_rank.append(keys)
    assert len(per_rank[0] | per_rank[1]) == 18 and not per_rank[0] & per_rank[1]


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize("workers", [1, 3])
def test_corrupt_samples_are_skipped_and_counted(tmp_path: Path, workers: int):
    frames = np.full((3, 16, 16, 3), 128, dtype=np.uint8)
    good = encode_mp4(frames, fps=8)
    with ShardWriter(tmp_path) as writer:
        for i in range(4):
            writer.write(SampleMeta(key=f"ok{i}", caption="grey", bucket="16x16x3", fps=8), good)
        writer.write(SampleMeta(key="garbage", caption="x", bucket="16x16x3", fps=8), b"not an mp4 at all")
        writer.write(SampleMeta(key="short", caption="x", bucket="16x16x3", fps=8), encode_mp4(frames[:2], 8))
    path = writer.written[0]
    with tarfile.open(path, "a") as tar:   # samples the exporter could never write, but a disk could
        _add(tar, "nojson.mp4", good)
        _add(tar, "badjson.mp4", good)
        _add(tar, "badjson.json", b"{not json")
        _add(tar, "unknownkey.mp4", good)
        _add(tar, "unknownkey.json", json.dumps({"key": "unknownkey", "caption": "c", "bucket": "16x16x3",
                                                 "fps": 8, "colour": "red"}).encode())
    loader = BucketLoader([str(path)], batch_size=2, seed=0, shuffle_buffer=1, decode_workers=workers)
    # epoch 0 is [ok0 ok1] [ok2 ok3] [garbage short]: the third batch is dropped whole, so the third
    # batch handed over is epoch 1's first
    batches = [b for _, b in zip(range(3), loader)]
    assert loader.state.epoch == 1
    assert all(m.key.startswith("ok") for b in batches for m in b.metas)
    assert sum(len(b.metas) for b in batches) == 6
    # a batch's decode failures count when it is handed over; a shard's broken members when it is
    # read (epoch 1's reader may be past them already)
    assert loader.skipped["bad_video"] == 2
    assert {k: v for k, v in loader.skipped.items() if k != "bad_video"} in (
        {"missing_member": 1, "bad_json": 2}, {"missing_member": 2, "bad_json": 4})


def test_truncated_shard_yields_its_complete_samples(tmp_path: Path):
    write_synthetic_shards(tmp_path, ["16x16x1"], per_bucket=4, samples_per_shard=10)
    path = tmp_path / "train-000000.tar"
    with tarfile.open(path) as tar:          # cut the file in the middle of the last video
        last = [m for m in tar.getmembers() if m.name.endswith(".mp4")][-1]
    path.write_bytes(path.read_bytes()[: last.offset_data + last.size // 2])
    skipped = SkipCounter()
    samples = list(iter_raw_samples(str(path), skipped))
    assert len(samples) == 3 and skipped["bad_shard"] == 1


def test_list_shards_forms(shard_dir: Path):
    shards = list_shards(shard_dir)
    assert list_shards(str(shard_dir / "train-*.tar")) == shards
    assert list_shards(",".join(reversed(shards))) == shards
    assert list_shards(f"file://{shards[0]}") == [f"file://{shards[0]}"]
    loader = BucketLoader([f"file://{s}" for s in shards], batch_size=2)
    assert next(iter(loader)).video.shape[0] == 2


def test_writers_roll_over_and_leave_no_partial_shard(tmp_path: Path):
    mp4 = encode_mp4(np.zeros((1, 16, 16, 3), dtype=np.uint8), fps=8)
    metas = [SampleMeta(key=f"k{i}", caption="c", bucket="16x16x1", fps=8, split="val") for i in range(5)]
    with ShardWriter(tmp_path / "a", split="val", max_samples=2) as writer:
        for meta in metas:
            writer.write(meta, mp4)
    assert [p.name for p in writer.written] == [shard_name("val", i) for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [shard_name("val", i) for i in range(3)]

    def failing():
        yield metas[0], mp4
        raise RuntimeError("the export task died")
    target = tmp_path / shard_name("val", 7)
    with pytest.raises(RuntimeError):
        write_shard(target, failing())
    assert list(tmp_path.iterdir()) == [tmp_path / "a"]
    assert write_shard(target, ((m, mp4) for m in metas)) == 5
    assert len(list(iter_raw_samples(str(target), SkipCounter()))) == 5


def test_schema_rejects_bad_metadata():
    with pytest.raises(ValueError, match="key"):
        SampleMeta(key="a.b", caption="c", bucket="16x16x1", fps=8)
    with pytest.raises(ValueError, match="bucket"):
        SampleMeta(key="a", caption="c", bucket="16x16", fps=8)
    with pytest.raises(ValueError, match="split"):
        SampleMeta(key="a", caption="c", bucket="16x16x1", fps=8, split="test")
    assert Bucket.parse("320x192x33") == Bucket(320, 192, 33)


def test_sample_json_is_the_fields_as_asdict_gives_them():
    """to_json writes the fields without asdict's deep copy (export plans 80k of them): the same bytes."""
    import dataclasses

    meta = SampleMeta(key="c1", caption="a cat", bucket="16x16x1", fps=8.0, clip_id="c1",
                      captions={"v2": "b", "v1": "a"}, caption_version="v1", signals={"motion": 1.5, "ocr": "x"},
                      lineage={"bar_crop": [0.0, 0.1], "aspect_crop": (0.0, 0.0, 1.0, 1.0), "nested": {"k": [1, None]}})
    assert meta.to_json() == json.dumps(dataclasses.asdict(meta), ensure_ascii=False, sort_keys=True).encode()


def _batches(loader: BucketLoader, n: int) -> list[tuple[tuple[str, ...], np.ndarray]]:
    return [(tuple(m.key for m in b.metas), b.video.copy()) for _, b in zip(range(n), loader)]


def test_decode_workers_give_the_same_batches(shard_dir: Path):
    shards = list_shards(shard_dir)
    one = _batches(BucketLoader(shards, batch_size=2, seed=5, shuffle_buffer=4, decode_workers=1), 14)
    three = _batches(BucketLoader(shards, batch_size=2, seed=5, shuffle_buffer=4, decode_workers=3), 14)
    assert [keys for keys, _ in one] == [keys for keys, _ in three]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one, three))
    # and each sample's pixels are what decode_mp4 gives for it alone
    by_key = {s.meta.key: s.mp4 for url in shards for s in iter_raw_samples(url, SkipCounter())}
    keys, video = three[3]
    assert all(np.array_equal(video[i], decode_mp4(by_key[k])) for i, k in enumerate(keys))


def test_loader_resumes_exactly_with_several_workers(shard_dir: Path):
    shards = list_shards(shard_dir)
    full = _batches(BucketLoader(shards, batch_size=2, seed=3, shuffle_buffer=4, decode_workers=3), 12)
    first = BucketLoader(shards, batch_size=2, seed=3, shuffle_buffer=4, decode_workers=3, prefetch=1)
    head = _batches(first, 5)
    second = BucketLoader(shards, batch_size=2, seed=3, shuffle_buffer=4, decode_workers=2)
    second.load_state_dict(first.state_dict())
    resumed = head + _batches(second, 7)
    assert [keys for keys, _ in resumed] == [keys for keys, _ in full]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(resumed, full))


def test_a_bad_sample_inside_a_batch_leaves_the_others_in_order(tmp_path: Path):
    rng = np.random.default_rng(0)
    clips = {f"ok{i}": rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8) for i in range(3)}
    with ShardWriter(tmp_path) as writer:
        for key in ("ok0", "garbage", "ok1", "wrongsize", "ok2"):
            mp4 = (encode_mp4(clips[key], fps=8) if key in clips else b"\x00" * 64 if key == "garbage"
                   else encode_mp4(np.zeros((3, 32, 16, 3), dtype=np.uint8), fps=8))
            writer.write(SampleMeta(key=key, caption=key, bucket="16x16x3", fps=8), mp4)
    loader = BucketLoader([str(p) for p in writer.written], batch_size=5, seed=0, shuffle_buffer=1, decode_workers=3)
    batch = next(iter(loader))
    assert [m.key for m in batch.metas] == batch.captions == ["ok0", "ok1", "ok2"]
    assert batch.video.shape == (3, 3, 16, 16, 3) and batch.video.flags.c_contiguous
    for i, key in enumerate(batch.captions):
        assert np.array_equal(batch.video[i], decode_mp4(encode_mp4(clips[key], fps=8)))
    assert loader.skipped == {"bad_video": 2}


def test_decode_into_fills_a_slot_or_refuses():
    frames = np.random.default_rng(1).integers(0, 255, (4, 16, 32, 3), dtype=np.uint8)
    mp4 = encode_mp4(frames, fps=8)
    out = np.zeros((3, 16, 32, 3), dtype=np.uint8)
    decode_into(mp4, out)
    assert np.array_equal(out, decode_mp4(mp4)[:3])
    with pytest.raises(ValueError, match="decoded 4 frames"):
        decode_into(mp4, np.zeros((5, 16, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="bucket wants 16x16"):
        decode_into(mp4, np.zeros((3, 16, 16, 3), dtype=np.uint8))


def test_decode_workers_config_is_checked_at_load():
    assert load_job_config("dit", None, ["data.decode_workers=3"]).data.decode_workers == 3
    with pytest.raises(ConfigError, match="decode_workers"):
        load_job_config("dit", None, ["data.decode_workers=-1"])
    with pytest.raises(ValueError, match="decode_workers"):
        BucketLoader(["x.tar"], batch_size=1, decode_workers=-2)
    assert BucketLoader(["x.tar"], batch_size=1).decode_workers == default_decode_workers() >= 1

"""The training-shard format, defined once: the exporter writes with it and the trainer reads with it.

A shard is a WebDataset tar: per sample `{key}.mp4` (H.264, every frame of the bucket's size) and
`{key}.json` (`SampleMeta`). Shards are named `{split}-{index:06d}.tar`. Any WebDataset reader can
read them; this module's reader streams them from local paths or fsspec URLs, decodes the video
with PyAV and draws batches per bucket (every sample in a batch has the same size and length, so
nothing is padded). Corrupt samples are skipped and counted, never fatal.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import random
import sys
import tarfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import av
import fsspec
import numpy as np
import safetensors.numpy

SCHEMA_VERSION = 1
SPLITS = ("train", "val")


class ShardError(FileNotFoundError):
    """No shards where `--data` points."""


class NoBatchError(RuntimeError):
    """A whole epoch of a rank's shards gave no full batch (too few samples for the batch size)."""


def fields_of(obj: Any) -> dict[str, Any]:
    """A dataclass's fields by name, values not copied (what `dataclasses.asdict` gives for one
    that holds no dataclass, without its deep copy)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@dataclass(frozen=True, order=True)
class Bucket:
    """A training shape: every sample in the bucket is re-encoded to exactly this size and length."""

    width: int
    height: int
    frames: int

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @classmethod
    def parse(cls, name: str) -> "Bucket":
        """`"320x192x33"` -> Bucket(320, 192, 33)."""
        try:
            w, h, f = (int(part) for part in name.split("x"))
        except ValueError:
            raise ValueError(f"bucket name must look like WIDTHxHEIGHTxFRAMES, got {name!r}") from None
        if w <= 0 or h <= 0 or f <= 0 or w % 2 or h % 2:
            raise ValueError(f"bucket {name!r}: sizes must be positive and width/height even")
        return cls(w, h, f)


@dataclass
class SampleMeta:
    """The `.json` of one sample. Unknown keys are rejected so a schema drift fails loudly."""

    key: str                                  # WebDataset key: no dots, unique in the dataset
    caption: str                              # the caption to train on (the chosen version)
    bucket: str                               # Bucket.name
    fps: float
    clip_id: str = ""
    split: str = "train"
    captions: dict[str, str] = field(default_factory=dict)   # every caption version -> text
    caption_version: str = ""                 # the version `caption` came from
    signals: dict[str, Any] = field(default_factory=dict)    # quality signals (motion, aesthetics...)
    lineage: dict[str, Any] = field(default_factory=dict)    # source_uri, video_id, frame_start/end...
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.key or "." in self.key or "/" in self.key:
            raise ValueError(f"sample key must be non-empty without '.' or '/': {self.key!r}")
        Bucket.parse(self.bucket)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")

    def to_json(self) -> bytes:
        # the fields as they are: `asdict` deep-copies every value first (a plan of 80k samples spent
        # ~10 s copying lineage dicts); the JSON is the same, no field holds a dataclass
        return json.dumps(fields_of(self), ensure_ascii=False, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "SampleMeta":
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("sample json must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown sample json keys {unknown}")
        if raw.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise ValueError(f"sample schema {raw['schema_version']} is newer than {SCHEMA_VERSION}")
        return cls(**raw)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


# ---------------------------------------------------------------------------------------------
# Video bytes
# ---------------------------------------------------------------------------------------------

def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18, threads: int = 0) -> bytes:
    """(T, H, W, 3) uint8 RGB -> H.264 MP4 bytes (yuv420p, so H and W must be even). `threads`:
    the encoder's threads (0: x264's choice, about 1.5 per CPU; the bytes depend on it)."""

    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = threads
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_mp4(data: bytes, max_frames: int | None = None) -> np.ndarray:
    """MP4 bytes -> (T, H, W, 3) uint8 RGB, every frame in decode order."""
    frames = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24", threads=1))   # see decode_into
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError("no video frames decoded")
    return np.stack(frames)


def decode_into(data: bytes, out: np.ndarray) -> None:
    """Decode MP4 bytes into `out`, a (T, H, W, 3) uint8 slot of a batch: exactly its first T frames,
    as RGB, or ValueError (fewer frames, another size). One thread per clip, so several clips decode
    side by side (PyAV releases the GIL in the decoder and in swscale)."""
    t, h, w, _ = out.shape
    n = 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for frame in container.decode(stream):
            if (frame.height, frame.width) != (h, w):
                raise ValueError(f"frames are {frame.width}x{frame.height}, bucket wants {w}x{h}")
            # threads=1: swscale's default (a thread per core) costs more CPU than it saves on a clip's
            # frame; the YUV->RGB conversion lands in one copy into the batch (no list, no np.stack)
            out[n] = frame.to_ndarray(format="rgb24", threads=1)
            n += 1
            if n == t:
                return
    raise ValueError(f"decoded {n} frames, bucket wants {t}")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _add_sample(tar: tarfile.TarFile, meta: SampleMeta, payload: bytes | dict[str, bytes]) -> int:
    """Append `{key}.mp4` (or `{key}.{suffix}` for each of a dict of payloads) and `{key}.json`;
    returns the bytes added (headers included)."""
    size = 0
    members = payload if isinstance(payload, dict) else {"mp4": payload}
    for suffix, payload in (*members.items(), ("json", meta.to_json())):
        info = tarfile.TarInfo(f"{meta.key}.{suffix}")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644   # fixed mtime: reproducible bytes
        tar.addfile(info, io.BytesIO(payload))
        size += 512 + -(-len(payload) // 512) * 512
    return size


class ShardWriter:
    """Writes samples into `{split}-NNNNNN.tar` shards, each renamed into place only when complete.

    Starts a new shard past `max_bytes` or `max_samples`. Use as a context manager.
    """

    def __init__(self, out_dir: str | Path, split: str = "train", max_bytes: int = 512 << 20,
                 max_samples: int = 10_000, start_index: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split, self.max_bytes, self.max_samples = split, max_bytes, max_samples
        self.index = start_index
        self.written: list[Path] = []          # completed shard paths
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._bytes = self._count = 0

    def write(self, meta: SampleMeta, mp4: bytes) -> None:
        if meta.split != self.split:
            raise ValueError(f"sample {meta.key} has split {meta.split!r}, writer is {self.split!r}")
        if self._tar is not None and (self._bytes >= self.max_bytes or self._count >= self.max_samples):
            self._finish()
        if self._tar is None:
            self._tmp = self.out_dir / f".{shard_name(self.split, self.index)}.tmp"
            self._tar = tarfile.open(self._tmp, "w")
        self._bytes += _add_sample(self._tar, meta, mp4)
        self._count += 1

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.out_dir / shard_name(self.split, self.index)
        os.replace(self._tmp, final)
        self.written.append(final)
        self.index += 1
        self._tar, self._tmp, self._bytes, self._count = None, None, 0, 0

    def close(self) -> None:
        if self._tar is not None:
            self._finish()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:           # leave no half shard behind
            self._tar.close()
            self._tmp.unlink(missing_ok=True)  # type: ignore[union-attr]


def write_shard(path: str | Path, samples: Iterable[tuple[SampleMeta, bytes | dict[str, bytes]]]) -> int:
    """Write one complete shard at `path` (renamed into place at the end); returns the sample count.
    The form for one-task-per-shard writers (the exporter, the latent cache): a task that dies
    leaves no shard behind. A sample's payload is its MP4, or a dict suffix -> bytes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    try:
        with tarfile.open(tmp, "w") as tar:
            for meta, mp4 in samples:
                _add_sample(tar, meta, mp4)
                count += 1
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def list_shards(data: str | Path | Iterable[str], split: str = "train") -> list[str]:
    """Shard URLs from a directory (its `{split}-*.tar`, else every `*.tar`), a glob, an fsspec URL,
    a comma-separated list or a list. Sorted, so every rank sees the same order."""
    if not isinstance(data, (str, Path)):
        return sorted(str(u) for u in data)
    text = str(data)
    if "," in text:
        return sorted(u for part in text.split(",") if part.strip() for u in list_shards(part.strip(), split))
    if "://" not in text and not any(ch in text for ch in "*?[") and not Path(text).exists():
        raise ShardError(f"no shards at {text}")
    if "://" not in text and Path(text).is_dir():
        found = sorted(Path(text).glob(f"{split}-*.tar")) or sorted(Path(text).glob("*.tar"))
        if not found:
            raise ShardError(f"no shards at {text} (no .tar files in it)")
        return [str(p) for p in found]
    if any(ch in text for ch in "*?["):
        files = fsspec.open_files(text)
        if not files:
            raise ShardError(f"no shards at {text} (nothing matches)")
        return sorted(f.full_name if "://" in text else f.path for f in files)
    return [text]


def _open(url: str):
    if "://" in url and not url.startswith("file://"):
        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


@dataclass
class RawSample:
    """A sample whose json is parsed but whose video (or cached latents) is still bytes (cheap to
    shuffle and skip)."""

    meta: SampleMeta
    mp4: bytes | None
    url: str
    latents: bytes | None = None          # `{key}.safetensors` of a latent cache (trainer/cache.py)

    @property
    def cached(self) -> bool:
        return self.latents is not None


class SkipCounter(Counter):
    """Why samples were skipped: reason -> count. Shared by reader and batcher, logged by the trainer."""


def iter_raw_samples(url: str, skipped: SkipCounter) -> Iterator[RawSample]:
    """Stream one shard; members are grouped by key (the name up to the first dot)."""
    def flush(key: str | None, parts: dict[str, bytes]) -> Iterator[RawSample]:
        if key is None:
            return
        if "json" not in parts or ("mp4" not in parts and "safetensors" not in parts):
            skipped["missing_member"] += 1
            return
        try:
            meta = SampleMeta.from_json(parts["json"])
            if meta.key != key:
                raise ValueError(f"json key {meta.key!r} != member key {key!r}")
        except (ValueError, TypeError) as e:
            skipped["bad_json"] += 1
            _warn(f"skipping {url}:{key}: {e}")
            return
        yield RawSample(meta, parts.get("mp4"), url, parts.get("safetensors"))

    key: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with _open(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                member_key, suffix = base.split(".", 1)
                if member_key != key:
                    yield from flush(key, parts)
                    key, parts = member_key, {}
                payload = tar.extractfile(member).read()  # type: ignore[union-attr]
                if len(payload) != member.size:
                    raise EOFError(f"member {member.name} is cut short")
                parts[suffix] = payload
    except (tarfile.TarError, OSError, EOFError) as e:
        skipped["bad_shard"] += 1
        _warn(f"shard {url} is truncated or unreadable after key {key!r}: {e}")
        return
    yield from flush(key, parts)


_WARNINGS_LEFT = [20]   # per process: the first few skips are explained, all are counted


def _warn(message: str) -> None:
    if _WARNINGS_LEFT[0] > 0:
        _WARNINGS_LEFT[0] -= 1
        suffix = " (further skips are only counted)" if _WARNINGS_LEFT[0] == 0 else ""
        print(f"[recap.shards] {message}{suffix}", file=sys.stderr)


@dataclass
class Batch:
    """One bucket's worth of samples: `video` is (B, T, H, W, 3) uint8; a batch from a latent cache
    has no video but `latents` (B, C, T', H', W'), `logvar` when the cache kept it, and `text`, each
    caption's unpadded token states (L_i, D). `pinned`: for a loader with `pin_memory`, the
    page-locked torch tensor behind each of those arrays ("video", "latents", "logvar"): copy that
    one to the GPU (`non_blocking`), so the copy is asynchronous and its memory is not reused
    before the copy is done."""

    bucket: Bucket
    video: np.ndarray | None
    captions: list[str]
    metas: list[SampleMeta]
    latents: np.ndarray | None = None
    logvar: np.ndarray | None = None
    text: list[np.ndarray] | None = None
    pinned: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.metas)


@dataclass
class LoaderState:
    """Where a rank's stream stands: resuming replays `batches` raw batches of `epoch` without decoding."""

    epoch: int = 0
    batches: int = 0


def default_decode_workers() -> int:
    """Decode threads per rank when not configured: the CPUs this process may run on, shared by
    the ranks on this node (torchrun's LOCAL_WORLD_SIZE), at most 8 (a rank rarely needs more)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


def _decode_sample(data: bytes, out: np.ndarray) -> str | None:
    """Run in a decode worker: fill one batch slot; the reason on failure (counted by the consumer)."""
    try:
        decode_into(data, out)
    except Exception as e:   # any decoder failure: this sample only, never the run
        return f"{type(e).__name__}: {e}"
    return None


class BucketLoader:
    """Endless, deterministic stream of per-bucket batches for one rank.

    Each epoch: shards are shuffled with (seed, epoch) and split between ranks (by shard when there
    are at least as many shards as ranks, else by sample); samples pass through a seeded shuffle
    buffer and collect per bucket; a bucket that reaches its batch size becomes a batch. Leftovers
    are dropped at the epoch's end, so an epoch's batches depend only on (seed, epoch, rank) and
    `LoaderState` is enough to resume exactly. Videos are decoded only for batches that are used:
    a background thread reads the shards and hands each batch's samples to `decode_workers`
    threads, which decode them side by side straight into the batch's array (page-locked with
    `pin_memory`); batches come out in order whatever the number of workers. A sample that fails
    to decode or has the wrong shape is dropped from its batch and counted in `skipped` when the
    batch is handed over (a shard's broken members count when it is read).
    """

    def __init__(self, shards: list[str], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 256,
                 bucket_batch_sizes: dict[str, int] | None = None, buckets: list[str] | None = None,
                 prefetch: int = 2, decode_workers: int = 0, pin_memory: bool = False):
        if not shards:
            raise ValueError("no shards given")
        if decode_workers < 0:
            raise ValueError("decode_workers must be >= 0 (0: one per CPU, see default_decode_workers)")
        self.shards, self.batch_size, self.seed = list(shards), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.bucket_batch_sizes = dict(bucket_batch_sizes or {})
        self.buckets = set(buckets) if buckets else None
        self.prefetch = prefetch           # batches decoded (or being decoded) ahead of the consumer
        self.decode_workers = decode_workers or default_decode_workers()
        self.pin_memory = pin_memory
        self.state = LoaderState()
        self.skipped = SkipCounter()
        self._epoch_counts: Counter = Counter()   # bucket -> samples read this epoch (for errors)

    def _epoch_raw_batches(self, epoch: int) -> Iterator[tuple[Bucket, list[RawSample]]]:
        rng = random.Random(f"{self.seed}-{epoch}")
        shards = list(self.shards)
        rng.shuffle(shards)
        by_shard = len(shards) >= self.world_size
        mine = shards[self.rank::self.world_size] if by_shard else shards

        def samples() -> Iterator[RawSample]:
            index = 0
            for url in mine:
                for sample in iter_raw_samples(url, self.skipped):
                    if by_shard or index % self.world_size == self.rank:
                        yield sample
                    index += 1

        # a batch is one bucket, and all cached (latents) or all video
        pending: dict[tuple[str, bool], list[RawSample]] = {}
        buffer: list[RawSample] = []
        self._epoch_counts = Counter()

        def add(sample: RawSample) -> Iterator[tuple[Bucket, list[RawSample]]]:
            name = sample.meta.bucket
            if self.buckets is not None and name not in self.buckets:
                return
            self._epoch_counts[name] += 1
            group = pending.setdefault((name, sample.cached), [])
            group.append(sample)
            if len(group) >= self.bucket_batch_sizes.get(name, self.batch_size):
                del pending[(name, sample.cached)]
                yield Bucket.parse(name), group

        for sample in samples():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], sample = sample, buffer[i]
            yield from add(sample)
        rng.shuffle(buffer)
        for sample in buffer:
            yield from add(sample)

    def _raw_batches(self) -> Iterator[tuple[LoaderState, Bucket, list[RawSample]]]:
        """Raw batches from the saved state on; each comes with the state *after* it."""
        epoch, skip = self.state.epoch, self.state.batches
        while True:
            count, produced = 0, False
            for bucket, group in self._epoch_raw_batches(epoch):
                count += 1
                produced = True
                if count <= skip:
                    continue
                yield LoaderState(epoch, count), bucket, group
            if not produced:
                raise NoBatchError(self._no_batch_message(epoch))
            epoch, skip = epoch + 1, 0

    def _no_batch_message(self, epoch: int) -> str:
        where = f" on rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
        skipped = f" (skipped: {dict(self.skipped)})" if self.skipped else ""
        counts = self._epoch_counts
        if not counts:
            chosen = f" in the buckets {sorted(self.buckets)} (data.buckets)" if self.buckets else ""
            return f"the shards hold no usable sample{chosen}{where}{skipped}"
        most = max(counts.values())
        per_bucket = ", ".join(f"{name}: {n} (batch {self.bucket_batch_sizes.get(name, self.batch_size)})"
                               for name, n in sorted(counts.items()))
        return (f"epoch {epoch} gave no full batch{where}: {sum(counts.values())} samples ({per_bucket}), fewer "
                f"than a batch in every bucket: lower data.batch_size (or data.bucket_batch_sizes) to at "
                f"most {most}{skipped}")

    def _empty(self, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Any]:
        """A batch array, and the page-locked torch tensor it views when pinning (else None)."""
        if not self.pin_memory:
            return np.empty(shape, dtype), None
        # lazy: torch only for a CUDA trainer's pinned batches; the exporter imports this module without it
        import torch
        tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
        return tensor.numpy(), tensor

    def _start(self, bucket: Bucket, group: list[RawSample], pool: ThreadPoolExecutor) -> Callable[[], Batch | None]:
        """Hand a raw batch to the decode workers; the function returned waits for them and gives
        the batch (run by the consumer, so skips are counted and explained in batch order)."""
        if group[0].cached:
            future = pool.submit(self._load_latents, bucket, group)
            return lambda: self._count_skips("bad_latents", *future.result())
        video, pinned = self._empty((len(group), bucket.frames, bucket.height, bucket.width, 3), np.uint8)
        futures = [pool.submit(_decode_sample, sample.mp4, video[i]) for i, sample in enumerate(group)]
        return lambda: self._video_batch(bucket, group, [f.result() for f in futures], video, pinned)

    def _video_batch(self, bucket: Bucket, group: list[RawSample], errors: list[str | None], video: np.ndarray,
                     pinned: Any) -> Batch | None:
        kept: list[RawSample] = []
        for i, (sample, error) in enumerate(zip(group, errors)):
            if error is not None:
                self.skipped["bad_video"] += 1
                _warn(f"skipping {sample.url}:{sample.meta.key}: {error}")
                continue
            if len(kept) < i:       # close the gap a skipped sample left: the batch stays one block
                video[len(kept)] = video[i]
            kept.append(sample)
        n = len(kept)
        if not n:
            return None
        metas = [sample.meta for sample in kept]
        return Batch(bucket, video[:n], [m.caption for m in metas], metas,
                     pinned={"video": pinned[:n]} if pinned is not None else {})

    def _count_skips(self, reason: str, batch: Batch | None, failures: list[str]) -> Batch | None:
        for failure in failures:
            self.skipped[reason] += 1
            _warn(failure)
        return batch

    def _load_latents(self, bucket: Bucket, group: list[RawSample]) -> tuple[Batch | None, list[str]]:
        """A batch of a latent cache (run in a decode worker): `{key}.safetensors` holds `mean`,
        maybe `logvar`, and `text.0` (the states of the sample's caption; trainer/cache.py writes
        it). Also the samples skipped, explained."""
        means, logvars, texts, metas, failures = [], [], [], [], []
        for sample in group:
            try:
                tensors = safetensors.numpy.load(sample.latents)  # type: ignore[arg-type]
                mean, text = tensors["mean"], tensors["text.0"]
                if means and mean.shape != means[0].shape:
                    raise ValueError(f"latents {tuple(mean.shape)}, the batch has {tuple(means[0].shape)}")
            except Exception as e:   # a damaged record: this sample only, never the run
                failures.append(f"skipping {sample.url}:{sample.meta.key}: {type(e).__name__}: {e}")
                continue
            means.append(mean)
            logvars.append(tensors.get("logvar"))
            texts.append(text)
            metas.append(sample.meta)
        if not means:
            return None, failures
        batch = Batch(bucket, None, [m.caption for m in metas], metas, text=texts)
        arrays = {"latents": means, "logvar": logvars if all(v is not None for v in logvars) else None}
        for name, parts in arrays.items():
            if parts is not None:
                out, pinned = self._empty((len(parts), *parts[0].shape), parts[0].dtype)
                setattr(batch, name, np.stack(parts, out=out))
                if pinned is not None:
                    batch.pinned[name] = pinned
        return batch, failures

    def __iter__(self) -> Iterator[Batch]:
        """Yields decoded batches; `self.state` always describes the batches consumed so far."""
        q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="shard-decode")

        def produce() -> None:
            try:
                for state, bucket, group in self._raw_batches():
                    item = (state, self._start(bucket, group, pool))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # hand the error to the consumer
                q.put(("error", e))

        thread = threading.Thread(target=produce, daemon=True, name="shard-loader")
        thread.start()
        try:
            while True:
                state, finish = q.get()
                if state == "error":
                    raise finish
                batch = finish()
                self.state = state
                if batch is not None:   # every sample corrupt: the batch still counts as consumed
                    yield batch
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
                thread.join(timeout=0.05)
            pool.shutdown(wait=True, cancel_futures=True)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.state.epoch, "batches": self.state.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = LoaderState(int(state["epoch"]), int(state["batches"]))


__all__ = ["SCHEMA_VERSION", "ShardError", "NoBatchError", "RawSample", "Bucket", "SampleMeta", "ShardWriter", "write_shard", "BucketLoader", "Batch",
           "LoaderState", "SkipCounter", "encode_mp4", "decode_mp4", "decode_into", "default_decode_workers", "list_shards", "shard_name",
           "iter_raw_samples"]

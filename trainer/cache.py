"""The latent cache: every sample of a set of shards encoded once, so DiT training loads neither
the autoencoder nor the text encoder.

  recap train cache --data SHARDS --vae RUN_OR_ID --text-encoder ID --out CACHE
  torchrun --nproc-per-node 8 -m trainer.cli cache --data SHARDS ... --out CACHE   # a slice per rank
  recap train cache --data SHARDS ... --out CACHE --launcher ray --ray-address auto --num-workers 16
      # Ray actors (trainer/launch.py), each loading the models once and taking whole shards
  recap train dit --config configs/dit.yaml --data CACHE --out RUN

CACHE holds one shard per input shard, under the same name, in which each sample is
`{key}.json` (the input sample's `SampleMeta`, unchanged) and `{key}.safetensors`:

- `mean` (C, T', H', W'): the normalised posterior mean, exactly what the autoencoder's `encode`
  gives the DiT online; `logvar` beside it when the cache keeps the log-variance too;
- `text.0`: the unpadded token states (L, D) of the sample's caption, then `text.1`, ... those of
  its other caption versions (distinct texts, in sorted version order), so another version can be
  trained on without re-encoding.

`cache.json` records which autoencoder (its exact weights file and a hash of it) and which text
encoder made the cache, and training refuses a cache made by others; `null_text.safetensors`
holds the empty caption's states (caption dropout). Each shard is written under a temporary name
and renamed when complete: an interrupted build resumes where it stopped, and training refuses a
cache whose `cache.json` does not say it is complete.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import fsspec
import numpy as np
import safetensors.numpy
import torch
import torch.distributed as dist

from trainer.progress import progress_bar
from trainer.runtime import gather, setup_distributed
from trainer.shards import (
    SPLITS,
    Bucket,
    RawSample,
    SampleMeta,
    SkipCounter,
    decode_mp4,
    iter_raw_samples,
    list_shards,
    write_shard,
)
from trainer.text import TextEncoder, text_fingerprint
from trainer.typedconfig import to_dict
from trainer.vae import AutoencoderSource, LatentGeometry, fingerprint, load_autoencoder, resolve_source, video_tensor

FORMAT = "recap.latent_cache"
VERSION = 1
MANIFEST = "cache.json"
NULL_TEXT = "null_text.safetensors"


class CacheError(ValueError):
    """A cache that this run cannot use (made by another autoencoder or text encoder, unfinished)."""


@dataclass
class CacheSettings:
    latents: Literal["mean", "mean_logvar"] = "mean"   # keep the posterior log-variance too
    dtype: Literal["float32", "float16"] = "float32"   # how latents and token states are stored
    batch_size: int = 8                                 # samples encoded together (one bucket)


# ---------------------------------------------------------------------------------------------
# Reading a cache's manifest
# ---------------------------------------------------------------------------------------------

def cache_folder(url: str) -> str:
    """The folder of a shard (where a cache keeps its manifest)."""
    return url.rsplit("/", 1)[0] if "/" in url else "."


def read_manifest(folder: str) -> dict[str, Any] | None:
    """`folder/cache.json` (a local folder or an fsspec URL), or None when it is not a cache."""
    url = f"{folder}/{MANIFEST}"
    try:
        if "://" in url and not url.startswith("file://"):
            with fsspec.open(url, "r") as f:
                return json.load(f)
        path = Path(url.removeprefix("file://"))
        return json.loads(path.read_text()) if path.is_file() else None
    except FileNotFoundError:
        return None


def manifests_for(shards: list[str]) -> dict[str, dict[str, Any]]:
    """Cache folder -> manifest, for the folders of `shards` that are latent caches."""
    found = {}
    for folder in dict.fromkeys(cache_folder(s) for s in shards):
        manifest = read_manifest(folder)
        if manifest is not None:
            found[folder] = manifest
    return found


def check_cache(folder: str, manifest: dict[str, Any], vae: AutoencoderSource, vae_fp: str,
                text_encoder: str, text_fp: str) -> None:
    """CacheError unless the cache at `folder` is complete and was made by this autoencoder and
    text encoder."""
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{folder}/{MANIFEST} is not a recap latent cache manifest")
    if manifest.get("version", 0) > VERSION:
        raise CacheError(f"the latent cache {folder} has format version {manifest['version']}, newer than this "
                         f"trainer's {VERSION}")
    if not manifest.get("complete"):
        raise CacheError(f"the latent cache {folder} is unfinished (its `recap train cache` stopped early): rerun "
                         "that command with the same arguments to complete it")
    made = manifest["vae"]
    if made["fingerprint"] != vae_fp:
        src = made["source"]
        raise CacheError(
            f"the latent cache {folder} was made by another autoencoder: {src['kind']} {src.get('path', '')} "
            f"(fingerprint {made['fingerprint']}), while this run's vae is {vae.kind} {vae.path} (fingerprint "
            f"{vae_fp}): set vae.kind/vae.path to the cache's autoencoder, or rebuild the cache with "
            f"`recap train cache --vae {vae.path or vae.kind}`")
    text = manifest["text"]
    if text["fingerprint"] != text_fp:
        raise CacheError(
            f"the latent cache {folder} was made by another text encoder: {text['encoder']} (max_length "
            f"{text['max_length']}), while this run's is {text_encoder}: set text.encoder and text.max_length "
            "to the cache's, or rebuild the cache with `recap train cache --text-encoder ...`")


def load_null_text(folder: str) -> torch.Tensor:
    """The empty caption's token states (L, D) of the cache at `folder`."""
    with fsspec.open(f"{folder}/{NULL_TEXT}", "rb") as f:
        return torch.from_numpy(safetensors.numpy.load(f.read())["states"].copy())


def geometry_of(manifest: dict[str, Any]) -> LatentGeometry:
    v = manifest["vae"]
    return LatentGeometry(int(v["latent_channels"]), int(v["temporal_compression"]), int(v["spatial_compression"]))


def caption_texts(meta: SampleMeta) -> list[str]:
    """The texts a cached sample keeps states for: its caption first, then its other versions'."""
    texts = [meta.caption]
    for version in sorted(meta.captions):
        if meta.captions[version] not in texts:
            texts.append(meta.captions[version])
    return texts


# ---------------------------------------------------------------------------------------------
# Building a cache
# ---------------------------------------------------------------------------------------------

def cache_inputs(data: str) -> list[str]:
    """Every shard to cache: a folder's train and val shards (else every .tar), or what
    `list_shards` finds; each name once (the cache keeps input names)."""
    path = Path(data)
    if "://" not in data and "," not in data and path.is_dir():
        found = [str(p) for split in SPLITS for p in sorted(path.glob(f"{split}-*.tar"))]
        shards = found or [str(p) for p in sorted(path.glob("*.tar"))]
        if not shards:
            shards = list_shards(data)    # raises: no shards at ...
    else:
        shards = list_shards(data)
    names = Counter(s.rsplit("/", 1)[-1] for s in shards)
    twice = sorted(n for n, c in names.items() if c > 1)
    if twice:
        raise CacheError(f"shards of the same name in different folders ({', '.join(twice[:3])}): cache them "
                         "into separate --out folders")
    if manifests_for(shards):
        raise CacheError(f"{data} is already a latent cache")
    return shards


class CacheEncoder:
    """The autoencoder and text encoder on one device, encoding batches of one bucket as online
    training does (the same autocast, the same text encoder cache). One per rank, or per actor of
    a cluster job: `encode_shard` is the unit of work."""

    def __init__(self, source: AutoencoderSource, text_encoder: str, max_length: int, device: torch.device,
                 precision: str = "bf16", settings: CacheSettings | None = None):
        self.device, self.settings = device, settings or CacheSettings()
        self.source = resolve_source(source)          # the exact weights, so the cache names them
        self.text_encoder, self.max_length = text_encoder, max_length
        self.vae = load_autoencoder(self.source).to(device).eval()
        self.text = TextEncoder(text_encoder, max_length).to(device)
        self.bf16 = precision == "bf16" and device.type == "cuda"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16)
        self.dtype = np.dtype(self.settings.dtype)

    def manifest(self, data: str) -> dict[str, Any]:
        """The manifest of a cache this encoder makes from `data` (not yet complete)."""
        geometry = LatentGeometry.of(self.vae)
        return {"format": FORMAT, "version": VERSION, "complete": False,
                "vae": {"source": to_dict(self.source), "fingerprint": fingerprint(self.source),
                        "latent_channels": geometry.latent_channels,
                        "temporal_compression": geometry.temporal_compression,
                        "spatial_compression": geometry.spatial_compression},
                "text": {"encoder": self.text_encoder, "max_length": self.max_length, "dim": self.text.dim,
                         "fingerprint": text_fingerprint(self.text_encoder, self.max_length)},
                "latents": self.settings.latents, "dtype": self.settings.dtype,
                "precision": "bf16" if self.bf16 else "fp32", "made_from": data}

    def states(self, text: str) -> torch.Tensor:
        """As training computes them online: under the same autocast, through the same cache."""
        with self.autocast:
            return self.text([text])[0][0]

    @torch.no_grad()
    def encode(self, group: list[tuple[SampleMeta, np.ndarray]]) -> Iterator[tuple[SampleMeta, dict[str, bytes]]]:
        with self.autocast:
            mean, logvar = self.vae.encode_posterior(video_tensor(np.stack([v for _, v in group]), self.device))
        mean = mean.float().cpu().numpy()
        logvar = logvar.float().cpu().numpy() if logvar is not None else None
        for i, (meta, _) in enumerate(group):
            tensors = {"mean": mean[i]}
            if self.settings.latents == "mean_logvar" and logvar is not None:
                tensors["logvar"] = logvar[i]
            for j, text in enumerate(caption_texts(meta)):
                tensors[f"text.{j}"] = self.states(text).cpu().numpy()
            # C order: safetensors writes an array's buffer as it lies (the CPU convolutions leave
            # the latents channels-last)
            tensors = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in tensors.items()}
            yield meta, {"safetensors": safetensors.numpy.save(tensors)}

    def encode_shard(self, url: str, target: str | Path, skipped: SkipCounter | None = None) -> dict[str, int]:
        """Encode the shard at `url` into the cache shard `target` (renamed into place when
        complete); returns bucket -> samples written."""
        buckets: Counter = Counter()
        write_shard(target, self._encoded_samples(url, skipped if skipped is not None else SkipCounter(), buckets))
        return dict(buckets)

    def _encoded_samples(self, url: str, skipped: SkipCounter, buckets: Counter
                         ) -> Iterator[tuple[SampleMeta, dict[str, bytes]]]:
        """One input shard's samples, encoded in batches of one bucket (order within a bucket kept)."""
        pending: dict[str, list[tuple[SampleMeta, np.ndarray]]] = {}
        for sample in iter_raw_samples(url, skipped):
            video = _decoded(sample, url, skipped)
            if video is None:
                continue
            group = pending.setdefault(sample.meta.bucket, [])
            group.append((sample.meta, video))
            buckets[sample.meta.bucket] += 1
            if len(group) >= self.settings.batch_size:
                yield from self.encode(pending.pop(sample.meta.bucket))
        for group in pending.values():
            yield from self.encode(group)


class CacheWorker:
    """One worker of a cluster cache build (a Ray actor under `--launcher ray`): a `CacheEncoder`
    on the device it was given (its GPU, else the CPU), made once, then whole shards."""

    def __init__(self, source: AutoencoderSource, text_encoder: str, max_length: int, precision: str,
                 settings: CacheSettings):
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.encoder = CacheEncoder(source, text_encoder, max_length, device, precision, settings)

    def start(self, data: str) -> tuple[dict[str, Any], np.ndarray]:
        """The manifest this worker's encoder gives a cache of `data`, and the empty caption's states."""
        return self.encoder.manifest(data), self.encoder.states("").cpu().numpy()

    def encode_shard(self, url: str, target: str) -> tuple[str, dict[str, int], dict[str, int]]:
        """(cache shard name, bucket -> samples written, reason -> samples skipped)."""
        skipped = SkipCounter()
        buckets = self.encoder.encode_shard(url, target, skipped)
        return Path(target).name, buckets, dict(skipped)


def _decoded(sample: RawSample, url: str, skipped: SkipCounter) -> np.ndarray | None:
    bucket = Bucket.parse(sample.meta.bucket)
    try:
        video = decode_mp4(sample.mp4 or b"", max_frames=bucket.frames)
        if video.shape != (bucket.frames, bucket.height, bucket.width, 3):
            raise ValueError(f"decoded {video.shape[:3]}, bucket wants {(bucket.frames, bucket.height, bucket.width)}")
    except Exception as e:   # any decoder failure: this sample only, never the run
        skipped["bad_video"] += 1
        print(f"[recap.cache] skipping {url}:{sample.meta.key}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    return video


def _count_buckets(path: Path) -> dict[str, int]:
    """Bucket -> samples of a cache shard already written (read from its json members)."""
    counts: Counter = Counter()
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith(".json"):
                counts[SampleMeta.from_json(tar.extractfile(member).read()).bucket] += 1  # type: ignore[union-attr]
    return dict(counts)


def _same_maker(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["vae"]["fingerprint"] == b["vae"]["fingerprint"] and a["text"]["fingerprint"] == b["text"]["fingerprint"]
            and all(a[k] == b[k] for k in ("latents", "dtype", "precision")))


def start_cache(out: Path, encoder: CacheEncoder, data: str) -> dict[str, Any]:
    """Open the cache folder `out` for `encoder` (once, before any shard): see `open_cache`."""
    return open_cache(out, encoder.manifest(data), encoder.states("").cpu().numpy())


def open_cache(out: Path, manifest: dict[str, Any], null_states: np.ndarray) -> dict[str, Any]:
    """Write the manifest of a cache about to be built (`CacheEncoder.manifest`), marked
    unfinished, and the empty caption's states. An unfinished cache of the same maker is
    continued (what it lists is kept); one of another maker is refused. Returns the manifest."""
    existing = read_manifest(str(out))
    if existing is not None and not _same_maker(existing, manifest):
        raise CacheError(f"{out} holds a latent cache made by another autoencoder, text encoder or settings: "
                         "choose a new --out")
    manifest = {**manifest, "shard_buckets": dict((existing or {}).get("shard_buckets", {}))}
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, manifest)
    null = np.ascontiguousarray(null_states, dtype=np.float32)
    (out / NULL_TEXT).write_bytes(safetensors.numpy.save({"states": null}))
    return manifest


def finish_cache(out: Path, manifest: dict[str, Any], done: dict[str, dict[str, int] | None],
                 skipped: dict[str, int]) -> dict[str, Any]:
    """Complete the manifest once every shard is written: `done` maps each cache shard's name to
    its bucket counts (None: written by an earlier run, counted here). Returns the manifest."""
    per_shard = dict(manifest.get("shard_buckets", {}))
    for name, counts in done.items():
        per_shard[name] = counts if counts is not None else per_shard.get(name) or _count_buckets(out / name)
    buckets: Counter = Counter()
    for counts in per_shard.values():
        buckets.update(counts)
    final = {**manifest, "complete": True, "samples": sum(buckets.values()),
             "shards": {name: sum(c.values()) for name, c in sorted(per_shard.items())},
             "buckets": dict(sorted(buckets.items())), "shard_buckets": dict(sorted(per_shard.items())),
             "skipped": dict(skipped)}
    _write_manifest(out, final)
    return final


def shard_name(url: str) -> str:
    """A shard's name in the cache: its input's file name."""
    return url.rsplit("/", 1)[-1]


def report(out: Path, final: dict[str, Any], skipped: dict[str, int]) -> None:
    print(f"latent cache {out}: {final['samples']} samples in {len(final['shards'])} shards "
          f"({', '.join(f'{b}: {n}' for b, n in final['buckets'].items())})"
          + (f"; skipped {dict(skipped)}" if skipped else ""), file=sys.stderr)


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / MANIFEST)


def build_cache(data: str, out: str | Path, source: AutoencoderSource, text_encoder: str, max_length: int,
                precision: str = "bf16", settings: CacheSettings | None = None) -> int:
    """Encode every sample of `data` into the latent cache `out`; each rank takes every world-th
    input shard. Returns 0 (raises CacheError for a cache that cannot be made or continued)."""
    rank, world, device = setup_distributed()
    out = Path(out)
    inputs = cache_inputs(data)
    encoder = CacheEncoder(source, text_encoder, max_length, device, precision, settings)
    manifest = start_cache(out, encoder, data) if rank == 0 else None
    if world > 1:
        dist.barrier()

    mine = inputs[rank::world]
    done: dict[str, dict[str, int] | None] = {}
    skipped = SkipCounter()
    bar = progress_bar(mine, desc=f"cache (rank {rank})" if world > 1 else "cache", unit="shard")
    for url in bar:
        name = shard_name(url)
        # a shard of an earlier, interrupted build is complete (renamed into place when it was)
        done[name] = None if (out / name).exists() else encoder.encode_shard(url, out / name, skipped)
        bar.set_postfix(samples=sum(sum(b.values()) for b in done.values() if b))
    bar.close()
    if world > 1:
        print(f"[recap.cache] rank {rank}: {len(mine)} of {len(inputs)} shards "
              f"({sum(sum(b.values()) for b in done.values() if b)} samples encoded)", file=sys.stderr)

    results = gather({"done": done, "skipped": dict(skipped)}, world)
    if rank == 0:
        skips: Counter = Counter()
        for r in results:
            skips.update(r["skipped"])
        final = finish_cache(out, manifest, {k: v for r in results for k, v in r["done"].items()}, dict(skips))
        report(out, final, dict(skips))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


__all__ = ["CacheError", "CacheSettings", "CacheEncoder", "CacheWorker", "build_cache", "start_cache", "open_cache",
           "finish_cache", "shard_name", "report",
           "manifests_for", "check_cache", "load_null_text", "geometry_of", "caption_texts", "cache_folder",
           "read_manifest", "cache_inputs", "MANIFEST", "FORMAT"]

"""How a batch becomes a loss: stage 1 the video VAE, stage 2 the DiT (trainer/train.py runs
the loop around them).

The DiT trains on exported shards (each batch encoded on the fly by the autoencoder and the text
encoder) or on a latent cache (`trainer/cache.py`: nothing is encoded, neither model is loaded),
or on both at once. Every step draws its noise and timesteps on the device and reads nothing back
to the host.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.cache import CacheError, cache_folder, check_cache, geometry_of, load_null_text, manifests_for
from trainer.dit import DiT
from trainer.memory import MemoryEstimate, dit_step, encode_transient, vae_step
from trainer.rf import flow_loss, resolution_shift, sample_condition_masks, sample_timesteps
from trainer.runtime import Generators, randn
from trainer.shards import Batch, Bucket
from trainer.text import TextEncoder, pad_states, resolve_text_encoder, text_fingerprint
from trainer.typedconfig import to_dict
from trainer.vae import CausalVAE, LatentGeometry, fingerprint, kl_loss, load_autoencoder, resolve_source, video_tensor

if TYPE_CHECKING:
    from trainer.parallel import Layout
    from trainer.train import DiTJobConfig, VAEJobConfig


class TrainSetupError(ValueError):
    """The run cannot start as asked (an `--out` with checkpoints, a cache of another VAE, a
    bucket that does not fit the device...): one line for the user, no traceback."""


def bf16_autocast(cfg: Any, device: torch.device) -> bool:
    """Whether a run's steps go under bf16 autocast (on CUDA, with train.precision bf16)."""
    return device.type == "cuda" and cfg.train.precision == "bf16"


def host_tensor(batch: Batch, name: str) -> torch.Tensor:
    """A batch's array ("video", "latents", "logvar") as a CPU tensor to copy to the device: the
    page-locked one the loader filled when it pins (on CUDA: the copy is asynchronous, and the
    pinned allocator keeps that memory until the copy is done), else one sharing the array."""
    pinned = batch.pinned.get(name)
    return pinned if pinned is not None else torch.from_numpy(getattr(batch, name))


def compiles(cfg: Any, device: torch.device) -> bool:
    """Whether the run torch.compiles its model: `train.compile`, or where unset, on CUDA."""
    return cfg.train.compile if cfg.train.compile is not None else device.type == "cuda"


class VAETask:
    """Stage 1: reconstruction (L1/L2) + KL; tracks latent statistics to normalise latents later."""

    def __init__(self, cfg: VAEJobConfig, device: torch.device, shards: list[str]):
        if manifests_for(shards):
            raise TrainSetupError("the VAE trains on videos, and --data is a latent cache: pass the exported shards")
        self.cfg = cfg
        self.model = CausalVAE(cfg.model).to(device)
        self.device = device

    def metadata(self) -> dict[str, str]:
        return {"format": "recap.vae", "config": json.dumps(to_dict(self.cfg.model))}

    def tokens(self, batch: Batch) -> int:
        return len(batch) * batch.bucket.frames * batch.bucket.height * batch.bucket.width

    def check_bucket(self, batch: Batch) -> None:
        s = self.cfg.model.spatial_compression
        if batch.bucket.width % s or batch.bucket.height % s:
            raise ValueError(f"bucket {batch.bucket.name}: width and height must be multiples of {s}")

    def memory(self, bucket: Bucket, batch_size: int, layout: Layout | None = None) -> MemoryEstimate:
        return vae_step(self.cfg.model, bucket.frames, bucket.height, bucket.width, batch_size,
                        bf16_autocast(self.cfg, self.device), cpu=self.device.type == "cpu")

    def compile(self) -> None:
        # the whole model, from its own forward: compiling the nn.Sequential parts started Dynamo in
        # torch's module code, which it skips, so every block became a frame of its own, compiled
        # again for each shape until the recompile limit (129 s of a 10-step H100 run), and on CPU
        # the dynamic-shape recompile failed. The noise draw splits it into two graphs.
        self.model.compile()

    def loss(self, model: nn.Module, batch: Batch, gens: Generators, step: int):
        x = video_tensor(host_tensor(batch, "video"), self.device)
        recon, mean, logvar = model(x, generator=gens.device)
        recon = recon.float()
        l1 = (recon - x).abs().mean()
        mse = F.mse_loss(recon, x)
        kl = kl_loss(mean.float(), logvar.float())
        loss = self.cfg.loss.l1 * l1 + self.cfg.loss.l2 * mse + self.cfg.loss.kl * kl
        self.update_latent_stats(mean.detach().float(), step)
        # tensors, read back on logging steps only; PSNR of [-1, 1] videos rescaled to [0, 1]
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-12))
        return loss, None, None, {"l1": l1.detach(), "kl": kl.detach(), "psnr": psnr}

    @torch.no_grad()
    def update_latent_stats(self, mean: torch.Tensor, step: int) -> None:
        """Running mean/std of the posterior mean: DiT latents are (z - shift) * scale ~ unit variance."""
        m = self.model
        momentum = max(0.01, 1.0 / (step + 1))
        m.latent_shift.lerp_(mean.mean(), momentum)
        var = 1.0 / m.latent_scale.pow(2)
        var = var + momentum * (mean.var() - var)
        m.latent_scale.copy_(var.clamp_min(1e-8).rsqrt())


class DiTTask:
    """Stage 2: rectified flow on the frozen autoencoder's latents, conditioned on captions.

    Batches from a latent cache bring their latents and token states; other batches are encoded
    here, by an autoencoder and text encoder loaded only when some shards are not cached."""

    @staticmethod
    def inputs(shards: list[str]) -> tuple[dict[str, dict[str, Any]], bool]:
        """The latent caches among `shards` (folder -> manifest), and whether every shard is in
        one (then no autoencoder or text encoder is loaded)."""
        caches = manifests_for(shards)
        return caches, bool(caches) and all(cache_folder(s) in caches for s in shards)

    @staticmethod
    def check_encoders(cfg: DiTJobConfig, shards: list[str]) -> None:
        """What the first steps of __init__ would refuse, without loading a model: the autoencoder
        and text encoder a run that encodes online needs are there (FileNotFoundError naming them)."""
        _, cached_only = DiTTask.inputs(shards)
        if not cached_only:
            resolve_source(cfg.vae)
            resolve_text_encoder(cfg.text.encoder)

    def __init__(self, cfg: DiTJobConfig, device: torch.device, shards: list[str]):
        self.cfg, self.device = cfg, device
        caches, self.cached_only = self.inputs(shards)
        self.cache_buckets: dict[str, int] = {}
        self.vae: nn.Module | None = None
        self.text: TextEncoder | None = None
        self.null_states: torch.Tensor | None = None
        if caches:
            self._check_caches(caches)
            folder, manifest = next(iter(caches.items()))
            self.geometry = geometry_of(manifest)
            self.text_dim = int(manifest["text"]["dim"])
            self.null_states = load_null_text(folder).to(device)
            for m in caches.values():
                for name, n in m.get("buckets", {}).items():
                    self.cache_buckets[name] = self.cache_buckets.get(name, 0) + n
        if not self.cached_only:    # online encoding: for every shard that is not in a cache
            self.vae = load_autoencoder(cfg.vae).to(device).eval()
            self.text = TextEncoder(cfg.text.encoder, cfg.text.max_length).to(device)
            self.geometry = LatentGeometry.of(self.vae)
            self.text_dim = self.text.dim
        torch.manual_seed(cfg.train.seed)   # the same initial DiT whether or not encoders were loaded first
        self.model = DiT(cfg.model, in_channels=self.geometry.latent_channels, text_dim=self.text_dim).to(device)

    def _check_caches(self, caches: dict[str, dict[str, Any]]) -> None:
        """Refuse a cache made by another autoencoder or text encoder than this run's."""
        cfg = self.cfg
        try:
            vae_fp = fingerprint(cfg.vae)
        except FileNotFoundError as e:
            made = next(iter(caches.values()))["vae"]["source"]
            raise TrainSetupError(f"{e}; the latent cache was made by {made['kind']} {made.get('path', '')}: set "
                                  "vae.path to it") from e
        text_fp = text_fingerprint(cfg.text.encoder, cfg.text.max_length)
        for folder, manifest in caches.items():
            try:
                check_cache(folder, manifest, cfg.vae, vae_fp, cfg.text.encoder, text_fp)
            except CacheError as e:
                raise TrainSetupError(str(e)) from e
            if cfg.data.sample_posterior and manifest.get("latents") != "mean_logvar":
                raise TrainSetupError(f"data.sample_posterior needs the posterior's log-variance, and the latent "
                                      f"cache {folder} kept the mean only: rebuild it with --latents mean_logvar")

    def metadata(self) -> dict[str, str]:
        return {"format": "recap.dit", "config": json.dumps(to_dict(self.cfg.model)),
                "in_channels": str(self.geometry.latent_channels), "text_dim": str(self.text_dim),
                "text": json.dumps(to_dict(self.cfg.text)), "vae": json.dumps(to_dict(self.cfg.vae)),
                "flow": json.dumps(to_dict(self.cfg.flow))}

    def latent_shape(self, bucket: Bucket) -> tuple[int, int, int]:
        s = self.geometry.spatial_compression
        return self.geometry.latent_frames(bucket.frames), bucket.height // s, bucket.width // s

    def latent_grid(self, batch: Batch) -> tuple[int, int, int]:
        return self.model.token_grid(self.latent_shape(batch.bucket))

    def check_bucket(self, batch: Batch) -> None:
        b, s = batch.bucket, self.geometry.spatial_compression
        ph, pw = self.cfg.model.patch_size[1:]
        if b.width % (s * pw) or b.height % (s * ph):
            raise ValueError(f"bucket {b.name}: width/height must be multiples of {s * pw}/{s * ph} "
                             f"(autoencoder x{s}, patch {self.cfg.model.patch_size})")
        self.check_split(b, self.model.context_parallel.size if self.model.context_parallel is not None else 1)
        want = (self.geometry.latent_channels, *self.latent_shape(b))
        if batch.latents is not None and tuple(batch.latents.shape[1:]) != want:
            raise TrainSetupError(f"cached latents of bucket {b.name} have shape {tuple(batch.latents.shape[1:])}, "
                                  f"this autoencoder makes {want}")

    def check_split(self, bucket: Bucket, cp: int) -> None:
        """The bucket's token grid exists and, under context parallelism, each frame's tokens split evenly."""
        _, h, w = self.model.token_grid(self.latent_shape(bucket))
        if cp > 1 and (h * w) % cp:
            raise TrainSetupError(f"bucket {bucket.name}: train.context_parallel={cp} splits each frame's {h * w} "
                                  f"tokens ({h} x {w}) between ranks, and {h * w} is not a multiple of {cp}: leave "
                                  "the bucket out (data.buckets) or choose a context_parallel that divides it")

    def tokens(self, batch: Batch) -> int:
        return len(batch) * math.prod(self.latent_grid(batch))

    def memory(self, bucket: Bucket, batch_size: int, layout: Layout | None = None) -> MemoryEstimate:
        """Per rank: `layout` says how many ranks shard the states (FSDP) and split the tokens."""
        bf16 = bf16_autocast(self.cfg, self.device)
        latent = self.latent_shape(bucket)
        n_latent = batch_size * self.geometry.latent_channels * math.prod(latent)
        inputs = 4 * 4 * n_latent                               # latents, noise, the noisy input, target
        if not self.cached_only:                                 # the video batch and its encoding
            inputs += batch_size * bucket.frames * bucket.height * bucket.width * 3 * (1 + 4)
            config = self.vae.config if isinstance(self.vae, CausalVAE) else None
            inputs += encode_transient(config, bucket.frames, bucket.height, bucket.width, batch_size, bf16)
        train = self.cfg.train
        self.check_split(bucket, layout.cp if layout is not None else 1)
        return dit_step(self.cfg.model, self.geometry.latent_channels, self.text_dim, latent, batch_size,
                        self.cfg.text.max_length, bf16, train.activation_checkpointing, inputs,
                        shards=layout.world if layout is not None and layout.mesh is not None else 1,
                        context_parallel=layout.cp if layout is not None else 1, cpu_offload=train.cpu_offload,
                        checkpoint_every=train.activation_checkpointing_every,
                        compiled=compiles(self.cfg, self.device))

    def compile(self) -> None:
        # block by block: the Python around them (token grid, RoPE tables) stays eager, and a new
        # bucket recompiles only the blocks (after the second shape, with dynamic sizes)
        for block in self.model.blocks:
            block.compile()

    def latents(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """(B, C, T, H, W) float32 normalised latents: cached, or encoded now."""
        logvar = None
        if batch.latents is not None:
            latents = host_tensor(batch, "latents").to(self.device, non_blocking=True).float()
            if batch.logvar is not None:
                logvar = host_tensor(batch, "logvar").to(self.device, non_blocking=True).float()
        else:
            if self.vae is None:
                raise TrainSetupError("a batch of video came from a latent cache run: mixed data needs the "
                                      "autoencoder (every shard folder must be a cache, or none)")
            with torch.no_grad():
                x = video_tensor(host_tensor(batch, "video"), self.device)
                latents, logvar = self.vae.encode_posterior(x) if self.cfg.data.sample_posterior \
                    else (self.vae.encode(x), None)
            latents = latents.float()
        if self.cfg.data.sample_posterior and logvar is not None:
            latents = latents + torch.exp(0.5 * logvar.float()) * randn(latents.shape, gen, self.device)
        return latents

    def context(self, batch: Batch, drop: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states and mask of each caption ("" where dropped), as the text encoder gives them."""
        if batch.text is not None:
            states = [self.null_states if d else torch.from_numpy(np.asarray(s, dtype=np.float32)).to(self.device)
                      for s, d in zip(batch.text, drop)]
            return pad_states(states, self.text_dim, self.device)
        if self.text is None:
            raise TrainSetupError("a batch of video came from a latent cache run: mixed data needs the text encoder")
        return self.text(["" if d else c for c, d in zip(batch.captions, drop)])

    def loss(self, model: nn.Module, batch: Batch, gens: Generators, step: int):
        flow = self.cfg.flow
        n = len(batch)
        drop = (torch.rand(n, generator=gens.host) < flow.caption_dropout).tolist()   # host: no device sync
        latents = self.latents(batch, gens.device)
        context, context_mask = self.context(batch, drop)
        shift = resolution_shift(math.prod(self.latent_grid(batch)), flow)
        t = sample_timesteps(n, flow, shift, gens.device, self.device)
        noise = randn(latents.shape, gens.device, self.device)
        cond = sample_condition_masks(n, latents.shape[2], flow, gens.host).to(self.device, non_blocking=True)
        per_sample = flow_loss(model, latents, context, context_mask, t, noise, cond)
        return per_sample.mean(), per_sample.detach(), t, {}


__all__ = ["TrainSetupError", "VAETask", "DiTTask", "bf16_autocast", "host_tensor"]

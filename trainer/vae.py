"""Video autoencoders behind one interface: our causal 3D-conv KL-VAE, a pretrained diffusers video
VAE, or pixel space (no compression, for tiny experiments).

Every autoencoder maps video (B, 3, T, H, W) in [-1, 1] to normalised latents (B, C, T', H', W')
with T' = 1 + (T - 1) / temporal_compression: the first frame is encoded alone, so a single image
is a one-frame video and images and videos share the latent space.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainer.checkpoint import latest_checkpoint
from trainer.runtime import randn
from trainer.typedconfig import ConfigError, from_dict, to_dict


@dataclass
class VAEConfig:
    channels: int = 64                  # width of the first level
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    latent_channels: int = 16
    spatial_compression: int = 8        # 2 ** (len(channel_mults) - 1)
    temporal_compression: int = 4       # a power of two, at most spatial_compression
    norm: Literal["rms", "none"] = "rms"  # per-pixel channel RMS norm; tiny models learn faster without

    def __post_init__(self) -> None:
        levels = len(self.channel_mults) - 1
        if self.spatial_compression != 2 ** levels:
            raise ConfigError(f"vae.spatial_compression must be 2 ** (len(channel_mults) - 1) = {2 ** levels}")
        tc = self.temporal_compression
        if tc < 1 or tc & (tc - 1) or tc > self.spatial_compression:
            raise ConfigError("vae.temporal_compression must be a power of two <= spatial_compression")
        if self.channels < 8 or self.latent_channels < 1 or self.num_res_blocks < 1:
            raise ConfigError("vae: channels >= 8, latent_channels >= 1, num_res_blocks >= 1")


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

class CausalConv3d(nn.Conv3d):
    """3D convolution that sees only the current and past frames (front-padded with the first)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__(cin, cout, kernel, stride=stride, padding=(0, kernel // 2, kernel // 2))
        self.time_pad = kernel - 1
        self.cpu_path: bool | None = None   # None: by the input's device (memory estimates set it on meta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T, H, W)
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        if not (x.device.type == "cpu" if self.cpu_path is None else self.cpu_path):
            return super().forward(x)
        # CPU: the same convolution as a 2D one over stacked frame windows (several times faster
        # than PyTorch's CPU conv3d); weights stay in Conv3d layout
        b, c, t, h, w = x.shape
        kt, st = self.kernel_size[0], self.stride[0]
        t_out = (t - kt) // st + 1
        windows = torch.arange(t_out, device=x.device)[:, None] * st + torch.arange(kt, device=x.device)
        x = x[:, :, windows].permute(0, 2, 1, 3, 4, 5).reshape(b * t_out, c * kt, h, w)
        y = F.conv2d(x, self.weight.reshape(self.out_channels, c * kt, *self.kernel_size[1:]), self.bias,
                     stride=self.stride[1:], padding=self.padding[1:])
        return y.reshape(b, t_out, *y.shape[1:]).transpose(1, 2)


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels only, so normalisation never mixes frames (keeps the encoder causal)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in float32, output in the input's dtype (under autocast the weight is cast to
        # it, not the activations promoted to float32)
        rms = torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps).to(x.dtype)
        return x * rms * self.weight.to(x.dtype)


def make_norm(kind: str, channels: int) -> nn.Module:
    return ChannelRMSNorm(channels) if kind == "rms" else nn.Identity()


class ResBlock3d(nn.Module):
    """Pre-norm residual block of two causal 3x3x3 convolutions."""

    def __init__(self, cin: int, cout: int, norm: str = "rms"):
        super().__init__()
        self.norm1, self.conv1 = make_norm(norm, cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = make_norm(norm, cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)   # each block starts as its skip path: trains faster
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halves H and W, and T when `temporal` (T = 1 + 2k -> 1 + k: the first frame stays alone)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Doubles H and W, and T when `temporal` (1 + k -> 1 + 2k: the first frame is not repeated)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal and x.shape[2] > 1:
            x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)
        b, c, t, h, w = x.shape
        x = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), scale_factor=2.0, mode="nearest")
        x = x.reshape(b, t, c, 2 * h, 2 * w).transpose(1, 2)
        return self.conv(x)


# ---------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------

class CausalVAE(nn.Module):
    """Causal 3D-convolution autoencoder with a diagonal-Gaussian (KL) latent."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.temporal_compression = config.temporal_compression
        self.spatial_compression = config.spatial_compression
        self.latent_channels = config.latent_channels
        # latents are stored normalised: (z - shift) * scale; set from data after VAE training
        self.register_buffer("latent_shift", torch.zeros(()), persistent=True)
        self.register_buffer("latent_scale", torch.ones(()), persistent=True)

        widths = [config.channels * m for m in config.channel_mults]
        levels = len(widths) - 1
        temporal_levels = int(math.log2(config.temporal_compression))
        # time is compressed at the deepest levels, where it is cheapest
        temporal = [i >= levels - temporal_levels for i in range(levels)]

        self.enc_in = CausalConv3d(3, widths[0])
        enc: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                enc.append(ResBlock3d(cin, width, config.norm))
                cin = width
            if i < levels:
                enc.append(Downsample(cin, temporal[i]))
        enc += [ResBlock3d(cin, cin, config.norm), make_norm(config.norm, cin), nn.SiLU(),
                CausalConv3d(cin, 2 * config.latent_channels)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [CausalConv3d(config.latent_channels, widths[-1]),
                                ResBlock3d(widths[-1], widths[-1], config.norm)]
        cin = widths[-1]
        for i in reversed(range(len(widths))):
            for _ in range(config.num_res_blocks):
                dec.append(ResBlock3d(cin, widths[i], config.norm))
                cin = widths[i]
            if i > 0:
                dec.append(Upsample(cin, temporal[i - 1]))
        dec += [make_norm(config.norm, cin), nn.SiLU(), CausalConv3d(cin, 3)]
        self.decoder = nn.Sequential(*dec)
        # start nearly deterministic (posterior std ~0.05): sampling noise does not drown the
        # reconstruction signal early on; the KL term raises the variance where it can
        nn.init.constant_(self.encoder[-1].bias[config.latent_channels:], -6.0)

    def pad_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat the last frame so T = 1 + k * temporal_compression."""
        extra = (-(x.shape[2] - 1)) % self.temporal_compression
        return torch.cat([x, x[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2) if extra else x

    def latent_frames(self, frames: int) -> int:
        return 1 + math.ceil((frames - 1) / self.temporal_compression)

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) in [-1, 1] -> unnormalised posterior mean and log-variance."""
        s = self.spatial_compression
        if x.shape[-1] % s or x.shape[-2] % s:
            raise ValueError(f"frame size {tuple(x.shape[-2:])} must be divisible by {s}")
        mean, logvar = self.encoder(self.enc_in(self.pad_frames(x))).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction cropped to T, mean, logvar)."""
        mean, logvar = self.encode_dist(x)
        noise = randn(mean.shape, generator, mean.device, mean.dtype)   # generator on any device
        z = mean + torch.exp(0.5 * logvar) * noise
        return self.decode_raw(z)[:, :, : x.shape[2]], mean, logvar

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Video -> normalised latent (posterior mean, deterministic)."""
        mean, _ = self.encode_dist(x)
        return (mean - self.latent_shift) * self.latent_scale

    @torch.no_grad()
    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Video -> normalised posterior mean (exactly `encode`) and log-variance."""
        mean, logvar = self.encode_dist(x)
        return (mean - self.latent_shift) * self.latent_scale, logvar + 2 * self.latent_scale.log()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Normalised latent -> video in [-1, 1], cropped to `frames` when given."""
        video = self.decode_raw(z / self.latent_scale + self.latent_shift).clamp(-1, 1)
        return video[:, :, :frames] if frames is not None else video


def video_tensor(video: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A batch of videos (B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float in [-1, 1] on `device`."""
    x = (video if isinstance(video, torch.Tensor) else torch.from_numpy(video)).to(device, non_blocking=True)
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) averaged over latent elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1]."""
    mse = F.mse_loss(a.float(), b.float()).item() / 4.0   # rescale to [0, 1] range
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


class PixelSpace(nn.Module):
    """No autoencoder: the DiT works on pixels (tiny experiments and tests)."""

    temporal_compression = 1
    spatial_compression = 1
    latent_channels = 3

    def latent_frames(self, frames: int) -> int:
        return frames

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None

    def decode(self, z: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        return z.clamp(-1, 1)[:, :, :frames] if frames is not None else z.clamp(-1, 1)


class DiffusersVAE(nn.Module):
    """A pretrained diffusers video VAE (AutoencoderKLWan, AutoencoderKLCogVideoX, ...) by id or path."""

    def __init__(self, name_or_path: str, subfolder: str | None = None):
        super().__init__()
        try:
            # lazy: optional: only a diffusers VAE needs it
            import diffusers
        except ImportError as e:
            raise ImportError("loading a pretrained video VAE needs the `diffusers` package "
                              "(pip install diffusers); or train one with `recap train vae`") from e
        config = diffusers.AutoencoderKL.load_config(name_or_path, subfolder=subfolder)
        cls = getattr(diffusers, config.get("_class_name", "AutoencoderKL"))
        self.vae = cls.from_pretrained(name_or_path, subfolder=subfolder).eval().requires_grad_(False)
        cfg = self.vae.config
        self.latent_channels = int(cfg.get("z_dim", cfg.get("latent_channels", 16)))
        self.temporal_compression = int(cfg.get("scale_factor_temporal",
                                                cfg.get("temporal_compression_ratio", 4)))
        self.spatial_compression = int(cfg.get("scale_factor_spatial", 8))
        if cfg.get("latents_mean") is not None:      # Wan: per-channel statistics
            shape = (1, -1, 1, 1, 1)
            self.register_buffer("shift", torch.tensor(cfg["latents_mean"]).view(shape), persistent=False)
            self.register_buffer("scale", 1.0 / torch.tensor(cfg["latents_std"]).view(shape), persistent=False)
        else:                                        # CogVideoX: one scaling factor
            self.register_buffer("shift", torch.zeros(()), persistent=False)
            self.register_buffer("scale", torch.tensor(float(cfg.get("scaling_factor", 1.0))), persistent=False)

    def latent_frames(self, frames: int) -> int:
        return 1 + math.ceil((frames - 1) / self.temporal_compression)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(x).latent_dist.mode() - self.shift) * self.scale

    @torch.no_grad()
    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(x).latent_dist
        return (dist.mode() - self.shift) * self.scale, dist.logvar + 2 * torch.log(self.scale)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        video = self.vae.decode(z / self.scale + self.shift).sample.clamp(-1, 1)
        return video[:, :, :frames] if frames is not None else video


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------

def save_vae(model: CausalVAE, path: str | Path) -> None:
    """One safetensors file that carries its own config, loadable with `load_vae(path)`."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "recap.vae", "config": json.dumps(to_dict(model.config))})


def vae_not_found(path: str | Path) -> FileNotFoundError:
    return FileNotFoundError(f"VAE {path} not found (vae.path: a `recap train vae` run or its .safetensors; train "
                             f"one with `recap train vae --data SHARDS --out {path}`, or --set vae.kind=pixel to "
                             "train in pixel space)")


def load_vae(path: str | Path) -> CausalVAE:
    """A `save_vae` file, or a `recap train vae` run directory (its EMA weights of the last checkpoint)."""
    path = Path(path)
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint in {path}")
        path = ckpt / "ema.safetensors"
    elif not path.is_file():
        raise vae_not_found(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} has no VAE config in its metadata (not written by recap?)")
    model = CausalVAE(from_dict(VAEConfig, json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@dataclass
class AutoencoderSource:
    """Which autoencoder the DiT works in: a recap VAE (file or run), a diffusers id/path, or pixels."""

    kind: str = "recap"            # recap | diffusers | pixel
    path: str = ""                 # recap: .safetensors or run dir; diffusers: hub id or local dir
    subfolder: str = ""            # diffusers: e.g. "vae" inside a pipeline repo

    def __post_init__(self) -> None:
        if self.kind not in ("recap", "diffusers", "pixel"):
            raise ConfigError(f"vae.kind: {self.kind!r} is not one of ['recap', 'diffusers', 'pixel']")
        if self.kind != "pixel" and not self.path:
            raise ConfigError(f"vae.path is required for vae.kind={self.kind!r}")
        if self.kind == "pixel" and (self.path or self.subfolder):
            raise ConfigError("vae.path is set but vae.kind is 'pixel' (no autoencoder): set vae.kind=recap "
                              "or diffusers to use it, or drop vae.path")


def load_autoencoder(source: AutoencoderSource) -> nn.Module:
    if source.kind == "pixel":
        return PixelSpace()
    if source.kind == "diffusers":
        return DiffusersVAE(source.path, source.subfolder or None)
    return load_vae(source.path)


@dataclass(frozen=True)
class LatentGeometry:
    """What the DiT needs of an autoencoder's latent space, known without loading it."""

    latent_channels: int
    temporal_compression: int
    spatial_compression: int

    def latent_frames(self, frames: int) -> int:
        return 1 + math.ceil((frames - 1) / self.temporal_compression)

    @classmethod
    def of(cls, autoencoder: nn.Module) -> "LatentGeometry":
        return cls(int(autoencoder.latent_channels), int(autoencoder.temporal_compression),
                   int(autoencoder.spatial_compression))


def resolve_source(source: AutoencoderSource) -> AutoencoderSource:
    """The exact weights a source names today: a recap run directory becomes the EMA file of its
    last checkpoint, local paths become absolute; hub ids stay as given."""
    if source.kind == "pixel":
        return AutoencoderSource(kind="pixel")
    path = Path(source.path).expanduser()
    if source.kind == "recap":
        if path.is_dir():
            ckpt = latest_checkpoint(path)
            if ckpt is None:
                raise FileNotFoundError(f"VAE run {source.path} has no checkpoint")
            path = ckpt / "ema.safetensors"
        if not path.is_file():
            raise vae_not_found(source.path)
        return AutoencoderSource(kind="recap", path=str(path.resolve()))
    return AutoencoderSource(kind="diffusers", path=str(path.resolve()) if path.exists() else source.path,
                             subfolder=source.subfolder)


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)


def fingerprint(source: AutoencoderSource) -> str:
    """16 hex chars naming the weights behind `source` (a recap VAE: its file's bytes; a local
    diffusers folder: its config and file sizes; a hub id: the id), so latents made by another
    autoencoder are recognised."""
    resolved = resolve_source(source)
    h = hashlib.sha256(json.dumps([resolved.kind, resolved.subfolder]).encode())
    folder = Path(resolved.path) / resolved.subfolder if resolved.kind == "diffusers" else None
    if resolved.kind == "recap":
        _hash_file(h, Path(resolved.path))
    elif folder is not None and folder.is_dir():
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    else:
        h.update(resolved.path.encode())
    return h.hexdigest()[:16]


__all__ = ["VAEConfig", "CausalVAE", "CausalConv3d", "PixelSpace", "DiffusersVAE", "AutoencoderSource",
           "LatentGeometry", "load_autoencoder", "resolve_source", "fingerprint", "save_vae", "load_vae",
           "kl_loss", "psnr", "video_tensor"]

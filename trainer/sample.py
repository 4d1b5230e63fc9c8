"""Sampling from a trained DiT: text-to-video, image-to-video, video extension and long videos.

Every mode is one operation, `generate_window`: a window of frames whose first few are given
(none for text-to-video, one image for image-to-video, the end of a video for extension) is
encoded by the autoencoder, those latent frames are held fixed through the condition mask, and the
flow ODE fills in the rest. A long video is a chain of windows, each conditioned on the last
frames of the one before (sliding-window extension with overlap). Context frames are re-encoded as
the start of each new window rather than copied as latents, because a causal autoencoder encodes
the first frame of a clip alone: a window's first latent frame must mean "one frame".

Every sample draws its noise from its own generator seeded with `seed + index`, so a prompt's
video depends on its seed only, not on what it was batched with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.dit import DiT, load_dit
from trainer.rf import FlowConfig, resolution_shift, sample
from trainer.runtime import ATTENTION_KERNELS, attention_kernels
from trainer.shards import encode_mp4
from trainer.text import TextEncoder
from trainer.typedconfig import from_dict
from trainer.vae import AutoencoderSource, load_autoencoder


@dataclass
class SampleSettings:
    frames: int = 17                  # length of the output video (context frames included)
    width: int = 256
    height: int = 256
    steps: int = 30
    cfg_scale: float = 5.0            # 1 = no guidance (conditional only), 0 = unconditional
    solver: Literal["euler", "heun"] = "euler"
    shift: float | None = None        # None: the training shift for this many tokens
    seed: int = 0
    negative_prompt: str = ""
    window: int = 0                   # frames per model call; 0 = all `frames` at once
    overlap: int = 0                  # context frames carried into each next window; 0 = half the window


def to_model_space(frames: np.ndarray, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, h, w, 3) uint8 at any size -> (1, 3, T, height, width) in [-1, 1] (area resize)."""
    x = torch.tensor(frames, device=device).permute(0, 3, 1, 2).float()     # a copy: inputs may be read-only
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="area" if x.shape[-1] >= width else "bilinear",
                          align_corners=None if x.shape[-1] >= width else False)
    return (x / 127.5 - 1.0).permute(1, 0, 2, 3)[None]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


def _resolve_vae_path(source: AutoencoderSource, run: Path) -> AutoencoderSource:
    """A recap VAE path as trained (absolute, or relative to where training ran) or, failing that,
    relative to the DiT run directory: a run directory can be moved with its VAE beside it."""
    if source.kind != "recap" or Path(source.path).exists():
        return source
    for base in (run, run.parent):
        if (base / source.path).exists():
            return AutoencoderSource(kind="recap", path=str(base / source.path))
    return source


class Sampler:
    """A trained DiT with the autoencoder and text encoder it was trained with."""

    def __init__(self, ckpt: str | Path, weights: Literal["ema", "model"] = "ema",
                 device: str | torch.device | None = None, precision: Literal["auto", "bf16", "fp32"] = "auto",
                 attention_kernel: str = "auto"):
        """`precision` "auto": bf16 autocast on a GPU that has bf16 (as the DiT was trained with
        train.precision bf16; fp32 matmuls there run several times slower), fp32 elsewhere.
        `attention_kernel`: the SDPA backend tried first (trainer.runtime.ATTENTION_KERNELS)."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if attention_kernel != "auto" and attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel {attention_kernel!r} is not one of auto, {', '.join(ATTENTION_KERNELS)}")
        self.attention_kernel = attention_kernel
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda"
                                           and torch.cuda.is_bf16_supported())
        model, meta = load_dit(str(ckpt), weights)
        self.model: DiT = model.to(self.device)
        source = from_dict(AutoencoderSource, json.loads(meta["vae"]))
        self.vae = load_autoencoder(_resolve_vae_path(source, Path(ckpt))).to(self.device).eval()
        text = json.loads(meta["text"])
        self.text = TextEncoder(text["encoder"], text["max_length"]).to(self.device)
        self.flow = from_dict(FlowConfig, json.loads(meta["flow"]))

    # ---- sizes -----------------------------------------------------------------------------------
    @property
    def temporal_compression(self) -> int:
        return int(self.vae.temporal_compression)

    def window_frames(self, frames: int) -> int:
        """The frame count the autoencoder encodes exactly (1 + k * temporal compression), >= frames."""
        tc = self.temporal_compression
        return 1 + math.ceil((frames - 1) / tc) * tc

    def context_frames(self, latent_frames: int) -> int:
        """Video frames that encode to exactly `latent_frames` latent frames."""
        return 1 + (latent_frames - 1) * self.temporal_compression

    def check_size(self, height: int, width: int) -> None:
        s = self.vae.spatial_compression
        ph, pw = self.model.patch_size[1:]
        if height % (s * ph) or width % (s * pw):
            raise ValueError(f"size {width}x{height}: width and height must be multiples of "
                             f"{s * pw} and {s * ph} (autoencoder x{s}, patch {self.model.patch_size})")

    # ---- one window ------------------------------------------------------------------------------
    def generate_window(self, prompts: list[str], seeds: list[int], frames: int, height: int, width: int,
                        settings: SampleSettings, context: torch.Tensor | None = None,
                        progress: Callable[[], object] | None = None) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1], F = window_frames(frames). `context` (B, 3, c, H, W): the
        window's first c frames, given; c must be 1 + k * temporal compression. `progress` is
        called after every ODE step. Text encoding, the ODE and the autoencoder run under the
        sampler's precision, as a training step ran under train.precision."""
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16), \
                attention_kernels(self.attention_kernel):
            return self._generate_window(prompts, seeds, frames, height, width, settings, context, progress)

    def _generate_window(self, prompts: list[str], seeds: list[int], frames: int, height: int, width: int,
                         settings: SampleSettings, context: torch.Tensor | None,
                         progress: Callable[[], object] | None) -> torch.Tensor:
        self.check_size(height, width)
        frames = self.window_frames(frames)
        vae, s = self.vae, self.vae.spatial_compression
        latent_t = vae.latent_frames(frames)
        shape = (self.model.in_channels, latent_t, height // s, width // s)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds])
        noise = noise.to(self.device)
        b = len(prompts)
        cond_latents = cond_mask = None
        if context is not None:
            c = context.shape[2]
            if c != self.context_frames(vae.latent_frames(c)) or vae.latent_frames(c) >= latent_t:
                raise ValueError(f"{c} context frames do not make whole latent frames shorter than the window")
            given = vae.encode(context.to(self.device)).float()                 # (B, C, Lc, h, w)
            cond_latents = torch.zeros_like(noise)
            cond_latents[:, :, : given.shape[2]] = given
            cond_mask = torch.zeros(b, latent_t, device=self.device)
            cond_mask[:, : given.shape[2]] = 1
        context_states, context_mask = self.text(prompts)
        null_states, null_mask = self.text([settings.negative_prompt] * b)
        shift = settings.shift or resolution_shift(math.prod(self.model.token_grid(shape[1:])), self.flow)
        # cfg 0: the unconditional model alone (the prompt plays no part)
        if settings.cfg_scale == 0:
            context_states, context_mask = null_states, null_mask
        latents = sample(self.model, noise, context_states, context_mask, null_states, null_mask,
                         steps=settings.steps, cfg_scale=settings.cfg_scale if settings.cfg_scale else 1.0,
                         shift=shift, solver=settings.solver, cond_latents=cond_latents, cond_mask=cond_mask,
                         progress=progress)
        return vae.decode(latents, frames=frames).float()

    # ---- whole videos ----------------------------------------------------------------------------
    def plan(self, settings: SampleSettings, given: int = 0) -> tuple[int, int, int]:
        """(window frames, context frames carried into each next window, windows to sample) for a
        video of settings.frames, `given` of them from a video to extend."""
        tc = self.temporal_compression
        if given >= settings.frames:
            raise ValueError(f"--frames {settings.frames} must exceed the {given} frames given")
        window = self.window_frames(settings.window or settings.frames)
        latent_window = self.vae.latent_frames(window)
        # frames carried into the next window: whole latent frames, fewer than the window holds
        carried = 1 + (settings.overlap - 1) // tc if settings.overlap else max(1, (latent_window - 1) // 2)
        if carried >= latent_window and (settings.frames > window or given):
            raise ValueError(f"a window of {window} frames cannot carry {self.context_frames(carried)} "
                             "context frames into the next: use a longer --window or a smaller --overlap")
        context_len = self.context_frames(carried)
        length, windows = (given, 0) if given else (window, 1)
        while length < settings.frames:
            c = context_len
            while c > length:
                c -= tc
            length, windows = length + window - c, windows + 1
        return window, context_len, windows

    @torch.no_grad()
    def generate(self, prompts: list[str], settings: SampleSettings, image: np.ndarray | None = None,
                 video: np.ndarray | None = None, first_index: int = 0,
                 progress: Callable[[], object] | None = None) -> np.ndarray:
        """(B, frames, H, W, 3) uint8 videos for `prompts` (sample i uses seed settings.seed +
        first_index + i). `image` (h, w, 3) uint8 starts every video (image-to-video); `video`
        (T, h, w, 3) uint8 is extended (its frames open the output, which is `frames` long).
        `progress` is called after every ODE step of every window (`plan` says how many)."""
        h, w, b, tc = settings.height, settings.width, len(prompts), self.temporal_compression
        seeds = [settings.seed + first_index + i for i in range(b)]
        window, context_len, _ = self.plan(settings, len(video) if video is not None else 0)

        if video is not None:
            out = to_model_space(video, h, w, self.device).expand(b, -1, -1, -1, -1)
        else:
            first = None if image is None else to_model_space(image[None], h, w, self.device).expand(b, -1, -1, -1, -1)
            out = self.generate_window(prompts, seeds, window, h, w, settings, context=first, progress=progress)
        step = 0
        while out.shape[2] < settings.frames:   # extend: each window starts with the last frames so far
            c = context_len
            while c > out.shape[2]:
                c -= tc
            step += 1
            window_seeds = [s + 1_000_003 * step for s in seeds]   # fresh noise for every window
            new = self.generate_window(prompts, window_seeds, window, h, w, settings, context=out[:, :, -c:],
                                       progress=progress)
            out = torch.cat([out, new[:, :, c:]], dim=2)
        return to_uint8(out[:, :, : settings.frames])


# ---------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------

def write_mp4(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """(T, H, W, 3) uint8 -> H.264 MP4 through PyAV (odd sizes padded by one edge pixel)."""
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    Path(path).write_bytes(encode_mp4(frames, fps, crf=16))


def contact_sheet(videos: np.ndarray, max_columns: int = 9, scale: int = 0, gap: int = 2) -> np.ndarray:
    """(B, T, H, W, 3) -> one image: a row per video, up to `max_columns` frames evenly spaced
    across it; small frames are enlarged (nearest) to at least 64 px unless `scale` is given."""
    b, t, h, w, _ = videos.shape
    cols = np.unique(np.linspace(0, t - 1, min(t, max_columns)).round().astype(int))
    scale = scale or max(1, math.ceil(64 / min(h, w)))
    hh, ww = h * scale, w * scale
    sheet = np.full((b * hh + (b + 1) * gap, len(cols) * ww + (len(cols) + 1) * gap, 3), 255, np.uint8)
    for i in range(b):
        for j, k in enumerate(cols):
            tile = videos[i, k].repeat(scale, axis=0).repeat(scale, axis=1)
            y, x = gap + i * (hh + gap), gap + j * (ww + gap)
            sheet[y:y + hh, x:x + ww] = tile
    return sheet


def write_png(path: str | Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(str(path))


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB. A 16-bit grayscale image (PNG, TIFF) opens in
    Pillow's integer modes, which convert("RGB") clips at 255 instead of scaling: a first frame
    came out nearly all white. Its 0..65535 range is scaled to 0..255 here."""
    with Image.open(str(path)) as im:
        if im.mode.startswith("I"):       # "I;16", "I;16B"... and "I": 16-bit samples
            wide = np.asarray(im, dtype=np.float64)
            gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.asarray(im.convert("RGB"))


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Every frame of a video file (T, H, W, 3) uint8 and its frame rate, through PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 8)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames), rate


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; JSON lines may carry it as "prompt", "caption" or "text"."""
    prompts = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            record = json.loads(line)
            line = next((record[k] for k in ("prompt", "caption", "text") if k in record), None)
            if line is None:
                raise ValueError(f"{path}: a JSON line needs a 'prompt', 'caption' or 'text' field")
        prompts.append(str(line))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


__all__ = ["Sampler", "SampleSettings", "contact_sheet", "write_mp4", "write_png", "read_image", "read_video",
           "read_prompts", "to_model_space", "to_uint8"]

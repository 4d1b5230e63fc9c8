"""Rectified flow: the training objective and the ODE sampler.

Convention (as minRF): z_t = (1 - t) * x + t * noise, t = 0 is data and t = 1 is noise; the model
predicts the velocity v = noise - x, and sampling integrates dz/dt = v from t = 1 down to 0.
Training timesteps are logit-normal, shifted towards noise as clips get bigger (more tokens keep
more signal at a given noise level). Condition masks keep some latent frames clean (t = 0) so one
model learns text-to-video, image-to-video, extension and looping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from trainer.runtime import randn
from trainer.typedconfig import ConfigError


@dataclass
class FlowConfig:
    logit_mean: float = 0.0             # logit-normal timestep sampling (SD3)
    logit_std: float = 1.0
    shift_base_tokens: int = 1024       # a clip with this many tokens gets shift = base_shift
    base_shift: float = 1.0             # shift = base_shift * sqrt(tokens / shift_base_tokens) ...
    max_shift: float = 6.0              # ... clamped to [1, max_shift]
    caption_dropout: float = 0.1        # share of captions replaced by "" (classifier-free guidance)
    # condition masks: the share of samples that keep some latent frames clean
    first_frame: float = 0.10           # image-to-video
    first_k: float = 0.05               # extension: the first 1..max_k latent frames
    last_frame: float = 0.03            # ends on a given frame
    first_and_last: float = 0.02        # transition / loop between two given frames
    max_k: int = 4

    def __post_init__(self) -> None:
        shares = (self.first_frame, self.first_k, self.last_frame, self.first_and_last, self.caption_dropout)
        if min(shares) < 0 or self.first_frame + self.first_k + self.last_frame + self.first_and_last > 1:
            raise ConfigError("flow: condition shares must be >= 0 and sum to <= 1")
        if self.caption_dropout > 1 or self.logit_std <= 0 or self.max_k < 1 or self.max_shift < 1:
            raise ConfigError("flow: need caption_dropout <= 1, logit_std > 0, max_k >= 1, max_shift >= 1")


def resolution_shift(num_tokens: int, config: FlowConfig) -> float:
    """Timestep shift for a clip of `num_tokens` tokens (grows with resolution x length)."""
    shift = config.base_shift * math.sqrt(num_tokens / config.shift_base_tokens)
    return float(min(max(shift, 1.0), config.max_shift))


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Move timesteps towards noise: t' = s t / (1 + (s - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(n: int, config: FlowConfig, shift: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) logit-normal timesteps on `device`, drawn by `generator` wherever it lives."""
    u = randn((n,), generator, device) * config.logit_std + config.logit_mean
    return shift_time(torch.sigmoid(u), shift)


def sample_condition_masks(n: int, frames: int, config: FlowConfig,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, frames) float masks, 1 = latent frame given clean; at least one frame is always free."""
    if frames < 2:
        return torch.zeros(n, frames)
    draws = torch.rand(n, generator=generator)
    ks = torch.randint(1, min(config.max_k, frames - 1) + 1, (n,), generator=generator)
    edges = torch.cumsum(torch.tensor([config.first_frame, config.first_k, config.last_frame,
                                       config.first_and_last]), 0)
    # vectorised (no value is read back): mode 0 first frame, 1 first k, 2 last, 3 both ends, 4 none
    mode = torch.searchsorted(edges, draws, right=True)[:, None]
    index = torch.arange(frames)
    first, last = index == 0, index == frames - 1
    masks = ((mode == 0) & first) | ((mode == 1) & (index < ks[:, None])) | ((mode == 2) & last)
    if frames >= 3:
        masks |= (mode == 3) & (first | last)
    return masks.float()


def flow_loss(model: Callable[..., torch.Tensor], x: torch.Tensor, context: torch.Tensor,
              context_mask: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
              cond_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample velocity MSE over the frames that are not given as conditions.

    x, noise: (B, C, T, H, W); t: (B,); cond_mask: (B, T)."""
    m = cond_mask[:, None, :, None, None].to(x.dtype)
    t_frames = t[:, None] * (1 - cond_mask)                               # clean frames sit at t = 0
    tt = t_frames[:, None, :, None, None].to(x.dtype)
    z = (1 - tt) * x + tt * noise
    z = m * x + (1 - m) * z
    v = model(z, t_frames, context, context_mask, cond_mask)
    err = (v.float() - (noise - x).float()).pow(2) * (1 - m)
    free = (1 - m).expand_as(err).flatten(1).sum(1)
    return err.flatten(1).sum(1) / free


def pad_context(context: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - context.shape[1]
    if extra <= 0:
        return context, mask
    return F.pad(context, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


@torch.no_grad()
def sample(model: Callable[..., torch.Tensor], noise: torch.Tensor, context: torch.Tensor,
           context_mask: torch.Tensor, null_context: torch.Tensor, null_mask: torch.Tensor,
           steps: int = 30, cfg_scale: float = 5.0, shift: float = 1.0,
           solver: Literal["euler", "heun"] = "euler", cond_latents: torch.Tensor | None = None,
           cond_mask: torch.Tensor | None = None, progress: Callable[[], object] | None = None) -> torch.Tensor:
    """Integrate the flow ODE from noise (t = 1) to data (t = 0) with classifier-free guidance.

    noise: (B, C, T, H, W); context/null_context: (B, L, D) prompt and negative (or "") token
    states; cond_latents (B, C, T, H, W) with cond_mask (B, T): latent frames held fixed
    (image-to-video, extension). `progress` is called after every step. Returns latents (B, C, T, H, W).
    """
    b, frames = noise.shape[0], noise.shape[2]
    length = max(context.shape[1], null_context.shape[1])
    context, context_mask = pad_context(context, context_mask, length)
    null_context, null_mask = pad_context(null_context, null_mask, length)
    if cond_mask is None or cond_latents is None:
        cond_mask, cond_latents = torch.zeros(b, frames, device=noise.device), torch.zeros_like(noise)
    cond_mask = cond_mask.to(noise.device, noise.dtype)
    m = cond_mask[:, None, :, None, None]
    guided = cfg_scale != 1.0

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        z = m * cond_latents + (1 - m) * z
        t_frames = torch.full((b, frames), t, device=z.device, dtype=z.dtype) * (1 - cond_mask)
        # in float32 whatever the model computed in (bf16 under autocast): guidance amplifies the
        # small difference of two close velocities, and the ODE state stays float32
        if not guided:
            return model(z, t_frames, context, context_mask, cond_mask).float()
        v = model(torch.cat([z, z]), torch.cat([t_frames, t_frames]), torch.cat([context, null_context]),
                  torch.cat([context_mask, null_mask]), torch.cat([cond_mask, cond_mask])).float()
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + cfg_scale * (v_cond - v_uncond)

    times = shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).tolist()
    z = noise
    for t, t_next in zip(times[:-1], times[1:]):
        dt = t_next - t
        v = velocity(z, t)
        if solver == "heun" and t_next > 0:   # trapezoid on the slope at both ends of the step
            z_euler = z + dt * v
            z = z + dt * 0.5 * (v + velocity(z_euler, t_next))
        else:
            z = z + dt * v
        if progress is not None:
            progress()
    return m * cond_latents + (1 - m) * z


__all__ = ["FlowConfig", "resolution_shift", "shift_time", "sample_timesteps", "sample_condition_masks",
           "flow_loss", "sample", "pad_context"]

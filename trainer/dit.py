"""Diffusion transformer over spacetime patches of video latents.

Latents (B, C, T, H, W) are cut into (pt, ph, pw) patches; 3D rotary embeddings give every token
its (t, h, w) position, so any frame count and size works without retraining position tables.
Each block: self-attention (full spacetime, or spatial-then-temporal when factorized), cross-
attention to the text encoder's token states, and an MLP; the timestep modulates every block via
adaLN with zero-initialised gates (shared projection plus a learned per-block table, as PixArt-α,
which saves 6·D² parameters per block). The timestep is per latent frame, so frames given as a
condition (image-to-video, extension, looping) carry t = 0 and a mask channel says which they are.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.checkpoint import CheckpointError, list_checkpoints, load_weights
from trainer.typedconfig import ConfigError, from_dict

if TYPE_CHECKING:
    from trainer.parallel import ContextParallel

# name -> (depth, hidden_size, num_heads); parameter counts are in BENCHMARKS.md
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 64, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    "H": (32, 1536, 24),
}


@dataclass
class DiTConfig:
    size: str = "B"                     # a key of DIT_SIZES
    depth: int = 0                      # > 0 overrides the size's depth (same for the two below)
    hidden_size: int = 0
    num_heads: int = 0
    mlp_ratio: float = 4.0
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])   # (t, h, w)
    attention: Literal["full", "factorized"] = "full"
    qk_norm: bool = True
    rope_theta: float = 10000.0
    # also add fixed 3-D sin-cos positions to the patch tokens (as DiT and Latte do): absolute
    # places, which a small model on little data picks up layouts from faster than from RoPE's
    # relative ones alone; computed per grid, so any size still works
    abs_pos: bool = False
    # also condition every block's adaLN on the caption as a whole (the masked mean of its token
    # states, beside the timestep; as SD3 and Flux do with a pooled text vector): a global switch
    # per sample, where cross-attention alone has each token look the caption up for itself
    pooled_text: bool = False

    def __post_init__(self) -> None:
        if self.size not in DIT_SIZES:
            raise ConfigError(f"model.size: {self.size!r} is not one of {list(DIT_SIZES)}")
        depth, hidden, heads = DIT_SIZES[self.size]
        self.depth, self.hidden_size, self.num_heads = (self.depth or depth, self.hidden_size or hidden,
                                                        self.num_heads or heads)
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError("model: hidden_size / num_heads must be an even integer")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ConfigError("model.patch_size must be three positive integers (t, h, w)")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ---------------------------------------------------------------------------------------------
# Embedding layers: timesteps, 3D rotary positions
# ---------------------------------------------------------------------------------------------

class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps in [0, 1] into vectors (sinusoids, then an MLP)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = 1000.0 * t.float()[..., None] * freqs      # t in [0, 1] -> DiT's 0..1000 range
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (...,) -> (..., D)
        emb = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def axis_angles(grid: tuple[int, int, int], dim: int, theta: float, device=None) -> torch.Tensor:
    """(T, S, dim / 2) float64 angles for a (T, H, W) token grid (S = H * W): `dim` is split
    between the axes (time gets the remainder) and each axis turns its share by its own integer
    position at frequencies theta^(-2i/share)."""
    t, h, w = grid
    d_hw = 2 * (dim // 6)
    d_t = dim - 2 * d_hw
    angles = []
    for size, share in ((t, d_t), (h, d_hw), (w, d_hw)):
        freqs = 1.0 / theta ** (torch.arange(0, share, 2, device=device, dtype=torch.float64) / share)
        angles.append(torch.arange(size, device=device, dtype=torch.float64)[:, None] * freqs)
    at, ah, aw = angles
    return torch.cat([at[:, None, None].expand(t, h, w, -1), ah[None, :, None].expand(t, h, w, -1),
                      aw[None, None, :].expand(t, h, w, -1)], dim=-1).reshape(t, h * w, dim // 2)


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, S, head_dim / 2): rotary positions for the attention heads."""
    full = axis_angles(grid, head_dim, theta, device)
    return full.cos().float(), full.sin().float()


def rope_tables(cos: torch.Tensor, sin: torch.Tensor, batch: int, factorized: bool,
                dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The rotary tables every block uses, made once per forward in the dtype q and k have there
    (bf16 under autocast), so no block casts or copies them: full attention (cos, sin) of shape
    (1, T*S, hd/2); factorized, spatial (B*T, S, hd/2) then temporal (B*S, T, hd/2) ones."""
    cos, sin = cos.to(dtype), sin.to(dtype)
    t, s, half = cos.shape
    if not factorized:
        return cos.reshape(1, t * s, half), sin.reshape(1, t * s, half)
    return (cos.repeat(batch, 1, 1), sin.repeat(batch, 1, 1),
            cos.transpose(0, 1).repeat(batch, 1, 1), sin.transpose(0, 1).repeat(batch, 1, 1))


def sincos_3d(grid: tuple[int, int, int], dim: int, theta: float, device=None) -> torch.Tensor:
    """(T, S, dim) fixed sin-cos absolute positions, added to the tokens when `model.abs_pos`."""
    full = axis_angles(grid, dim, theta, device)
    return torch.cat([full.sin(), full.cos()], dim=-1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (..., L, hd) by angles with cos/sin broadcastable to (..., L, hd/2),
    in the wider of x's and the tables' dtypes: with tables in x's own dtype (`rope_tables`) there
    is no round trip through float32 per layer; float32 tables rotate a bf16 x in float32."""
    wide = torch.promote_types(x.dtype, cos.dtype)
    pairs = x.unflatten(-1, (-1, 2))
    x1, x2 = pairs[..., 0].to(wide), pairs[..., 1].to(wide)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


# a padding key's extra head-dim column holds this (a real key's 0), facing a 1 in every query's:
# with the padding keys zeroed, a padding score is -30000 / sqrt(head_dim) (<= -1875 for head_dim
# <= 256), whose exp is exactly 0 in float32 unless every real key of the row scores below about
# -1770 (-3640 at head_dim 64). Finite, so nothing turns NaN, and fp16-safe.
KEY_PADDING_SCORE = -30000.0


def key_padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SDPA of q (N, heads, Lq, hd) over the keys k, v (N, heads, Lk, hd) where mask (N, Lk) is
    True, with no attn_mask (on CUDA a mask rules out the flash kernel): the padding enters the
    scores through extra head-dim columns instead, q's = (1, 0, ...) and k's = (0 or
    KEY_PADDING_SCORE, 0, ...), so a real key's score is unchanged (it gains 1 * 0) and a padding
    key's weight is exactly 0. Columns go up to the next multiple of 8 (flash takes q, k and v of
    one head size, and pads others itself) and are sliced off the output; the scale stays
    1/sqrt(hd). Padding keys and values are zeroed first, so their contents never matter, and a
    row with no real key gives 0, as masked SDPA does."""
    n, heads, lq, hd = q.shape
    extra = 8 - hd % 8

    def columns(rows: int, first: torch.Tensor) -> torch.Tensor:   # (N or 1, heads, rows, extra)
        tail = first.new_zeros(*first.shape, extra - 1)
        return torch.cat([first.unsqueeze(-1), tail], dim=-1).expand(-1, heads, rows, extra)

    keep = mask.to(k.dtype).unsqueeze(1)                                                 # (N, 1, Lk)
    pad_score = (1 - keep) * KEY_PADDING_SCORE
    q = torch.cat([q, columns(lq, q.new_ones(1, 1, 1)).expand(n, -1, -1, -1)], dim=-1)
    k = torch.cat([k * keep.unsqueeze(-1), columns(k.shape[2], pad_score)], dim=-1)
    v = torch.cat([v * keep.unsqueeze(-1).to(v.dtype), v.new_zeros(n, heads, v.shape[2], extra)], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5).narrow(-1, 0, hd)


def text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of q over the keys where mask (N, Lk) is True (None: all). Where flash attention
    can run (CUDA, fp16/bf16) the mask-free `key_padded_attention`; elsewhere SDPA with the mask,
    which costs nothing there (CPU's flash kernel takes masks; fp32 CUDA has no flash kernel) while
    the extra columns would (a 72-wide head for 64 is ~30% more CPU time per cross-attention)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return key_padded_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1).unsqueeze(1))   # (N, 1, 1, Lk)


# ---------------------------------------------------------------------------------------------
# Core DiT model
# ---------------------------------------------------------------------------------------------

class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose weight follows the input's dtype: under autocast q and k are bf16 while the
    weight stays float32, and the fused kernel dispatches only when both agree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class Attention(nn.Module):
    """Multi-head attention (self or cross) with optional QK RMS-norm, RoPE, and PyTorch SDPA."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        # set on the spacetime/spatial self-attention of a context-parallel run: x holds this
        # rank's slice of the tokens, and heads are swapped for tokens around the attention
        self.context_parallel: ContextParallel | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, L, D); context: (N, Lc, D) or None (self-attention); rope: cos/sin (N or 1, L, hd/2);
        mask: (N, Lc) bool, True = attend, or None: every key."""
        n, length, dim = x.shape
        context = x if context is None else context
        split = lambda y: y.reshape(n, y.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(context)), split(self.v(context))  # (N, heads, L, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope[0][:, None], rope[1][:, None]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cp = self.context_parallel
        if cp is not None:    # (N, heads, L/n, hd) -> (N, heads/n, L, hd): the whole clip, some heads
            q, k, v = cp.heads_to_sequence(q), cp.heads_to_sequence(k), cp.heads_to_sequence(v)
        out = text_attention(q, k, v, mask)
        if cp is not None:
            out = cp.sequence_to_heads(out)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """A DiT block with adaLN-zero modulation, spacetime self-attention and text cross-attention."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool, factorized: bool):
        super().__init__()
        self.factorized = factorized
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm)
        if factorized:
            self.norm_t = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.attn_t = Attention(hidden_size, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.cross_attn = Attention(hidden_size, num_heads, qk_norm)
        self.norm3 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.num_mod = 9 if factorized else 6
        self.mod_table = nn.Parameter(torch.zeros(self.num_mod, hidden_size))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
                rope: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x: (B, T, S, D); mod: (B, T, 1, num_mod, D) shared modulation; context_mask: (B, Lc) or
        None (no padding); rope: `rope_tables` (full: cos, sin; factorized: spatial then temporal)."""
        b, t, s, d = x.shape
        params = (mod + self.mod_table).unbind(dim=3)                     # each (B, T, 1, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = params[:6]
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        if self.factorized:   # attention within each frame, then across frames at each position
            h = self.attn(h.reshape(b * t, s, d), rope=rope[:2])
            x = x + gate_msa * h.reshape(b, t, s, d)
            shift_t, scale_t, gate_t = params[6:]
            h = modulate(self.norm_t(x), shift_t, scale_t).transpose(1, 2).reshape(b * s, t, d)
            h = self.attn_t(h, rope=rope[2:]).reshape(b, s, t, d).transpose(1, 2)
            x = x + gate_t * h
        else:                 # one attention over every token of the clip
            h = self.attn(h.reshape(b, t * s, d), rope=rope)
            x = x + gate_msa * h.reshape(b, t, s, d)
        x = x + self.cross_attn(self.norm2(x).reshape(b, t * s, d), context, mask=context_mask).reshape(b, t, s, d)
        x = x + gate_mlp * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """The final layer of DiT: adaLN, then a linear map from tokens to patches."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x (B,T,S,D), c (B,T,1,D)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Diffusion model with a Transformer backbone over spacetime patches."""

    def __init__(self, config: DiTConfig, in_channels: int, text_dim: int):
        super().__init__()
        self.config = config
        self.in_channels = self.out_channels = in_channels
        self.patch_size = tuple(config.patch_size)
        d, heads = config.hidden_size, config.num_heads
        self.head_dim = d // heads
        self.grad_checkpointing = False     # set by the trainer (train.activation_checkpointing) ...
        self.checkpoint_every = 1           # ... for every k-th block (0, k, 2k, ...)
        self.context_parallel: ContextParallel | None = None   # set by `enable_context_parallel`
        # +1 input channel: the condition mask (1 where a latent frame is given clean)
        self.x_embedder = nn.Conv3d(in_channels + 1, d, kernel_size=self.patch_size, stride=self.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, (9 if config.attention == "factorized" else 6) * d))
        self.y_embedder = nn.Sequential(nn.Linear(text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.pooled_embedder = (nn.Sequential(nn.Linear(text_dim, d), nn.SiLU(), nn.Linear(d, d))
                                if config.pooled_text else None)
        self.blocks = nn.ModuleList([
            DiTBlock(d, heads, config.mlp_ratio, config.qk_norm, config.attention == "factorized")
            for _ in range(config.depth)])
        self.final_layer = FinalLayer(d, math.prod(self.patch_size), self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)
        w = self.x_embedder.weight.data      # initialise the patch embedding like nn.Linear
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.bias, 0)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.y_embedder[0].weight, std=0.02)
        nn.init.normal_(self.y_embedder[2].weight, std=0.02)
        if self.pooled_embedder is not None:
            nn.init.normal_(self.pooled_embedder[0].weight, std=0.02)
            nn.init.normal_(self.pooled_embedder[2].weight, std=0.02)
        # zero-out adaLN modulation (all gates start at 0: every block starts as the identity)
        nn.init.constant_(self.t_block[-1].weight, 0)
        nn.init.constant_(self.t_block[-1].bias, 0)
        for block in self.blocks:
            nn.init.constant_(block.cross_attn.proj.weight, 0)
            nn.init.constant_(block.cross_attn.proj.bias, 0)
        # zero-out output layers
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def enable_context_parallel(self, cp: ContextParallel | None) -> None:
        """Run on this rank's slice of each frame's tokens (trainer/parallel.py); None: the whole clip."""
        self.context_parallel = cp
        for block in self.blocks:
            block.attn.context_parallel = cp    # spacetime or spatial; temporal attention stays local

    def token_grid(self, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(T, H, W) of latents -> (T', H', W') of tokens; raises if a patch does not divide it."""
        if any(n % p for n, p in zip(latent_shape, self.patch_size)):
            raise ValueError(f"latent size {tuple(latent_shape)} is not divisible by patch {self.patch_size}")
        return tuple(n // p for n, p in zip(latent_shape, self.patch_size))  # type: ignore[return-value]

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, T', S, pt*ph*pw*C) -> (B, C, T, H, W)."""
        (t, h, w), (pt, ph, pw), c = grid, self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], t, h, w, pt, ph, pw, c)
        x = torch.einsum("nthwopqc->nctohpwq", x)
        return x.reshape(x.shape[0], c, t * pt, h * ph, w * pw)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the flow velocity.

        x: (B, C, T, H, W) noisy latents; t: (B, T) per-latent-frame timestep in [0, 1];
        context: (B, L, text_dim) text token states; context_mask: (B, L) bool, True = a real token
        (None: no padding);
        cond_mask: (B, T) 1 where the latent frame is a clean condition, or None.
        """
        b, _, frames, height, width = x.shape
        pt = self.patch_size[0]
        grid = self.token_grid((frames, height, width))
        # inputs follow the weights' dtype (bf16 under FSDP mixed precision; timesteps stay fp32)
        dtype = self.x_embedder.weight.dtype
        x, context = x.to(dtype), context.to(dtype)
        if cond_mask is None:
            cond_mask = torch.zeros(b, frames, device=x.device, dtype=x.dtype)
        mask_channel = cond_mask.to(x.dtype)[:, None, :, None, None].expand(b, 1, frames, height, width)
        x = self.x_embedder(torch.cat([x, mask_channel], dim=1))             # (B, D, T', H', W')
        x = x.flatten(3).permute(0, 2, 3, 1)                                 # (B, T', S, D)
        if self.config.abs_pos:
            x = x + sincos_3d(grid, x.shape[-1], self.config.rope_theta, device=x.device).to(x.dtype)
        c = self.t_embedder(t[:, ::pt])[:, :, None]                          # (B, T', 1, D)
        if self.pooled_embedder is not None:
            keep = (context_mask if context_mask is not None else context.new_ones(context.shape[:2]))
            keep = keep.to(context.dtype)[..., None]
            pooled = (context * keep).sum(1) / keep.sum(1).clamp(min=1)       # (B, text_dim)
            c = c + self.pooled_embedder(pooled)[:, None, None].to(c.dtype)
        mod = self.t_block(c).unflatten(-1, (-1, c.shape[-1]))               # (B, T', 1, n_mod, D)
        context = self.y_embedder(context)                                   # (B, L, D)
        # captions differ in length from batch to batch: compiled blocks take L as a dynamic size from
        # their first call, rather than compiling again when the second length comes
        torch._dynamo.maybe_mark_dynamic(context, 1)
        if context_mask is not None:
            torch._dynamo.maybe_mark_dynamic(context_mask, 1)
        cos, sin = rope_3d(grid, self.head_dim, self.config.rope_theta, device=x.device)
        cp = self.context_parallel
        if cp is not None:    # this rank's slice of every frame's tokens, and of their positions
            cp.check_tokens(x.shape[2])
            x = cp.shard(x, 2).contiguous()
            cos, sin = cp.shard(cos, 1).contiguous(), cp.shard(sin, 1).contiguous()
        # q and k's dtype in the blocks: autocast's (bf16) where it is on, else the weights'
        kind = x.device.type
        autocast = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
        compute = torch.get_autocast_dtype(kind) if autocast else dtype
        rope = rope_tables(cos, sin, b, self.config.attention == "factorized", compute)
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and i % self.checkpoint_every == 0:
                x = checkpoint(block, x, mod, context, context_mask, rope, use_reentrant=False)
            else:
                x = block(x, mod, context, context_mask, rope)
        x = self.final_layer(x, c)                                           # (B, T', S, p*C)
        if cp is not None:    # every rank of the group gets the whole prediction for the loss
            x = cp.gather(x, 2)
        return self.unpatchify(x, grid)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_dit(path: str, weights: str = "ema") -> tuple[DiT, dict[str, str]]:
    """A DiT from a `recap train dit` run directory (its newest readable checkpoint's `weights`: ema or model;
    sharded checkpoints too) or a checkpoint's .safetensors file. Returns the model (eval mode) and
    the file's metadata, which also names the text encoder, the autoencoder and the flow settings it was trained with."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no such run folder or checkpoint file (give the --out of `recap train "
                                "dit`, or a .safetensors file of one of its checkpoints)")
    if file.is_dir():
        found = list_checkpoints(file)
        if not found:
            raise FileNotFoundError(f"no checkpoint in {file}")
        problems = []
        for ckpt in reversed(found):     # the newest that reads, as `recap train --resume` does
            try:
                state, meta = _checkpoint_weights(ckpt, weights)
                break
            except CheckpointError as e:
                problems.append(str(e))
                print(f"warning: {e}; trying the checkpoint before it", file=sys.stderr)
        else:
            raise CheckpointError(f"no checkpoint of {file} can be read: " + "; ".join(problems))
    else:
        state, meta = _read_weights(file)
    if meta.get("format") != "recap.dit":
        raise ValueError(f"{file} is not a recap DiT checkpoint (format {meta.get('format')!r})")
    model = DiT(from_dict(DiTConfig, json.loads(meta["config"])), int(meta["in_channels"]), int(meta["text_dim"]))
    model.load_state_dict(state)
    return model.eval().requires_grad_(False), meta


def _checkpoint_weights(ckpt: Path, weights: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`weights` (ema or model) of one checkpoint folder, whole or sharded (FSDP, not exported yet)."""
    file = ckpt / f"{weights}.safetensors"
    if not file.exists() and (ckpt / "dcp").is_dir():
        # lazy: torch.distributed.checkpoint only for sharded runs
        from trainer.sharded import load_sharded_weights
        tensors, meta = load_sharded_weights(ckpt, (weights,))
        return tensors[weights], meta
    return _read_weights(file)


def _read_weights(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        return load_weights(file)
    except Exception as e:   # safetensors' own errors for a truncated file or one that is not safetensors
        raise CheckpointError(f"{file} cannot be read as a checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e


__all__ = ["DiT", "DiTConfig", "DIT_SIZES", "count_params", "load_dit", "rope_3d", "rope_tables", "sincos_3d", "apply_rope",
           "key_padded_attention", "text_attention", "modulate"]

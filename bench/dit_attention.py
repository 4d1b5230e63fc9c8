"""Cross-attention without a boolean mask, and RoPE in the compute dtype (trainer/dit.py), each
against the formulation it replaced, measured in the same run.

  .venv/bin/python bench/dit_attention.py [--threads 1] [--repeats 7]
  .venv/bin/python bench/dit_attention.py --device cuda --dtype bf16     # the case it is for: flash

1. Cross-attention over padded captions: SDPA with a boolean key mask (what rules out CUDA's
   flash kernel) vs `key_padded_attention` (padding as an extra head-dim column; no mask):
   largest difference of the outputs and of the gradients, and CPU seconds per forward+backward
   (interleaved A/B, median) for the attention alone and for a whole DiT block. The model takes
   the mask-free form only on CUDA in fp16/bf16 (`text_attention`); on the CPU it keeps the mask.
2. RoPE: the float32 round trip per layer vs tables made once in the compute dtype: largest
   difference in float32 (must be 0) and in bf16 (rotation alone, and a whole DiT under CPU bf16
   autocast, beside that DiT's own bf16-vs-float32 difference), and CPU seconds per call.

Times are CPU seconds of this process (user + sys), steadier than wall time on a shared machine;
on CUDA, wall seconds after a synchronize.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import trainer.dit as dit
from trainer.dit import DiT, DiTBlock, DiTConfig, apply_rope, key_padded_attention, rope_3d, rope_tables

DEVICE = torch.device("cpu")
DTYPE = torch.float32


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The formulation replaced: SDPA with a boolean key padding mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])


def float32_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The RoPE replaced: x to float32 and back in every layer, float32 tables."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack([x1 * cos.float() - x2 * sin.float(), x1 * sin.float() + x2 * cos.float()], dim=-1).flatten(-2)
    return out.to(x.dtype)


def cpu_seconds(fn: Callable[[], object]) -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()
    fn()
    return time.process_time() - start


def ab(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median CPU seconds of a and b, run alternately (after one warm-up each)."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(cpu_seconds(a))
        tb.append(cpu_seconds(b))
    return statistics.median(ta), statistics.median(tb)


def padded_batch(lengths: list[int], tokens: int, dim: int, heads: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, lk, hd = len(lengths), max(lengths), dim // heads
    q, k, v = (torch.randn(n, heads, rows, hd, generator=g).to(DEVICE, DTYPE).requires_grad_()
               for rows in (tokens, lk, lk))
    mask = (torch.arange(lk)[None] < torch.tensor(lengths)[:, None]).to(DEVICE)
    return q, k, v, mask


def attention_rows(repeats: int) -> list[str]:
    rows = []
    cases = [("DiT-S (6 x 64)", 384, 6, 2304, [60, 41, 23, 12]), ("DiT-B (12 x 64)", 768, 12, 2304, [60, 41, 23, 12]),
             ("DiT-S, no padding", 384, 6, 2304, [60, 60, 60, 60])]
    for name, dim, heads, tokens, lengths in cases:
        q, k, v, mask = padded_batch(lengths, tokens, dim, heads)
        grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, DTYPE)
        outs, grads = [], []
        for fn in (masked_attention, key_padded_attention):
            q.grad = k.grad = v.grad = None
            out = fn(q, k, v, mask)
            out.backward(grad)
            outs.append(out.detach())
            grads.append(torch.cat([q.grad.flatten(), k.grad.flatten(), v.grad.flatten()]).float())
        d_out = (outs[0].float() - outs[1].float()).abs().max().item()
        d_grad = (grads[0] - grads[1]).abs().max().item()

        def step(fn):
            return lambda: fn(q, k, v, mask).backward(grad)
        t_mask, t_free = ab(step(masked_attention), step(key_padded_attention), repeats)
        rows.append(f"| cross-attention alone, {name}, B={len(lengths)}, {tokens} tokens, caption lengths {lengths} | "
                    f"{t_mask * 1e3:.1f} | {t_free * 1e3:.1f} | {t_free / t_mask:.2f} | {d_out:.1e} / {d_grad:.1e} |")
    # a whole block (self-attention, cross-attention, MLP), forward + backward
    torch.manual_seed(0)
    dim, heads, b, t, s = 384, 6, 4, 9, 256
    block = DiTBlock(dim, heads, 4.0, qk_norm=True, factorized=False).to(DEVICE, DTYPE)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(b, t, s, dim).to(DEVICE, DTYPE).requires_grad_()
    mod = torch.randn(b, t, 1, 6, dim).to(DEVICE, DTYPE) * 0.1
    lengths = [60, 41, 23, 12]
    context = torch.randn(b, max(lengths), dim).to(DEVICE, DTYPE)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).to(DEVICE)
    cos, sin = rope_3d((t, 16, 16), dim // heads, 10000.0, device=DEVICE)
    rope = rope_tables(cos, sin, b, False, DTYPE)

    def block_step(fn):
        def run():
            saved = dit.text_attention
            dit.text_attention = lambda q, k, v, m: fn(q, k, v, m) if m is not None else masked_attention(q, k, v, None)
            try:
                block(x, mod, context, mask, rope).square().mean().backward()
            finally:
                dit.text_attention = saved
        return run
    t_mask, t_free = ab(block_step(masked_attention), block_step(key_padded_attention), repeats)
    rows.append(f"| DiT-S block fwd+bwd (new: mask-free forced, as CUDA bf16 runs it), B={b}, {t * s} tokens, caption lengths {lengths} | {t_mask * 1e3:.1f} | "
                f"{t_free * 1e3:.1f} | {t_free / t_mask:.2f} | |")
    return rows


def flash_row() -> str:
    """CUDA: which of the two runs with SDPA restricted to the flash kernel."""
    q, k, v, mask = padded_batch([60, 41, 23, 12], 2304, 384, 6)
    ran = {}
    for name, fn in (("masked", masked_attention), ("mask-free", key_padded_attention)):
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                fn(q, k, v, mask).sum().backward()
            ran[name] = "runs"
        except RuntimeError as e:
            ran[name] = f"refused ({str(e).splitlines()[0][:60]})"
    return f"| flash attention only | {ran['masked']} | {ran['mask-free']} | | |"


def rope_rows(repeats: int) -> list[str]:
    rows = []
    g = torch.Generator().manual_seed(0)
    grid, hd = (9, 16, 16), 64
    cos, sin = rope_3d(grid, hd, 10000.0, device=DEVICE)
    c32, s32 = (a[:, None] for a in rope_tables(cos, sin, 1, False, torch.float32))
    c16, s16 = (a[:, None] for a in rope_tables(cos, sin, 1, False, torch.bfloat16))
    x = (torch.randn(4, 6, 9 * 256, hd, generator=g) * 3).to(DEVICE)
    exact32 = (float32_rope(x, c32, s32) - apply_rope(x, c32, s32)).abs().max().item()
    xb = x.bfloat16()
    # the truth: the bf16 input rotated in float64 by exact angles
    angles = dit.axis_angles(grid, hd, 10000.0, device=DEVICE).reshape(1, 1, -1, hd // 2)
    x1, x2 = xb.double()[..., 0::2], xb.double()[..., 1::2]
    truth = torch.stack([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], -1).flatten(-2)
    old, new = float32_rope(xb, c32, s32).double(), apply_rope(xb, c16, s16).double()
    err_old, err_new = (old - truth).abs().max().item(), (new - truth).abs().max().item()
    t_old32, t_new32 = ab(lambda: float32_rope(x, c32, s32), lambda: apply_rope(x, c32, s32), repeats)
    t_old16, t_new16 = ab(lambda: float32_rope(xb, c32, s32), lambda: apply_rope(xb, c16, s16), repeats)
    rows.append(f"| RoPE on (4, 6, 2304, 64) float32 | {t_old32 * 1e3:.1f} | {t_new32 * 1e3:.1f} | "
                f"{t_new32 / t_old32:.2f} | {exact32:.1e} |")
    rows.append(f"| RoPE on (4, 6, 2304, 64) bf16, max abs x {xb.abs().max().item():.1f} | {t_old16 * 1e3:.1f} | "
                f"{t_new16 * 1e3:.1f} | {t_new16 / t_old16:.2f} | new vs old {(new - old).abs().max().item():.2e} "
                f"(mean {(new - old).abs().mean().item():.1e}); vs exact: old {err_old:.2e}, new {err_new:.2e} |")
    return rows


def dit_bf16_row() -> str:
    """A whole DiT-S-shaped model (4 blocks) under CPU bf16 autocast: new vs old RoPE."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(size="S", depth=4), in_channels=16, text_dim=64).to(DEVICE).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 16, 3, 16, 16).to(DEVICE), torch.rand(2, 3).to(DEVICE)
    ctx = torch.randn(2, 20, 64).to(DEVICE)
    mask = (torch.arange(20)[None] < torch.tensor([[20], [9]])).to(DEVICE)
    with torch.no_grad():
        ref32 = model(x, t, ctx, mask)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            new = model(x, t, ctx, mask).float()
            saved = dit.apply_rope, dit.rope_tables
            dit.apply_rope = float32_rope
            dit.rope_tables = lambda c, s, b, f, dtype: saved[1](c, s, b, f, torch.float32)
            try:
                old = model(x, t, ctx, mask).float()
            finally:
                dit.apply_rope, dit.rope_tables = saved
    scale = ref32.abs().max().item()
    return (f"| DiT-S shape, 4 blocks, bf16 autocast: output max abs diff new vs old RoPE | "
            f"{(new - old).abs().max().item():.2e} | old bf16 vs float32: {(old - ref32).abs().max().item():.2e} | "
            f"new bf16 vs float32: {(new - ref32).abs().max().item():.2e} | (max |output| {scale:.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="of the attention and block cases")
    args = parser.parse_args()
    global DEVICE, DTYPE
    DEVICE, DTYPE = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.device} {args.dtype}, {args.threads} thread(s), median of "
          f"{args.repeats} interleaved runs; old = SDPA with a boolean mask / float32 RoPE round trip")
    unit = "ms" if DEVICE.type == "cuda" else "ms CPU"
    print(f"| case | old ({unit}) | new ({unit}) | new/old | max abs diff (out / grads) |")
    print("|---|---|---|---|---|")
    flash = [flash_row()] if DEVICE.type == "cuda" and DTYPE == torch.bfloat16 else []
    for row in flash + attention_rows(args.repeats) + rope_rows(args.repeats):
        print(row)
    print()
    print("| model check | new vs old | | | |")
    print("|---|---|---|---|---|")
    print(dit_bf16_row())


if __name__ == "__main__":
    main()

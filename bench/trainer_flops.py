"""DiT sizes, tokens and analytic FLOPs per training step, plus measured CPU step times for the
tiny configs, so MFU can be computed the day a GPU measures a step time:

    MFU = flops_per_step / step_seconds / peak_flops   (H100 SXM dense bf16: 989e12)

Usage: .venv/bin/python bench/trainer_flops.py [--threads 2] [--steps 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from trainer.dit import DiT, DiTConfig, count_params

TEXT_DIM = 384           # all-MiniLM-L6-v2 (the default text encoder)
TEXT_TOKENS = 32         # a typical caption
LATENT_CHANNELS = 16     # the default VAE (4x time, 8x space)


def dit_forward_flops(cfg: DiTConfig, grid: tuple[int, int, int], text_tokens: int = TEXT_TOKENS,
                      in_channels: int = LATENT_CHANNELS, text_dim: int = TEXT_DIM) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass for one sample of token grid (T, H, W)."""
    t, h, w = grid
    n, s, d, L = t * h * w, h * w, cfg.hidden_size, text_tokens
    hidden = int(d * cfg.mlp_ratio)
    patch = math.prod(cfg.patch_size)
    per_block = (
        2 * n * 4 * d * d                      # self-attention q, k, v, out
        + 2 * n * 2 * d * d + 2 * L * 2 * d * d  # cross-attention q, out (tokens); k, v (text)
        + 2 * 2 * n * L * d                    # cross-attention scores and weighted sum
        + 2 * 2 * n * d * hidden               # MLP
    )
    if cfg.attention == "full":
        per_block += 2 * 2 * n * n * d         # scores and weighted sum over every token
    else:
        per_block += 2 * n * 4 * d * d + 2 * 2 * n * (s + t) * d   # second attention; S then T keys
    embed = 2 * n * (in_channels + 1) * patch * d + 2 * n * d * patch * in_channels
    text = 2 * L * (text_dim * d + d * d)
    return cfg.depth * per_block + embed + text


def training_step_flops(forward: int, batch: int, activation_checkpointing: bool = False) -> int:
    """Backward costs two forwards; recomputation under activation checkpointing adds one more."""
    return forward * batch * (4 if activation_checkpointing else 3)


def cpu_step_seconds(model: torch.nn.Module, latent: tuple[int, int, int, int], batch: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    c, t, h, w = latent
    x = torch.randn(batch, c, t, h, w)
    ctx, mask = torch.randn(batch, TEXT_TOKENS, TEXT_DIM), torch.ones(batch, TEXT_TOKENS, dtype=torch.bool)
    times = []
    for i in range(steps + 2):                # two warm-up steps
        start = time.perf_counter()
        out = model(x, torch.rand(batch, t), ctx, mask)
        out.square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []

    # 1) tiny configs on CPU: measured step time (model step only: forward, backward, AdamW)
    for attention in ("full", "factorized"):
        cfg = DiTConfig(size="tiny", attention=attention)
        torch.manual_seed(0)
        model = DiT(cfg, in_channels=3, text_dim=TEXT_DIM)     # pixel space, as configs/dit_tiny.yaml
        latent, batch = (3, 3, 16, 16), 4                         # bucket 16x16x3
        grid = model.token_grid(latent[1:])
        fwd = dit_forward_flops(cfg, grid, in_channels=3)
        sec = cpu_step_seconds(model, latent, batch, args.steps)
        rows.append({"config": f"tiny/{attention}", "params_M": count_params(model) / 1e6, "bucket": "16x16x3 pixels",
                     "batch": batch, "tokens_per_sample": math.prod(grid), "gflops_per_step":
                     training_step_flops(fwd, batch) / 1e9, "cpu_step_s": sec,
                     "cpu_gflops_per_s": training_step_flops(fwd, batch) / sec / 1e9})

    from pathlib import Path

    from trainer.train import load_job_config
    from trainer.vae import CausalVAE
    vae_cfg = load_job_config("vae", Path(__file__).resolve().parents[1] / "configs" / "vae_tiny.yaml").model
    vae = CausalVAE(vae_cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.rand(4, 3, 5, 16, 16) * 2 - 1
    times = []
    for i in range(args.steps + 2):
        start = time.perf_counter()
        recon, mean, logvar = vae(x)
        (recon - x).abs().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    rows.append({"config": "vae_tiny", "params_M": count_params(vae) / 1e6, "bucket": "16x16x5", "batch": 4,
                 "cpu_step_s": sorted(times)[len(times) // 2]})

    # 2) production sizes: analytic only (a CPU step would take minutes)
    buckets = {"256x256x33": (9, 32, 32), "512x288x65": (17, 36, 64), "256x256x1 (image)": (1, 32, 32)}
    for size in ("B", "L", "XL", "H"):
        for attention in ("full", "factorized"):
            cfg = DiTConfig(size=size, attention=attention)
            with torch.device("meta"):
                params = count_params(DiT(cfg, in_channels=LATENT_CHANNELS, text_dim=TEXT_DIM))
            for bucket, latent in buckets.items():
                grid = (latent[0], latent[1] // 2, latent[2] // 2)
                fwd = dit_forward_flops(cfg, grid)
                rows.append({"config": f"{size}/{attention}", "params_M": params / 1e6, "bucket": bucket,
                             "tokens_per_sample": math.prod(grid), "tflops_per_sample_step":
                             training_step_flops(fwd, 1) / 1e12,
                             "tflops_per_sample_step_ckpt": training_step_flops(fwd, 1, True) / 1e12})

    for row in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

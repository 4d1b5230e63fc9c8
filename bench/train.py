"""Training throughput: tokens/s, samples/s, where a step's time goes, peak memory and MFU.

    .venv/bin/python bench/train.py                         # CPU: the tiny configs, plus the analytic table
    python bench/train.py --sizes B L --buckets 256x256x33 512x288x65        # on a GPU (the defaults there)
    python bench/train.py --modes step --sizes L --buckets 512x288x65 --batch 4 --json out.json

Modes, each on synthetic data of the bucket's shape (random weights: speed does not depend on them):
  step     the model step alone: latents and text states already on the device; forward
           (flow_loss under bf16 autocast), backward, optimizer (clip + fused AdamW + EMA), timed
           apart with CUDA events (perf_counter on CPU)
  online   the real loop (`trainer.train.main`) on shards of synthetic videos, each batch
           VAE-encoded and text-encoded on the fly, 2 x --steps steps of which the second half is
           measured; data wait is the share of that time spent waiting on the loader
  cache    the same loop on a latent cache of those shards (`recap train cache`)
  loader   the shard loader alone (bench/loader.py's loader_speed): samples/s it delivers, and per CPU-second
  ddp      the model step as the trainer runs it with train.parallel=ddp: DDP-wrapped, bf16
           autocast, fused AdamW; under `torchrun --nproc-per-node N bench/train.py --modes ddp fsdp`
           on N GPUs (each rank its own batch; rank 0 prints)
  fsdp     the same with train.parallel=fsdp: FSDP2 per block, bf16 all-gathers, fp32 reduce-scatter,
           foreach AdamW on the shards; on one process a group of one, so FSDP's own code path runs
  sample   `recap sample`'s ODE steps (trainer.rf.sample, guided: the model on 2 x batch) in fp32 and
           under bf16 autocast (`recap sample --precision`), --steps steps after --warmup; tokens/s
           and MFU count the forward passes only; samples/s is videos per second at 30 steps

MFU = analytic training FLOPs (bench/trainer_flops.py: matmuls, 3x forward) / step time / peak,
against the datasheet's dense bf16 peak and against a bf16 matmul ceiling measured here. The
autoencoder is the default 46M VAE on a GPU (configs/vae.yaml) and the tiny one on CPU, untrained;
the text encoder is the bundled MiniLM. Batch sizes default to the largest of 16, 8, 4, 2, 1 whose
memory estimate (trainer/memory.py) fits in 85% of the device.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel as DDP

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loader import loader_speed, synthetic_shards  # noqa: E402
from trainer_flops import dit_forward_flops, training_step_flops  # noqa: E402

from trainer.cache import CacheSettings, build_cache  # noqa: E402
from trainer.dit import DiT, DiTConfig, count_params  # noqa: E402
from trainer.memory import GB, STATE_BYTES_PER_PARAM, device_memory, dit_step, encode_transient  # noqa: E402
from trainer.parallel import clip_grad_norm, shard_model  # noqa: E402
from trainer.rf import flow_loss, sample  # noqa: E402
from trainer.runtime import ATTENTION_KERNELS, attention_kernels, init_distributed  # noqa: E402
from trainer.shards import Bucket  # noqa: E402
from trainer.train import EMA, load_job_config, main  # noqa: E402
from trainer.vae import AutoencoderSource, CausalVAE, VAEConfig, save_vae  # noqa: E402

TEXT_DIM, TEXT_TOKENS = 384, 32      # the bundled MiniLM; a typical caption
DATASHEET_BF16 = {"H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12,
                  "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def datasheet_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DATASHEET_BF16.items() if key in name), None)


def matmul_ceiling(device: torch.device) -> float:
    """FLOP/s of a large square matmul: bf16 on a GPU (8192^3), float32 on the CPU (1024^3)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start, reps = time.perf_counter(), 20 if device.type == "cuda" else 3
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Marks between phases: CUDA events (no host sync until read) or perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def model_step(cfg: DiTConfig, latent: tuple[int, int, int, int], batch: int, device: torch.device, steps: int,
               warmup: int, compiled: bool, attention: str = "auto") -> dict:
    """Forward / backward / optimizer seconds per step, as the loop runs them, on resident data."""
    c, t, h, w = latent
    torch.manual_seed(0)
    model = DiT(cfg, in_channels=c, text_dim=TEXT_DIM).to(device).train()
    ema = DiT(cfg, in_channels=c, text_dim=TEXT_DIM).to(device).eval().requires_grad_(False)
    ema_update = EMA(ema, model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if device.type == "cuda" else None)
    if compiled:
        for block in model.blocks:
            block.compile()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    x = torch.randn(batch, c, t, h, w, device=device)
    ctx = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, device=device)
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.bool, device=device)
    tt, noise, cond = torch.rand(batch, device=device), torch.randn_like(x), torch.zeros(batch, t, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    splits, first = [], 0.0
    for i in range(warmup + steps):
        clock = Clock(device)
        clock.mark()
        with autocast, attention_kernels(attention):
            loss = flow_loss(model, x, ctx, mask, tt, noise, cond).mean()
        clock.mark()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update.update(0.999)
        clock.mark()
        if i == 0:
            first = sum(clock.seconds())
        elif i >= warmup:
            splits.append(clock.seconds())
    # the same steps back to back, with no reads in between: the throughput the loop can reach
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast, attention_kernels(attention):
            loss = flow_loss(model, x, ctx, mask, tt, noise, cond).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update.update(0.999)
    sync(device)
    step_s = (time.perf_counter() - start) / steps
    fwd, bwd, optim = (sorted(s[k] for s in splits)[len(splits) // 2] for k in range(3))
    return {"step_s": step_s, "forward_s": fwd, "backward_s": bwd, "optimizer_s": optim, "first_step_s": first,
            "params_M": count_params(model) / 1e6,
            "peak_gb": torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None}


def sample_steps(cfg: DiTConfig, latent: tuple[int, int, int, int], batch: int, device: torch.device, steps: int,
                 warmup: int, precision: str, attention: str = "auto") -> dict:
    """Seconds per guided ODE step of `trainer.rf.sample` (random weights and text states)."""
    c, t, h, w = latent
    torch.manual_seed(0)
    model = DiT(cfg, in_channels=c, text_dim=TEXT_DIM).to(device).eval()
    noise = torch.randn(batch, c, t, h, w, device=device)
    ctx = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, device=device)
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), autocast, attention_kernels(attention):
        sample(model, noise, ctx, mask, ctx, mask, steps=max(warmup, 1))
        sync(device)
        start = time.perf_counter()
        sample(model, noise, ctx, mask, ctx, mask, steps=steps)
        sync(device)
    return {"step_s": (time.perf_counter() - start) / steps, "params_M": count_params(model) / 1e6,
            "peak_gb": torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None}


def parallel_step(cfg: DiTConfig, latent: tuple[int, int, int, int], batch: int, steps: int, warmup: int,
                  compiled: bool, parallel: str) -> dict:
    """Seconds per model step with the model wrapped as the trainer wraps it (`ddp` or `fsdp`), on
    every rank of the process group (one of one when not under torchrun)."""
    rank, world, device, _ = init_distributed()
    if not dist.is_initialized():      # one process: a group of one, so DDP and FSDP run their own code
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{29500 + os.getpid() % 1000}", rank=0, world_size=1)
    c, t, h, w = latent
    torch.manual_seed(0)
    model = DiT(cfg, in_channels=c, text_dim=TEXT_DIM).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if compiled:
        for block in model.blocks:
            block.compile()
    bf16 = device.type == "cuda"
    if parallel == "fsdp":
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for module in (model, ema):
            shard_model(module, module.blocks, mesh, bf16, cpu_offload=False)
        train_model: torch.nn.Module = model
    else:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if bf16 and parallel == "ddp" else None,
                            foreach=True if parallel == "fsdp" else None)
    ema_update, params = EMA(ema, model), list(model.parameters())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    x = torch.randn(batch, c, t, h, w, device=device)
    ctx = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, device=device)
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.bool, device=device)
    tt, noise, cond = torch.rand(batch, device=device), torch.randn_like(x), torch.zeros(batch, t, device=device)

    def one() -> None:
        with autocast:
            loss = flow_loss(train_model, x, ctx, mask, tt, noise, cond).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(params, 1.0, device)
        opt.step()
        ema_update.update(0.999)

    for _ in range(warmup):
        one()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    step_s = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
    dist.destroy_process_group()
    return {"step_s": step_s, "ranks": world, "rank": rank, "params_M": count_params(model) / 1e6, "peak_gb": peak}


def write_data(work: Path, bucket: str, samples: int, vae_cfg: VAEConfig | None) -> tuple[Path, Path | None]:
    """Synthetic shards of `bucket` and an untrained VAE of `vae_cfg`, made once per work folder."""
    shards = synthetic_shards(work, bucket, samples)
    vae_path = None
    if vae_cfg is not None:
        vae_path = work / f"vae_{vae_cfg.channels}_{vae_cfg.spatial_compression}.safetensors"
        if not vae_path.exists():
            torch.manual_seed(0)
            save_vae(CausalVAE(vae_cfg), vae_path)
    return shards, vae_path


def real_loop(data: Path, vae_path: Path | None, size: str, batch: int, steps: int, out: Path,
              compiled: bool | None, tiny: bool, attention: str = "auto") -> dict:
    """`trainer.train.main` for 2 x `steps` steps, logging every `steps`: the first window warms up
    (and compiles), the second is the measurement."""
    overrides = [f"data.shards={data}", f"model.size={size}", f"data.batch_size={batch}",
                 f"train.steps={2 * steps}", f"train.log_every={steps}", f"train.ckpt_every={2 * steps}",
                 "data.shuffle_buffer=4", "optim.warmup_steps=1", f"train.attention_kernel={attention}"]
    if compiled is not None:
        overrides.append(f"train.compile={str(compiled).lower()}")
    if vae_path is not None:
        overrides += ["vae.kind=recap", f"vae.path={vae_path}"]
    cfg = load_job_config("dit", ROOT / "configs" / ("dit_tiny.yaml" if tiny else "dit.yaml"), overrides)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    main("dit", cfg, out)
    wall = time.perf_counter() - started
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"tokens_per_s": last["tokens_per_s"], "data_wait": last["data_wait"], "wall_s": wall,
            "peak_gb": last.get("max_memory_gb")}


def auto_batch(cfg: DiTConfig, latent: tuple[int, int, int, int], device: torch.device, vae_cfg: VAEConfig | None,
               bucket: Bucket, compiled: bool) -> int:
    limit = 0.85 * device_memory(device)
    for batch in (16, 8, 4, 2, 1):
        transient = encode_transient(vae_cfg, bucket.frames, bucket.height, bucket.width, batch, device.type == "cuda")
        est = dit_step(cfg, latent[0], TEXT_DIM, latent[1:], batch, 77, device.type == "cuda", False, transient,
                       compiled=compiled)
        if est.total <= limit:
            return batch
    return 1


def analytic_rows() -> list[dict]:
    """What B and L need per sample at the issue's buckets (default VAE: 16 channels, 4x time, 8x space)."""
    rows = []
    for size in ("B", "L"):
        cfg = DiTConfig(size=size)
        for name in ("256x256x33", "512x288x65"):
            b = Bucket.parse(name)
            latent = (16, 1 + (b.frames - 1) // 4, b.height // 8, b.width // 8)
            grid = (latent[1], latent[2] // 2, latent[3] // 2)
            est = dit_step(cfg, 16, TEXT_DIM, latent[1:], 1, 77, True, False)
            params = est.states // STATE_BYTES_PER_PARAM      # the bf16 weight copies are per step, not per sample
            rows.append({"config": f"{size} (analytic)", "bucket": name, "tokens_per_sample": math.prod(grid),
                         "tflop_per_sample": training_step_flops(dit_forward_flops(cfg, grid), 1) / 1e12,
                         "bf16_gb_per_sample": round((est.activations - 2 * params) / GB, 2),
                         "states_gb": round(est.states / GB, 2)})
    return rows


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--sizes", nargs="+", default=["B", "L"] if cuda else ["tiny"], help="DiT sizes")
    parser.add_argument("--buckets", nargs="+", default=["256x256x33", "512x288x65"] if cuda else ["32x32x9"],
                        help="WxHxF buckets")
    parser.add_argument("--modes", nargs="+", default=["step", "online", "cache", "loader"],
                        choices=["step", "online", "cache", "loader", "ddp", "fsdp", "sample"])
    parser.add_argument("--batch", type=int, default=0, help="per-step batch (0: on a GPU the largest that fits, else 4)")
    parser.add_argument("--steps", type=int, default=20 if cuda else 6, help="measured steps")
    parser.add_argument("--warmup", type=int, default=5 if cuda else 2,
                        help="model step: steps before measuring (compile); the loops warm up for --steps steps")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile the blocks (auto: on CUDA)")
    parser.add_argument("--attention-kernel", choices=["auto", *ATTENTION_KERNELS], default="auto",
                        help="SDPA backend tried first (train.attention_kernel); auto: torch's order")
    parser.add_argument("--peak-tflops", type=float, default=0, help="datasheet bf16 peak, if not known by name")
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    parser.add_argument("--work", help="folder for shards, caches and runs (default: a temporary one)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if cuda else "cpu")
    compiled = {"auto": None, "on": True, "off": False}[args.compile]
    use_compile = compiled if compiled is not None else cuda
    peak = args.peak_tflops * 1e12 or datasheet_peak(device)
    ceiling = matmul_ceiling(device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; matmul ceiling {ceiling / 1e12:.1f} TFLOP/s "
          f"({'bf16' if cuda else 'fp32'}); datasheet bf16 peak "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (--peak-tflops)'}", flush=True)
    vae_cfg = VAEConfig() if cuda else load_job_config("vae", ROOT / "configs" / "vae_tiny.yaml").model
    tmp = tempfile.TemporaryDirectory(prefix="bench_train_") if not args.work else None
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        cfg = DiTConfig(size=size)
        for name in args.buckets:
            b = Bucket.parse(name)
            s, tc = vae_cfg.spatial_compression, vae_cfg.temporal_compression
            latent = (vae_cfg.latent_channels, 1 + math.ceil((b.frames - 1) / tc), b.height // s, b.width // s)
            grid = (latent[1], latent[2] // cfg.patch_size[1], latent[3] // cfg.patch_size[2])
            batch = args.batch or (auto_batch(cfg, latent, device, vae_cfg, b, use_compile) if cuda else 4)
            flops = training_step_flops(dit_forward_flops(cfg, grid, text_tokens=TEXT_TOKENS,
                                                          in_channels=latent[0]), batch)
            tokens = batch * math.prod(grid)
            base = {"config": size, "bucket": name, "batch": batch, "tokens_per_sample": math.prod(grid),
                    "tflop_per_step": flops / 1e12, "attention_kernel": args.attention_kernel}

            def mfu(step_s: float) -> dict:
                return {"tokens_per_s": tokens / step_s, "samples_per_s": batch / step_s,
                        "mfu_datasheet": flops / step_s / peak if peak else None, "mfu_measured": flops / step_s / ceiling}

            if "step" in args.modes:
                r = model_step(cfg, latent, batch, device, args.steps, args.warmup, use_compile, args.attention_kernel)
                rows.append({**base, "mode": "step", **r, **mfu(r["step_s"])})
                print(json.dumps(rows[-1]), flush=True)
            if "sample" in args.modes:
                forward = dit_forward_flops(cfg, grid, text_tokens=TEXT_TOKENS, in_channels=latent[0]) * 2 * batch
                for precision in ("fp32", "bf16"):
                    r = sample_steps(cfg, latent, batch, device, args.steps, args.warmup, precision,
                                     args.attention_kernel)
                    rows.append({**base, "mode": f"sample {precision}", **r, "tokens_per_s": 2 * tokens / r["step_s"],
                                 "samples_per_s": batch / (30 * r["step_s"]),
                                 "mfu_datasheet": forward / r["step_s"] / peak if peak else None,
                                 "mfu_measured": forward / r["step_s"] / ceiling})
                    print(json.dumps(rows[-1]), flush=True)
            for parallel in [m for m in args.modes if m in ("ddp", "fsdp")]:
                r = parallel_step(cfg, latent, batch, args.steps, args.warmup, use_compile, parallel)
                if r["rank"] == 0:
                    rows.append({**base, "mode": f"step {parallel} x{r['ranks']}", **r, **mfu(r["step_s"])})
                    print(json.dumps(rows[-1]), flush=True)
            data = vae_path = None
            if {"online", "cache", "loader"} & set(args.modes):
                data, vae_path = write_data(work, name, 2 * batch, vae_cfg)
            if "online" in args.modes:
                r = real_loop(data, vae_path, size, batch, args.steps, work / f"run_{size}_{name}_online", compiled,
                              tiny=not cuda, attention=args.attention_kernel)
                rows.append({**base, "mode": "online", **r, **mfu(tokens / r["tokens_per_s"])})
                print(json.dumps(rows[-1]), flush=True)
            if "cache" in args.modes:
                cache = work / f"cache_{name}"
                if not (cache / "cache.json").exists():
                    build_cache(str(data), cache, AutoencoderSource("recap", str(vae_path)), "all-MiniLM-L6-v2", 77,
                                settings=CacheSettings(batch_size=batch))
                r = real_loop(cache, vae_path, size, batch, args.steps, work / f"run_{size}_{name}_cache", compiled,
                              tiny=not cuda, attention=args.attention_kernel)
                rows.append({**base, "mode": "cache", **r, **mfu(tokens / r["tokens_per_s"])})
                print(json.dumps(rows[-1]), flush=True)
            if "loader" in args.modes:
                for kind, folder in (("video", data), ("latents", work / f"cache_{name}")):
                    if folder.exists():
                        rows.append({**base, "mode": f"loader ({kind})", **loader_speed(folder, batch, 2 * args.steps)})
                        print(json.dumps(rows[-1]), flush=True)
    if int(os.environ.get("RANK", "0")):     # under torchrun: rank 0 reports
        return
    analytic = analytic_rows()
    table(rows, analytic)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "matmul_ceiling": ceiling, "datasheet_peak": peak,
                                               "rows": rows, "analytic": analytic}, indent=2))
    if tmp is not None:
        tmp.cleanup()


def table(rows: list[dict], analytic: list[dict]) -> None:
    def f(v, digits=1, scale=1.0, unit="") -> str:
        return "-" if v is None else f"{v * scale:,.{digits}f}{unit}"

    print("\n| config | bucket | batch | mode | tokens/s | samples/s | step split fwd/bwd/opt (ms) | data wait "
          "| peak GB | MFU datasheet | MFU measured |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["mode"].startswith("loader"):
            print(f"| {r['config']} | {r['bucket']} | {r['batch']} | {r['mode']} | - | {f(r['samples_per_s'])} | "
                  f"{f(r['cores_used'], 2)} cores, {f(r['samples_per_cpu_s'])} samples/CPU-s | - | - | - | - |")
            continue
        split = (f"{f(r['forward_s'], 0, 1e3)}/{f(r['backward_s'], 0, 1e3)}/{f(r['optimizer_s'], 0, 1e3)}"
                 if "forward_s" in r else "-")
        print(f"| {r['config']} | {r['bucket']} | {r['batch']} | {r['mode']} | {f(r['tokens_per_s'], 0)} | "
              f"{f(r['samples_per_s'], 2)} | {split} | {f(r.get('data_wait'), 0, 100, '%')} | "
              f"{f(r.get('peak_gb'))} | {f(r['mfu_datasheet'], 1, 100, '%')} | {f(r['mfu_measured'], 1, 100, '%')} |")
    print("\n| config | bucket | tokens/sample | TFLOP/sample/step | activations GB/sample (bf16) | states GB |")
    print("|---|---|---|---|---|---|")
    for r in analytic:
        print(f"| {r['config']} | {r['bucket']} | {r['tokens_per_sample']:,} | {r['tflop_per_sample']:.2f} | "
              f"{r['bf16_gb_per_sample']} | {r['states_gb']} |")


if __name__ == "__main__":
    main_bench()

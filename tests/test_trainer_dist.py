"""Training at cluster scale, on CPU with gloo and a tiny float32 DiT: FSDP2 matches one process,
context parallelism matches one rank holding the whole sample, sharded checkpoints resume on
other world sizes with their state intact, torchrun and Ray Train run the same loop (Ray resumes
after a worker is killed), and every sample is seen once per epoch across ranks.

The multi-process tests start real processes (torch.multiprocessing, torchrun, a local Ray) on
free ports; each cleans up what it started."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

from trainer.dit import DiT, DiTConfig, load_dit
from trainer.parallel import ContextParallel, ParallelError, check_heads, clip_grad_norm, make_layout, shard_model
from trainer.rf import flow_loss
from trainer.sharded import build_from_meta, is_sharded_checkpoint, load_sharded, load_sharded_weights, read_meta
from trainer.shards import BucketLoader, list_shards
from trainer.synthetic import write_synthetic_shards
from trainer.train import EMA, load_job_config, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CPU = torch.device("cpu")
TOL = {"rtol": 1e-4, "atol": 1e-5}
# weights after a few AdamW steps: where a gradient is near AdamW's eps, its last float bits
# (which a sharded reduction sums in another order) show in the update
WEIGHT_TOL = {"rtol": 1e-4, "atol": 5e-5}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Helpers: processes on free ports, runs through the real CLI
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., None], world: int, *args: Any) -> None:
    """Run fn(rank, world, *args) on `world` gloo processes; an assertion in any fails the test."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def recap_train(data: Path, out: Path, *options: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "dit", "--config", str(CONFIGS / "dit_tiny.yaml"),
           "--data", str(data), "--out", str(out), *options]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


COMMON = ("train.steps=4", "train.ckpt_every=2", "train.keep_last=3", "train.log_every=1", "data.batch_size=2",
          "flow.first_frame=0.3", "flow.caption_dropout=0.3", "model.pooled_text=true")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny_dit(attention: str = "full", seed: int = 0) -> DiT:
    """A tiny DiT with every weight random (the zero-initialised gates would hide most gradients)."""
    torch.manual_seed(seed)
    model = DiT(DiTConfig(size="tiny", attention=attention, pooled_text=True), in_channels=3, text_dim=8)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def batch(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x, noise = torch.randn(n, 3, 3, 8, 8, generator=g), torch.randn(n, 3, 3, 8, 8, generator=g)
    t, ctx = torch.rand(n, generator=g), torch.randn(n, 5, 8, generator=g)
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[0, 3:] = False
    cond = torch.zeros(n, 3)
    cond[1, 0] = 1.0
    return x, ctx, mask, t, noise, cond


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], **WEIGHT_TOL, msg=key)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist_shards")
    write_synthetic_shards(out, ["16x16x3", "32x16x1"], per_bucket=8, seed=0, samples_per_shard=4)
    return out


# ---------------------------------------------------------------------------------------------
# FSDP2 and context parallelism against one process
# ---------------------------------------------------------------------------------------------

def _fsdp_steps(rank: int, world: int) -> None:
    ref = tiny_dit()
    model, ema, ref_ema = copy.deepcopy(ref), copy.deepcopy(ref), copy.deepcopy(ref)
    model.grad_checkpointing, model.checkpoint_every = True, 2      # block 0 recomputed, block 1 not
    layout = make_layout(rank, world, CPU, 1, False, fsdp=True)
    for module in (model, ema):
        shard_model(module, module.blocks, layout.mesh, bf16=False, cpu_offload=False)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, foreach=True)
    per = 4 // world
    for step in range(3):
        x, ctx, mask, t, noise, cond = batch(4, seed=step)
        ref_loss = flow_loss(ref, x, ctx, mask, t, noise, cond).mean()
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        ref_opt.step()
        EMA(ref_ema, ref).update(0.9)

        mine = slice(rank * per, (rank + 1) * per)       # this rank's share of the global batch
        loss = flow_loss(model, x[mine], ctx[mine], mask[mine], t[mine], noise[mine], cond[mine]).mean()
        opt.zero_grad()
        loss.backward()
        norm = clip_grad_norm(list(model.parameters()), 0.5, CPU)
        opt.step()
        EMA(ema, model).update(0.9)
        total = loss.detach().clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total / world, ref_loss.detach(), **TOL)
        torch.testing.assert_close(norm, ref_norm, **TOL)
        assert ref_norm > 0.5          # clipping was active
    whole = StateDictOptions(full_state_dict=True)
    for sharded, reference in ((model, ref), (ema, ref_ema)):
        got, want = get_model_state_dict(sharded, options=whole), reference.state_dict()
        assert got.keys() == want.keys()
        assert_same_weights(got, want)


@pytest.mark.slow
def test_fsdp_matches_one_process_with_checkpointed_blocks():
    """2 FSDP ranks, each half of the batch, = one process on the whole batch: losses, clipped
    gradient norms, weights and EMA after 3 AdamW steps."""
    spawn(_fsdp_steps, 2)


def _context_parallel(rank: int, world: int) -> None:
    for attention in ("full", "factorized"):
        ref = tiny_dit(attention)
        model = copy.deepcopy(ref)
        layout = make_layout(rank, world, CPU, world, False, fsdp=False)
        assert (layout.dp, layout.cp_rank) == (1, rank)
        model.enable_context_parallel(ContextParallel(layout.cp_group))
        x, ctx, mask, t, noise, cond = batch(2, seed=7)
        t_frames = t[:, None] * (1 - cond)
        torch.testing.assert_close(model(x, t_frames, ctx, mask, cond), ref(x, t_frames, ctx, mask, cond), **TOL)
        flow_loss(model, x, ctx, mask, t, noise, cond).mean().backward()
        flow_loss(ref, x, ctx, mask, t, noise, cond).mean().backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            grad = p.grad.clone()
            dist.all_reduce(grad)      # the group's slices of the gradient add up to the whole
            torch.testing.assert_close(grad, q.grad, **TOL, msg=f"{attention}: {name}")
            assert q.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_context_parallel_matches_one_rank():
    """Each of 2 ranks holds half of every frame's tokens: the same prediction, and gradients
    that add up to those of one rank holding the whole sample (full and factorized attention)."""
    spawn(_context_parallel, 2)


def test_context_parallel_refuses_heads_it_cannot_split():
    check_heads(4, 2)
    with pytest.raises(ParallelError, match="4 heads, not a multiple of 3"):
        check_heads(4, 3)
    with pytest.raises(ParallelError, match="must divide the 2 process"):
        make_layout(0, 2, CPU, 3, False, fsdp=False)


# ---------------------------------------------------------------------------------------------
# The loop on several processes: FSDP vs DDP, context parallel vs one process, resharding
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_run(shards: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    recap_train(shards, out, *sets(*COMMON), "--launcher", "torchrun", "--nproc-per-node", "2")
    return out


@pytest.fixture(scope="module")
def fsdp_run(shards: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    proc = recap_train(shards, out, *sets(*COMMON, "train.parallel=fsdp"), "--launcher", "torchrun",
                       "--nproc-per-node", "2")
    assert "2 rank(s) (fsdp)" in proc.stderr
    return out


@pytest.mark.slow
def test_fsdp_run_matches_ddp_run(ddp_run: Path, fsdp_run: Path):
    assert [m["step"] for m in metrics(fsdp_run)] == [1, 2, 3, 4]
    for a, b in zip(metrics(fsdp_run), metrics(ddp_run)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    ckpt = fsdp_run / "checkpoints" / "step_00000004"
    assert is_sharded_checkpoint(ckpt) and not (ckpt / "model.safetensors").exists()
    weights, meta = load_sharded_weights(ckpt)
    assert meta["format"] == "recap.dit"
    for stem in ("model", "ema"):
        assert_same_weights(weights[stem], load_file(str(ddp_run / "checkpoints/step_00000004" / f"{stem}.safetensors")))


def _whole_state(model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    whole = StateDictOptions(full_state_dict=True)
    model_sd, optim_sd = get_state_dict(model, opt, options=whole)
    return {"model": model_sd, "ema": get_model_state_dict(ema, options=whole), "optim": optim_sd}


def _load_resharded(rank: int, world: int, ckpt: Path, want_path: Path) -> None:
    """Load a sharded checkpoint on `world` FSDP ranks; gathered whole, it is what was saved."""
    model = build_from_meta(read_meta(ckpt))
    ema = copy.deepcopy(model)
    if world > 1:
        layout = make_layout(rank, world, CPU, 1, False, fsdp=True)
        for module in (model, ema):
            shard_model(module, module.blocks, layout.mesh, bf16=False, cpu_offload=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0, foreach=True)
    load_sharded(ckpt, model, ema, opt)
    got = _whole_state(model, ema, opt)
    if rank == 0:
        want = torch.load(want_path, weights_only=True)
        for part in ("model", "ema"):
            assert_same_weights(got[part], want[part])
        for name, moments in want["optim"]["state"].items():
            for key, value in moments.items():
                torch.testing.assert_close(got["optim"]["state"][name][key], value, **TOL, msg=f"{name}.{key}")
        assert got["optim"]["param_groups"][0]["lr"] == want["optim"]["param_groups"][0]["lr"]


@pytest.mark.slow
def test_sharded_checkpoint_loads_on_other_world_sizes(ddp_run: Path, fsdp_run: Path, tmp_path: Path):
    """The 2-rank FSDP checkpoint of step 2, loaded on 1 process and on 4 FSDP ranks: weights,
    EMA, AdamW moments and learning rate all equal the 2-rank DDP run's at the same step."""
    ddp = ddp_run / "checkpoints" / "step_00000002"
    state = torch.load(ddp / "state.pt", weights_only=True)
    names = [n for n, _ in build_from_meta(read_meta(fsdp_run / "checkpoints/step_00000002")).named_parameters()]
    want = {"model": load_file(str(ddp / "model.safetensors")), "ema": load_file(str(ddp / "ema.safetensors")),
            "optim": {"state": {names[i]: s for i, s in state["optimizer"]["state"].items()},
                      "param_groups": state["optimizer"]["param_groups"]}}
    torch.save(want, tmp_path / "want.pt")
    ckpt = fsdp_run / "checkpoints" / "step_00000002"
    _load_resharded(0, 1, ckpt, tmp_path / "want.pt")
    spawn(_load_resharded, 4, ckpt, tmp_path / "want.pt")


@pytest.mark.slow
def test_sharded_run_resumes_on_one_and_on_four_processes(shards: Path, fsdp_run: Path, tmp_path: Path):
    more = [*COMMON[1:], "train.steps=6", "train.parallel=fsdp"]
    one, four = tmp_path / "one", tmp_path / "four"
    shutil.copytree(fsdp_run, one)
    shutil.copytree(fsdp_run, four)
    proc = recap_train(shards, one, *sets(*more), "--resume")
    assert "resuming on 1 data-parallel rank(s) from 2" in proc.stderr and "at step 4" in proc.stderr
    proc = recap_train(shards, four, *sets(*more, "data.batch_size=1"), "--resume", "--launcher", "torchrun",
                       "--nproc-per-node", "4", timeout=400)
    assert "resuming on 4 data-parallel rank(s) from 2" in proc.stderr
    for run in (one, four):
        steps = [m["step"] for m in metrics(run)]
        assert steps == [1, 2, 3, 4, 5, 6] and all(m["loss"] < 10 for m in metrics(run))
        assert (run / "checkpoints" / "step_00000006" / "dcp" / ".metadata").is_file()
        state = torch.load(run / "checkpoints" / "step_00000006" / "state.pt", weights_only=True)
        assert state["step"] == 6 and state["world_size"] == (1 if run == one else 4)


@pytest.mark.slow
def test_whole_model_checkpoint_resumes_sharded(shards: Path, ddp_run: Path, tmp_path: Path):
    """A DDP run (safetensors) continues as FSDP on the same 2 ranks: the optimizer state, keyed
    by index there, is mapped to names and sharded; the data streams go on where they were."""
    run = tmp_path / "to_fsdp"
    shutil.copytree(ddp_run, run)
    proc = recap_train(shards, run, *sets(*COMMON[1:], "train.steps=6", "train.parallel=fsdp"), "--resume",
                       "--launcher", "torchrun", "--nproc-per-node", "2")
    assert "at step 4" in proc.stderr and "data order changes" not in proc.stderr
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert is_sharded_checkpoint(run / "checkpoints" / "step_00000006")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_composes_with_compile_and_checkpointing(shards: Path, tmp_path: Path):
    """Compiled blocks inside FSDP units, every other block recomputed: the eager losses."""
    runs = {}
    for compiled in ("true", "false"):
        runs[compiled] = tmp_path / f"compile_{compiled}"
        recap_train(shards, runs[compiled], *sets(*COMMON, "train.steps=2", "train.parallel=fsdp",
                                                  f"train.compile={compiled}", "train.activation_checkpointing=true",
                                                  "train.activation_checkpointing_every=2", "data.buckets=[16x16x3]"),
                    "--launcher", "torchrun", "--nproc-per-node", "2", timeout=500)
    for a, b in zip(metrics(runs["true"]), metrics(runs["false"]), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.slow
def test_sharded_run_exports_weights_and_samples(fsdp_run: Path, tmp_path: Path):
    model, meta = load_dit(str(fsdp_run))                       # straight from the sharded checkpoint
    weights, _ = load_sharded_weights(fsdp_run / "checkpoints" / "step_00000004")
    assert_same_weights(model.state_dict(), weights["ema"])
    out = tmp_path / "weights"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "export-weights", str(fsdp_run),
                           "--out", str(out)], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ema.safetensors", "model.safetensors"]
    assert_same_weights(load_file(str(out / "model.safetensors")), weights["model"])
    from_file, meta_file = load_dit(str(out / "ema.safetensors"))
    assert meta_file == meta
    samples = tmp_path / "samples"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "sample", "--ckpt", str(fsdp_run), "--prompt", "a red blob",
                           "--frames", "3", "--size", "16x16", "--steps", "2", "--out", str(samples)],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (samples / "sample_000.mp4").is_file()


@pytest.mark.slow
def test_context_parallel_run_matches_one_process(shards: Path, tmp_path: Path):
    """The loop with each sample's tokens split over 2 ranks (DDP, one data-parallel rank) gives
    the losses and weights of one process holding whole samples."""
    single, split = tmp_path / "single", tmp_path / "split"
    cfg = load_job_config("dit", CONFIGS / "dit_tiny.yaml", [*COMMON, f"data.shards={shards}"])
    assert main("dit", cfg, single) == 0
    proc = recap_train(shards, split, *sets(*COMMON, "train.context_parallel=2"), "--launcher", "torchrun",
                       "--nproc-per-node", "2")
    assert "context parallel 2" in proc.stderr
    for a, b in zip(metrics(split), metrics(single), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for stem in ("model", "ema"):
        assert_same_weights(load_file(str(split / "checkpoints/step_00000004" / f"{stem}.safetensors")),
                            load_file(str(single / "checkpoints/step_00000004" / f"{stem}.safetensors")))


@pytest.mark.slow
def test_fsdp_times_context_parallel_mesh_matches_ddp(shards: Path, ddp_run: Path, tmp_path: Path):
    """4 processes as 2 data-parallel x 2 context-parallel ranks, FSDP over all 4, give the
    losses and weights of 2 DDP ranks (the same two data streams)."""
    run = tmp_path / "mesh"
    proc = recap_train(shards, run, *sets(*COMMON, "train.parallel=fsdp", "train.context_parallel=2"),
                       "--launcher", "torchrun", "--nproc-per-node", "4", timeout=400)
    assert "(fsdp x 2, context parallel 2)" in proc.stderr
    for a, b in zip(metrics(run), metrics(ddp_run), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    weights, _ = load_sharded_weights(run / "checkpoints" / "step_00000004")
    assert_same_weights(weights["model"], load_file(str(ddp_run / "checkpoints/step_00000004/model.safetensors")))


# ---------------------------------------------------------------------------------------------
# Ray Train
# ---------------------------------------------------------------------------------------------

def _ray_workers(root: int) -> list:
    try:
        kids = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in kids:
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_train_runs_two_workers_and_resumes_after_a_worker_is_killed(shards: Path, tmp_path: Path):
    run = tmp_path / "ray"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "dit", "--config", str(CONFIGS / "dit_tiny.yaml"),
           "--data", str(shards), "--out", str(run), "--launcher", "ray", "--num-workers", "2",
           "--gpus-per-worker", "0", "--max-restarts", "2",
           *sets(*COMMON, "train.steps=400", "train.ckpt_every=5", "train.log_every=5")]
    log = open(tmp_path / "ray.log", "w")
    driver = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed = None
    try:
        deadline = time.monotonic() + 400
        while killed is None and driver.poll() is None and time.monotonic() < deadline:
            if (run / "checkpoints" / "step_00000005").is_dir():
                workers = _ray_workers(driver.pid)
                if len(workers) == 2:
                    killed = workers[-1].pid
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        assert driver.wait(timeout=500) == 0, (tmp_path / "ray.log").read_text()[-5000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        log.close()
    output = (tmp_path / "ray.log").read_text()
    assert killed is not None, "the run ended before a worker could be killed"
    assert "2 rank(s) (ddp)" in output and "resumed from" in output, output[-5000:]
    steps = [m["step"] for m in metrics(run)]
    assert steps == list(range(5, 401, 5))           # a restart drops what came after its checkpoint
    state = torch.load(run / "checkpoints" / "step_00000400" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2


# ---------------------------------------------------------------------------------------------
# Data: each sample once per epoch across ranks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
def test_each_sample_is_seen_once_per_epoch_across_ranks(tmp_path: Path, world: int):
    """5 shards of 4 samples: split by shard (world <= 5) or by sample (6 ranks); either way the
    ranks' epochs are disjoint and together hold every sample once."""
    write_synthetic_shards(tmp_path, ["16x16x3"], per_bucket=20, seed=0, samples_per_shard=4)
    urls = list_shards(tmp_path)
    assert len(urls) == 5
    for epoch in (0, 1):
        seen: list[str] = []
        for rank in range(world):
            loader = BucketLoader(urls, batch_size=1, seed=3, rank=rank, world_size=world, shuffle_buffer=4)
            seen += [s.meta.key for _, group in loader._epoch_raw_batches(epoch) for s in group]
        assert len(seen) == len(set(seen)) == 20, (epoch, world)

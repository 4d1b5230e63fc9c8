"""The training loop end to end on CPU with tiny configs and synthetic shards: the VAE learns to
reconstruct, the DiT overfits, an interrupted run resumes exactly, 2-process DDP works, checkpoints
load with plain `safetensors` / `torch.load(weights_only=True)`, bad config keys fail early."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.shards import BucketLoader, SampleMeta, ShardWriter, list_shards
from trainer.synthetic import write_synthetic_shards
from trainer.train import load_job_config, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def train(kind: str, config: str, data: Path, out: Path, *overrides: str, resume: bool = False) -> None:
    cfg = load_job_config(kind, CONFIGS / config, [f"data.shards={data}", *overrides])
    assert main(kind, cfg, out, resume=resume) == 0


@pytest.fixture(scope="module")
def dit_shards(tmp_path_factory) -> Path:
    """Two buckets (one odd-length, one non-square) plus one corrupt sample."""
    out = tmp_path_factory.mktemp("dit_shards")
    write_synthetic_shards(out, ["16x16x3", "32x16x1"], per_bucket=4, seed=0, samples_per_shard=4)
    with ShardWriter(out, start_index=10) as writer:
        writer.write(SampleMeta(key="broken", caption="x", bucket="16x16x3", fps=8), b"\x00" * 100)
    return out


@pytest.mark.slow
def test_tiny_vae_reconstructs_its_training_shard(tmp_path: Path):
    data = tmp_path / "shards"
    write_synthetic_shards(data, ["16x16x5"], per_bucket=4, seed=0)
    run = tmp_path / "vae"
    train("vae", "vae_tiny.yaml", data, run, "train.steps=300", "train.log_every=50",
          "train.ckpt_every=300", "data.batch_size=4")
    from trainer.vae import load_vae, psnr
    ckpt = run / "checkpoints" / "step_00000300"
    vae = load_vae(ckpt / "model.safetensors")
    batch = next(iter(BucketLoader(list_shards(data), batch_size=4)))
    x = torch.from_numpy(batch.video).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    recon = vae.decode(vae.encode(x), frames=x.shape[2])
    assert psnr(recon, x) >= 30.0
    assert load_vae(run).latent_channels == 8        # a run directory loads its EMA weights


def test_tiny_dit_overfits_and_skips_the_corrupt_sample(dit_shards: Path, tmp_path: Path):
    run = tmp_path / "dit"
    train("dit", "dit_tiny.yaml", dit_shards, run, "train.steps=80", "train.log_every=1",
          "train.ckpt_every=80", "data.batch_size=4")
    curve = losses(run)
    assert len(curve) == 80
    assert np.mean(curve[-10:]) <= 0.5 * np.mean(curve[:10])
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped"] >= 1 and last["tokens_per_s"] > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())

    # what the sampler gets: the EMA model and everything needed to rebuild its conditioning
    from trainer.dit import load_dit
    from trainer.rf import sample
    from trainer.text import TextEncoder
    model, meta = load_dit(str(run))
    text = TextEncoder(json.loads(meta["text"])["encoder"])
    ctx, mask = text(["a red blob moving left"])
    null, null_mask = text([""])
    noise = torch.randn(1, int(meta["in_channels"]), 3, 16, 16, generator=torch.Generator().manual_seed(0))
    video = sample(model, noise, ctx, mask, null, null_mask, steps=4, cfg_scale=4.0, solver="heun")
    assert video.shape == noise.shape and torch.isfinite(video).all()


def test_interrupted_run_resumes_exactly(dit_shards: Path, tmp_path: Path):
    common = ("train.steps=6", "train.ckpt_every=3", "train.log_every=1", "train.keep_last=1",
              "data.batch_size=2", "flow.first_frame=0.3", "flow.caption_dropout=0.3")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train("dit", "dit_tiny.yaml", dit_shards, whole, *common)
    train("dit", "dit_tiny.yaml", dit_shards, parts, *common, "train.stop_at=3")
    assert len(losses(parts)) == 3
    with open(parts / "metrics.jsonl", "a") as f:   # a crash after step 3's checkpoint logged step 4
        f.write(json.dumps({"step": 4, "loss": 99.0}) + "\n")
    train("dit", "dit_tiny.yaml", dit_shards, parts, *common, resume=True)
    assert losses(parts) == losses(whole)

    # checkpoints: plain safetensors for weights, weights-only torch.load for the rest, last N kept
    from safetensors import safe_open
    from safetensors.torch import load_file
    ckpts = sorted((parts / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step_00000006"]
    a, b = load_file(str(ckpts[0] / "model.safetensors")), load_file(str(whole / "checkpoints/step_00000006/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(ckpts[0] / "ema.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "recap.dit" and json.loads(meta["config"])["size"] == "tiny"
    state = torch.load(ckpts[0] / "state.pt", weights_only=True)
    assert state["step"] == 6 and state["world_size"] == 1 and "optimizer" in state
    assert state["ranks"][0]["loader"]["batches"] >= 1


@pytest.mark.slow
def test_two_process_ddp_run(dit_shards: Path, tmp_path: Path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "trainer.cli", "dit", "--config", str(CONFIGS / "dit_tiny.yaml"), "--data", str(dit_shards),
           "--out", str(run), "--set", "train.steps=3", "--set", "train.log_every=1", "--set", "data.batch_size=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stderr
    state = torch.load(run / "checkpoints" / "step_00000003" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"]["generator"], state["ranks"][1]["rng"]["generator"])
    assert len(losses(run)) == 3


def test_bad_config_fails_at_start_naming_the_key(dit_shards: Path, tmp_path: Path, capsys):
    from trainer import cli
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for override, key in (("model.depht=3", "model.depht"), ("optim.lr=fast", "optim.lr"),
                          ("model.attention=sparse", "model.attention")):
        args = parser.parse_args(["dit", "--config", str(CONFIGS / "dit_tiny.yaml"), "--data", str(dit_shards),
                                  "--out", str(tmp_path / "bad"), "--set", override])
        assert cli.run(args) == 2
        assert key in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

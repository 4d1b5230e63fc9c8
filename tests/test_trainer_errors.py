"""What a user gets when a training run cannot go as asked: one clear line and exit 2 (no data,
too few samples, an `--out` that holds a run, a bucket too big for the machine, a missing model),
the memory estimate printed at start and what it is based on, and a resume that survives a damaged
latest checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from trainer import cli
from trainer.dit import DiT, DiTConfig
from trainer.memory import COMPILED_SAVED_SHARE, dit_step, vae_step
from trainer.rf import flow_loss
from trainer.synthetic import write_synthetic_shards
from trainer.train import load_job_config, main
from trainer.vae import CausalVAE, VAEConfig

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "dit_tiny.yaml")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("err_shards")
    write_synthetic_shards(out, ["16x16x3"], per_bucket=6, seed=0, samples_per_shard=3)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recap train")
    cli.add_arguments(p)
    return p


def run(*argv: str) -> int:
    return cli.run(parser().parse_args(list(argv)))


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_data_is_required_and_must_exist(shards: Path, tmp_path: Path, capsys):
    # required by vae, dit and cache (export-weights takes a run instead): one line, exit 2
    assert run("dit", "--out", str(tmp_path / "run")) == 2
    assert one_error_line(capsys).endswith("recap train dit needs --data and --out")
    assert run("dit", "--config", TINY, "--data", "nope", "--out", str(tmp_path / "run")) == 2
    assert one_error_line(capsys).endswith("no shards at nope")
    assert run("dit", "--config", TINY, "--data", str(tmp_path), "--out", str(tmp_path / "run")) == 2
    assert "no shards at" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_fewer_samples_than_a_batch_says_to_lower_the_batch_size(shards: Path, tmp_path: Path, capsys):
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(tmp_path / "run"),
               "--set", "data.batch_size=8") == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "6 samples" in err and "lower data.batch_size" in err and "at most 6" in err


def test_an_out_that_holds_a_run_needs_resume(shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    common = ("dit", "--config", TINY, "--data", str(shards), "--out", str(out), "--set", "train.steps=1")
    assert run(*common) == 0
    capsys.readouterr()
    assert run(*common) == 2
    line = one_error_line(capsys)
    assert "already has checkpoints" in line and "--resume" in line
    assert run(*common, "--resume") == 0


@pytest.mark.parametrize("kind", ["dit", "vae", "cache"])
def test_an_out_that_is_a_file_is_one_error_line(shards: Path, tmp_path: Path, capsys, kind: str):
    """It was a FileExistsError traceback from mkdir, after the shards were listed and the models built."""
    taken = tmp_path / "taken"
    taken.write_text("notes")
    assert run(kind, "--data", str(shards), "--out", str(taken), "--set", "train.steps=1") == 2
    assert "is a file, not a folder" in one_error_line(capsys) and taken.read_text() == "notes"


def test_memory_estimate_is_printed_and_a_bucket_too_big_is_refused(shards: Path, tmp_path: Path, capsys):
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(tmp_path / "ok"),
               "--set", "train.steps=1") == 0
    err = capsys.readouterr().err
    assert "bucket 16x16x3: 192 tokens per sample, batch 4: ~" in err and "GB per step" in err
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(tmp_path / "big"),
               "--set", "train.max_memory_gb=0.001") == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert "bucket 16x16x3 needs ~" in line and "data.bucket_batch_sizes.16x16x3" in line
    # what issue 14 hit: the tiny DiT in pixel space on a 640x352x65 bucket needs far more than a machine has
    big = dit_step(DiTConfig(size="tiny"), 3, 384, (65, 352, 640), 4, 77, bf16=False, checkpointing=False)
    assert big.tokens_per_sample == 65 * 176 * 320 and big.total > 100 * 1024 ** 3


def saved_for_backward(fn) -> int:
    seen = {}

    def pack(t):
        base = t if t._base is None else t._base
        if not isinstance(base, torch.nn.Parameter):
            seen[id(base)] = base.numel() * base.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_estimate_matches_what_autograd_saves(attention: str, checkpointing: bool):
    """The estimate runs the model on the meta device; here the real model runs on the CPU."""
    torch.manual_seed(0)
    cfg = DiTConfig(size="tiny", attention=attention)
    model = DiT(cfg, 4, 24).train()
    x, ctx, mask = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 7, 24), torch.ones(2, 7, dtype=torch.bool)

    def saved() -> int:
        return saved_for_backward(lambda: flow_loss(model, x, ctx, mask, torch.rand(2), torch.randn_like(x),
                                                    torch.zeros(2, 3)))

    real = saved()
    if checkpointing:   # block inputs kept, and one block's activations while it is recomputed
        model.grad_checkpointing = True
        real = saved() + real // cfg.depth
    estimate = dit_step(cfg, 4, 24, (3, 8, 8), 2, 7, bf16=False, checkpointing=checkpointing).activations
    assert estimate == pytest.approx(real, rel=0.05)
    vcfg = VAEConfig(channels=16, channel_mults=[1, 2], num_res_blocks=1, latent_channels=8,
                     spatial_compression=2, temporal_compression=2, norm="none")
    vae, video = CausalVAE(vcfg).train(), torch.rand(2, 3, 5, 16, 16)
    real = saved_for_backward(lambda: vae(video))
    assert vae_step(vcfg, 5, 16, 16, 2, bf16=False, cpu=True).activations == pytest.approx(real, rel=0.1)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def damage(ckpt: Path, kind: str) -> None:
    if kind == "truncated":
        path = ckpt / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "bad_header":
        path = ckpt / "ema.safetensors"
        data = bytearray(path.read_bytes())
        data[8:16] = b"{garbage"
        path.write_bytes(bytes(data))
    else:
        (ckpt / "state.pt").write_bytes(b"this is not a checkpoint")


def test_compiled_blocks_are_estimated_to_keep_less():
    """Compiled bf16 blocks keep COMPILED_SAVED_SHARE of the eager saved tensors (measured on an
    H100); the bf16 weight copies, fp32 runs and activation checkpointing are counted as before."""
    cfg, shape = DiTConfig(size="tiny"), (3, 8, 8)
    weights = 2 * sum(p.numel() for p in DiT(cfg, 4, 24).parameters())

    def acts(**kw) -> int:
        return dit_step(cfg, 4, 24, shape, 2, 7, **kw).activations

    eager, compiled = acts(bf16=True, checkpointing=False), acts(bf16=True, checkpointing=False, compiled=True)
    assert compiled - weights == int((eager - weights) * COMPILED_SAVED_SHARE)
    assert acts(bf16=False, checkpointing=False, compiled=True) == acts(bf16=False, checkpointing=False)
    assert acts(bf16=True, checkpointing=True, compiled=True) == acts(bf16=True, checkpointing=True)


@pytest.mark.parametrize("kind", ["truncated", "bad_header", "garbage_state"])
def test_resume_falls_back_from_a_damaged_latest_checkpoint(shards: Path, tmp_path: Path, capsys, kind: str):
    common = ["train.steps=4", "train.ckpt_every=2", "train.keep_last=2", "train.log_every=1", "data.batch_size=2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main("dit", load_job_config("dit", TINY, [f"data.shards={shards}", *common]), whole) == 0
    assert main("dit", load_job_config("dit", TINY, [f"data.shards={shards}", *common]), parts) == 0
    damage(parts / "checkpoints" / "step_00000004", kind)
    capsys.readouterr()
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(parts), "--resume",
               *[a for c in common for a in ("--set", c)]) == 0
    err = capsys.readouterr().err
    assert "step_00000004 is damaged" in err and "resumed from" in err and "step_00000002" in err
    assert losses(parts) == losses(whole)              # steps 3 and 4 redone exactly
    assert (parts / "checkpoints" / "step_00000004.damaged").is_dir()
    assert sorted(p.name for p in (parts / "checkpoints").iterdir() if p.name.startswith("step")) == \
        ["step_00000002", "step_00000004", "step_00000004.damaged"]


def test_no_loadable_checkpoint_names_the_bad_file(shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(out), "--set", "train.steps=1") == 0
    damage(out / "checkpoints" / "step_00000001", "garbage_state")
    capsys.readouterr()
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(out), "--resume") == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert "no checkpoint" in line and "state.pt" in line and "Traceback" not in line


def test_resume_with_another_model_or_kind_is_refused_in_one_line(shards: Path, tmp_path: Path, capsys):
    """A changed model size, or a VAE run resumed as a DiT, failed in load_state_dict: a traceback
    with a page of tensor names."""
    dit, vae = tmp_path / "dit", tmp_path / "vae"
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(dit), "--set", "train.steps=1") == 0
    assert run("vae", "--config", str(REPO / "configs" / "vae_tiny.yaml"), "--data", str(shards), "--out", str(vae),
               "--set", "train.steps=1", "--set", "data.batch_size=2") == 0
    capsys.readouterr()
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(dit), "--resume",
               "--set", "train.steps=2", "--set", "model.depth=3") == 2
    line = one_error_line(capsys)
    assert "model.depth: 2 -> 3" in line and "new --out" in line
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(vae), "--resume",
               "--set", "train.steps=2") == 2
    assert "checkpoint of a VAE run and this run trains a DiT" in one_error_line(capsys)
    # a setting that leaves the weights' shapes alone still resumes
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(dit), "--resume",
               "--set", "train.steps=2", "--set", "model.rope_theta=500") == 0


def test_resume_takes_the_optimizer_settings_of_its_config(shards: Path, tmp_path: Path, capsys):
    """`--resume --set optim.lr=...` went on with the checkpoint's lr (the optimizer's and the
    schedule's state brought it back) while config.json said the new one."""
    out = tmp_path / "run"
    common = ("dit", "--config", TINY, "--data", str(shards), "--out", str(out), "--set", "data.batch_size=2",
              "--set", "optim.warmup_steps=0", "--set", "optim.min_lr_ratio=1", "--set", "train.log_every=1")
    assert run(*common, "--set", "train.steps=1") == 0
    capsys.readouterr()
    assert run(*common, "--set", "train.steps=2", "--set", "optim.lr=0.25", "--set", "optim.weight_decay=0.5",
               "--resume") == 0
    err = capsys.readouterr().err
    assert "optim.lr 0.001 -> 0.25" in err and "optim.weight_decay 0.0 -> 0.5" in err
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [1e-3, 0.25]
    state = torch.load(out / "checkpoints" / "step_00000002" / "state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.5


def test_a_dit_without_its_vae_says_how_to_make_one(shards: Path, tmp_path: Path, capsys):
    """configs/dit.yaml names runs/vae: a first `recap train dit` said only "No such file or directory: runs/vae"."""
    vae = tmp_path / "no_vae"
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(tmp_path / "run"),
               "--set", "vae.kind=recap", "--set", f"vae.path={vae}") == 2
    line = one_error_line(capsys)
    assert f"VAE {vae} not found" in line and f"recap train vae --data SHARDS --out {vae}" in line
    assert "vae.kind=pixel" in line


@pytest.mark.parametrize("launcher", ["torchrun", "ray"])
def test_a_launcher_checks_what_its_ranks_would_refuse_before_starting_them(shards: Path, tmp_path: Path, capsys,
                                                                             launcher: str):
    """Under torchrun a missing VAE was said by the rank, again at each of --max-restarts restarts, then
    by torchrun as a ChildFailedError traceback: now once, before anything is started."""
    out = tmp_path / "run"
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(out), "--launcher", launcher,
               "--set", "vae.kind=recap", "--set", f"vae.path={tmp_path / 'no_vae'}") == 2
    assert "no_vae not found" in one_error_line(capsys)
    assert run("dit", "--config", TINY, "--data", str(tmp_path / "none"), "--out", str(out), "--launcher", launcher) == 2
    assert one_error_line(capsys).endswith(f"no shards at {tmp_path / 'none'}")
    assert not out.exists()


def test_a_missing_local_text_encoder_is_named_without_a_download_hint(shards: Path, tmp_path: Path, capsys):
    assert run("dit", "--config", TINY, "--data", str(shards), "--out", str(tmp_path / "run"),
               "--set", f"text.encoder={tmp_path / 'no_such_model'}") == 2
    line = one_error_line(capsys)
    assert "no_such_model does not exist" in line and "hf download" not in line


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", r"optim: lr >= 0"),
    ("optim.lr=.nan", r"optim\.lr: expected a finite number"),
    ("data.shuffle_buffer=-1", r"data: shuffle_buffer and prefetch must be >= 0"),
    ("vae.path=runs/vae", r"vae\.path is set but vae\.kind is 'pixel'"),     # was silently ignored
])
def test_training_values_are_checked_at_load(override: str, message: str):
    from trainer.train import load_job_config
    from trainer.typedconfig import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_job_config("dit", TINY, [override])

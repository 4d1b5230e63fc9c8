"""The latent cache (trainer/cache.py, `recap train cache`): a cached batch gives the DiT exactly
the loss the same batch gives when encoded online, training from the cache loads no autoencoder
or text encoder and follows the same curve, a cache made by another VAE or text encoder is
refused, an interrupted build resumes, and several ranks (torchrun) or Ray actors split the shards
between them."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from trainer import cli
from trainer.cache import MANIFEST, CacheError, CacheSettings, build_cache
from trainer.runtime import Generators
from trainer.shards import BucketLoader, SkipCounter, iter_raw_samples, list_shards
from trainer.synthetic import write_synthetic_shards
from trainer.tasks import DiTTask, TrainSetupError
from trainer.train import load_job_config, main
from trainer.vae import AutoencoderSource, CausalVAE, save_vae

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Shards of two buckets, two different tiny VAEs (untrained: the cache only has to agree
    with online encoding), and a cache of the shards made by the first through the CLI."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cache")
    write_synthetic_shards(root / "shards", ["16x16x5", "16x16x1"], per_bucket=4, seed=0, samples_per_shard=3)
    model = load_job_config("vae", CONFIGS / "vae_tiny.yaml").model
    for name, seed in (("vae_a", 0), ("vae_b", 1)):
        torch.manual_seed(seed)
        vae = CausalVAE(model)
        with torch.no_grad():     # away from the identity-like init, so the two encode differently
            for p in vae.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        save_vae(vae, root / f"{name}.safetensors")
    assert run_cli("cache", "--config", str(CONFIGS / "dit_tiny.yaml"), "--data", str(root / "shards"),
                   "--vae", str(root / "vae_a.safetensors"), "--batch-size", "3", "--out", str(root / "cache")) == 0
    return {"root": root, "shards": root / "shards", "cache": root / "cache",
            "vae_a": root / "vae_a.safetensors", "vae_b": root / "vae_b.safetensors"}


def dit_config(data: Path, vae: Path, *overrides: str):
    return load_job_config("dit", CONFIGS / "dit_tiny.yaml",
                           [f"data.shards={data}", "vae.kind=recap", f"vae.path={vae}", *overrides])


def first_batches(data: Path, n: int = 2) -> list:
    loader = BucketLoader(list_shards(data), batch_size=2, seed=0, shuffle_buffer=1)
    return [b for _, b in zip(range(n), loader)]


def test_cached_batches_give_the_online_loss(world):
    overrides = ("flow.caption_dropout=0.5", "flow.first_frame=0.5")
    online = DiTTask(dit_config(world["shards"], world["vae_a"], *overrides), CPU, list_shards(world["shards"]))
    cached = DiTTask(dit_config(world["cache"], world["vae_a"], *overrides), CPU, list_shards(world["cache"]))
    assert cached.vae is None and cached.text is None        # nothing to encode with: all cached
    assert online.vae is not None and cached.geometry == online.geometry
    torch.manual_seed(3)
    for p in online.model.parameters():                       # leave the zero init: the loss sees everything
        torch.nn.init.normal_(p, std=0.05)
    cached.model.load_state_dict(online.model.state_dict())
    for batch_o, batch_c in zip(first_batches(world["shards"]), first_batches(world["cache"])):
        assert [m.key for m in batch_o.metas] == [m.key for m in batch_c.metas]
        assert batch_c.video is None and batch_c.latents is not None
        for seed in range(4):                                 # with and without dropped captions
            loss_o = online.loss(online.model, batch_o, Generators.seeded(seed, CPU), 0)[0]
            loss_c = cached.loss(cached.model, batch_c, Generators.seeded(seed, CPU), 0)[0]
            assert torch.equal(loss_o, loss_c)
    assert {b.bucket.name for b in first_batches(world["cache"], 4)} == {"16x16x5", "16x16x1"}


def test_training_from_the_cache_follows_the_online_curve(world, tmp_path: Path, capsys):
    curves = []
    for name in ("shards", "cache"):
        cfg = dit_config(world[name], world["vae_a"], "train.steps=4", "train.log_every=1", "data.batch_size=2")
        assert main("dit", cfg, tmp_path / name) == 0
        curves.append([json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert curves[0] == curves[1] and len(curves[0]) == 4
    assert "a latent cache" in capsys.readouterr().err
    meta = json.loads((world["cache"] / MANIFEST).read_text())
    assert meta["complete"] and meta["samples"] == 8 and meta["buckets"] == {"16x16x1": 4, "16x16x5": 4}


def test_a_cache_of_another_vae_or_text_encoder_is_refused(world, tmp_path: Path, capsys):
    with pytest.raises(TrainSetupError, match="another autoencoder") as e:
        main("dit", dit_config(world["cache"], world["vae_b"]), tmp_path / "run")
    made = json.loads((world["cache"] / MANIFEST).read_text())["vae"]
    assert made["fingerprint"] in str(e.value) and str(world["vae_a"]) in str(e.value)
    with pytest.raises(TrainSetupError, match="another text encoder"):
        main("dit", dit_config(world["cache"], world["vae_a"], "text.max_length=16"), tmp_path / "run")
    # the CLI: one line, exit 2, nothing written
    assert run_cli("dit", "--config", str(CONFIGS / "dit_tiny.yaml"), "--data", str(world["cache"]), "--out",
                   str(tmp_path / "run"), "--set", "vae.kind=recap", "--set", f"vae.path={world['vae_b']}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another autoencoder" in err[0]
    assert not (tmp_path / "run").exists()
    # a mean-only cache cannot give posterior samples
    with pytest.raises(TrainSetupError, match="log-variance"):
        main("dit", dit_config(world["cache"], world["vae_a"], "data.sample_posterior=true"), tmp_path / "run")


def test_posterior_samples_agree_cached_and_online(world, tmp_path: Path):
    cache = tmp_path / "cache_logvar"
    build_cache(str(world["shards"]), cache, AutoencoderSource("recap", str(world["vae_a"])), "all-MiniLM-L6-v2",
                77, settings=CacheSettings(latents="mean_logvar"))
    online = DiTTask(dit_config(world["shards"], world["vae_a"], "data.sample_posterior=true"), CPU,
                     list_shards(world["shards"]))
    cached = DiTTask(dit_config(cache, world["vae_a"], "data.sample_posterior=true"), CPU, list_shards(cache))
    batch_o, batch_c = first_batches(world["shards"], 2)[1], first_batches(cache, 2)[1]
    assert batch_c.logvar is not None
    means = torch.from_numpy(batch_c.latents)
    for seed in range(2):
        a = online.latents(batch_o, Generators.seeded(seed, CPU).device)
        b = cached.latents(batch_c, Generators.seeded(seed, CPU).device)
        assert torch.equal(a, b) and not torch.equal(a, means)     # sampled, not the mean


def test_an_interrupted_build_resumes_and_a_foreign_one_is_refused(world, tmp_path: Path):
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    manifest = json.loads((cache / MANIFEST).read_text())
    (cache / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(TrainSetupError, match="unfinished"):
        main("dit", dit_config(cache, world["vae_a"]), tmp_path / "run")
    kept = cache / "train-000000.tar"
    kept_stat = kept.stat()
    (cache / "train-000001.tar").unlink()            # the shard the interrupted build was writing
    source = AutoencoderSource("recap", str(world["vae_a"]))
    assert build_cache(str(world["shards"]), cache, source, "all-MiniLM-L6-v2", 77,
                       settings=CacheSettings(batch_size=3)) == 0
    assert kept.stat().st_mtime_ns == kept_stat.st_mtime_ns and (cache / "train-000001.tar").exists()
    again = json.loads((cache / MANIFEST).read_text())
    assert again["complete"] and again["shards"] == manifest["shards"] and again["buckets"] == manifest["buckets"]
    with pytest.raises(CacheError, match="another autoencoder"):
        build_cache(str(world["shards"]), cache, AutoencoderSource("recap", str(world["vae_b"])),
                    "all-MiniLM-L6-v2", 77)
    with pytest.raises(CacheError, match="already a latent cache"):
        build_cache(str(cache), tmp_path / "again", source, "all-MiniLM-L6-v2", 77)


@pytest.mark.slow
def test_ranks_cache_disjoint_slices(world, tmp_path: Path):
    out = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "trainer.cli", "cache", "--config", str(CONFIGS / "dit_tiny.yaml"), "--data", str(world["shards"]),
           "--vae", str(world["vae_a"]), "--batch-size", "3", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0: 2 of 3 shards" in proc.stderr and "rank 1: 1 of 3 shards" in proc.stderr
    one, two = (json.loads((d / MANIFEST).read_text()) for d in (world["cache"], out))
    assert two["complete"] and two["shards"] == one["shards"] and two["buckets"] == one["buckets"]
    for name in one["shards"]:                            # the same samples, whichever rank made them
        keys = [[s.meta.key for s in iter_raw_samples(str(d / name), SkipCounter())] for d in (world["cache"], out)]
        assert keys[0] == keys[1]


def shard_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.slow
def test_ray_actors_make_the_one_process_cache_and_resume(world, tmp_path: Path, capsys):
    """`--launcher ray` on a local Ray, 2 CPU workers: the same bytes as the one-process cache,
    every shard; a rerun after an interruption encodes only the shard that is missing."""
    out = tmp_path / "cache"
    args = ("cache", "--config", str(CONFIGS / "dit_tiny.yaml"), "--data", str(world["shards"]), "--vae",
            str(world["vae_a"]), "--batch-size", "3", "--out", str(out), "--launcher", "ray", "--num-workers", "2",
            "--gpus-per-worker", "0")
    assert run_cli(*args) == 0
    assert "2 Ray worker(s): 3 of 3 shards encoded" in capsys.readouterr().err
    one, two = (json.loads((d / MANIFEST).read_text()) for d in (world["cache"], out))
    assert two["complete"] and {k: v for k, v in two.items() if k != "made_from"} == \
        {k: v for k, v in one.items() if k != "made_from"}
    assert (out / "null_text.safetensors").read_bytes() == (world["cache"] / "null_text.safetensors").read_bytes()
    for name in one["shards"]:
        assert shard_members(out / name) == shard_members(world["cache"] / name), name
    # an interrupted build: one shard missing, the manifest unfinished
    kept = out / "train-000000.tar"
    kept_stat = kept.stat()
    (out / "train-000001.tar").unlink()
    (out / MANIFEST).write_text(json.dumps({**two, "complete": False}))
    assert run_cli(*args) == 0
    assert "1 of 3 shards encoded (2 already there)" in capsys.readouterr().err
    assert kept.stat().st_mtime_ns == kept_stat.st_mtime_ns
    assert shard_members(out / "train-000001.tar") == shard_members(world["cache"] / "train-000001.tar")
    assert json.loads((out / MANIFEST).read_text()) == two


def test_ray_cache_refuses_what_it_cannot_do_before_starting_ray(world, tmp_path: Path, capsys):
    base = ("cache", "--config", str(CONFIGS / "dit_tiny.yaml"), "--launcher", "ray", "--gpus-per-worker", "0")
    assert run_cli(*base, "--data", str(world["shards"]), "--vae", str(tmp_path / "missing.safetensors"),
                   "--out", str(tmp_path / "a")) == 2
    assert run_cli(*base, "--data", str(world["cache"]), "--vae", str(world["vae_a"]), "--out", str(tmp_path / "b")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "missing.safetensors" in err[0] and "already a latent cache" in err[1]
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_uncached_shards_beside_a_cache_are_encoded_online(world):
    """`--data CACHE,SHARDS`: the autoencoder and text encoder are loaded for the shards that are
    not cached; a batch is all cached or all video, and both kinds train."""
    data = f"{world['cache']},{world['shards']}"
    task = DiTTask(dit_config(data, world["vae_a"]), CPU, list_shards(data))
    assert task.vae is not None and task.text is not None
    kinds = set()
    loader = BucketLoader(list_shards(data), batch_size=2, seed=0, shuffle_buffer=4)
    for _, batch in zip(range(12), loader):
        assert (batch.video is None) != (batch.latents is None)
        kinds.add(batch.latents is not None)
        loss = task.loss(task.model, batch, Generators.seeded(0, CPU), 0)[0]
        assert torch.isfinite(loss)
    assert kinds == {True, False}

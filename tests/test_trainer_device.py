"""What a GPU run needs of the trainer, checked on whatever device the test has: random draws
never mix a generator of one device with a tensor of another, norms keep the autocast dtype (so
fused kernels dispatch), a training step reads nothing back to the host between logging steps,
and the compiled model trains like the eager one."""

from __future__ import annotations

import ast
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.dit import DiT, DiTConfig
from trainer.runtime import Generators, randn
from trainer.shards import BucketLoader, list_shards
from trainer.synthetic import write_synthetic_shards
from trainer.tasks import DiTTask, VAETask
from trainer.train import EMA, Window, load_job_config, main
from trainer.vae import CausalVAE, ChannelRMSNorm, VAEConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TINY_VAE = VAEConfig(channels=16, channel_mults=[1, 2], num_res_blocks=1, latent_channels=4, spatial_compression=2,
                     temporal_compression=2, norm="rms")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_no_random_draw_names_a_device_beside_its_generator():
    """`torch.randn(..., generator=g, device=d)` fails on CUDA when g lives elsewhere (a CPU
    generator, a CUDA tensor): draws go through trainer.runtime, which draws on g's device."""
    bad = []
    for path in sorted((REPO / "trainer").rglob("*.py")):
        if path.name == "runtime.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and {"generator", "device"} <= {k.arg for k in node.keywords}:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not bad, bad


@pytest.mark.parametrize("gen_device", sorted({"cpu", DEVICE.type}))
def test_vae_posterior_noise_comes_from_the_generator_wherever_it_lives(gen_device: str):
    torch.manual_seed(0)
    vae = CausalVAE(TINY_VAE).to(DEVICE)
    x = torch.rand(2, 3, 5, 8, 8, device=DEVICE) * 2 - 1
    recon, mean, logvar = vae(x, generator=torch.Generator(gen_device).manual_seed(5))
    assert recon.device == DEVICE and recon.shape == x.shape
    # the noise is the generator's own stream, moved to the model's device
    noise = torch.randn(mean.shape, generator=torch.Generator(gen_device).manual_seed(5), device=gen_device)
    expected = vae.decode_raw(mean + torch.exp(0.5 * logvar) * noise.to(DEVICE))[:, :, :5]
    assert torch.allclose(recon, expected, atol=1e-6)
    again, _, _ = vae(x, generator=torch.Generator(gen_device).manual_seed(5))
    assert torch.equal(recon, again)


def test_generators_save_and_restore_both_streams():
    gens = Generators.seeded(3, DEVICE)
    randn((4,), gens.device, DEVICE)
    state = gens.state()
    ahead = (torch.rand(3, generator=gens.host), randn((4,), gens.device, DEVICE))
    other = Generators.seeded(99, DEVICE)
    other.load_state(state, fallback_seed=0)
    assert torch.equal(torch.rand(3, generator=other.host), ahead[0])
    assert torch.equal(randn((4,), other.device, DEVICE), ahead[1])


def test_norms_keep_the_autocast_dtype():
    """Under bf16 autocast the QK RMSNorm gets bf16 q/k and a float32 weight; PyTorch then warns
    "Mismatch dtype between input and weight" and skips its fused kernel."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(size="tiny"), in_channels=4, text_dim=8).to(DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            out = model(torch.randn(1, 4, 2, 4, 4, device=DEVICE), torch.rand(1, 2, device=DEVICE),
                        torch.randn(1, 3, 8, device=DEVICE), torch.ones(1, 3, dtype=torch.bool, device=DEVICE))
    assert out.dtype == torch.bfloat16
    norm = ChannelRMSNorm(4).to(DEVICE)
    assert norm(torch.randn(1, 4, 1, 2, 2, device=DEVICE, dtype=torch.bfloat16)).dtype == torch.bfloat16


class ReadBacks(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (`.item()`, `float(t)`, `if t:` ...)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("device_shards")
    write_synthetic_shards(out, ["16x16x5"], per_bucket=4, seed=0)
    return out


def test_a_training_step_reads_nothing_back(shards: Path):
    """Loss, timestep bins, EMA: all stay on the device between logging steps (on a GPU each
    read-back would stall the host until the step is done)."""
    batch = next(iter(BucketLoader(list_shards(shards), batch_size=4)))
    dit_cfg = load_job_config("dit", CONFIGS / "dit_tiny.yaml", ["flow.first_frame=0.5", "flow.first_k=0.4"])
    vae_cfg = load_job_config("vae", CONFIGS / "vae_tiny.yaml")
    for task in (DiTTask(dit_cfg, DEVICE, list_shards(shards)), VAETask(vae_cfg, DEVICE, list_shards(shards))):
        gens, window = Generators.seeded(0, DEVICE), Window(DEVICE)
        ema = EMA(CausalVAE(vae_cfg.model).to(DEVICE) if isinstance(task, VAETask) else
                  DiT(dit_cfg.model, task.geometry.latent_channels, task.text_dim).to(DEVICE), task.model)
        task.loss(task.model, batch, gens, 0)          # the first sight of a caption runs its encoder
        with ReadBacks() as reads:
            for step in range(1, 3):
                loss, per_sample, t, _ = task.loss(task.model, batch, gens, step)
                loss.backward()
                window.add(loss, per_sample, t, task.tokens(batch))
                ema.update(0.9)
        assert reads.count == 0, type(task).__name__
    assert window.n == 2 and float(window.loss) > 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")   # inside torch
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler (inductor builds its kernels)")
@pytest.mark.parametrize("kind", ["dit", "vae"])
def test_compiled_model_trains_like_the_eager_one(shards: Path, tmp_path: Path, kind: str):
    """`train.compile` (on by default on CUDA): the same losses as eager, within float tolerance.
    On CPU the first step compiles for ~40 s on 2 cores, hence slow. The VAE compiles as a whole
    (compiling its nn.Sequential parts made every block its own frame, recompiled per shape until
    Dynamo gave up, and on CPU a dynamic-shape compile of them failed)."""
    curves = []
    for flag in ("false", "true"):
        cfg = load_job_config(kind, CONFIGS / f"{kind}_tiny.yaml",
                              [f"data.shards={shards}", "train.steps=3", "train.log_every=1", "data.batch_size=2",
                               f"train.compile={flag}"])
        assert main(kind, cfg, tmp_path / flag) == 0
        curves.append([json.loads(line)["loss"] for line in (tmp_path / flag / "metrics.jsonl").read_text().splitlines()])
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)

"""The sampler (trainer/sample.py, `recap sample`) on a tiny VAE + DiT trained here on CPU:
image-to-video keeps the given first frame (through the VAE round trip), extension keeps the given
frames and continues them, long videos come window by window, and seeds reproduce."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from trainer.checkpoint import CheckpointError
from trainer.dit import count_params, load_dit
from trainer.sample import Sampler, SampleSettings, read_image, read_video, write_png
from trainer.shards import Bucket, encode_mp4
from trainer.synthetic import synthetic_video, write_synthetic_shards
from trainer.train import load_job_config, main

REPO = Path(__file__).resolve().parents[1]
SIZE, FRAMES = 16, 5
PROMPTS = ["a red blob moving left", "a blue blob moving up", "a green blob moving right"]


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def clip(seed: int, colour: str = "red", direction: str = "left", frames: int = FRAMES) -> np.ndarray:
    """A clip like the training ones (trainer/synthetic.py), unseen in training."""
    return synthetic_video(np.random.default_rng(seed), Bucket(SIZE, SIZE, frames), colour, direction)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny VAE (2x space and time) trained to reconstruct synthetic clips, and a DiT trained a
    few steps on its latents: enough for every code path, not for prompt following (that is
    tests/test_e2e_prompt_following.py)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sampler")
    write_synthetic_shards(root / "shards", [f"{SIZE}x{SIZE}x{FRAMES}"], per_bucket=8, seed=0)
    common = [f"data.shards={root / 'shards'}", "train.log_every=50", "data.batch_size=4"]
    vae_cfg = load_job_config("vae", REPO / "configs" / "vae_tiny.yaml",
                              [*common, "train.steps=300", "train.ckpt_every=300"])
    assert main("vae", vae_cfg, root / "vae") == 0
    dit_cfg = load_job_config("dit", REPO / "configs" / "dit_tiny.yaml",
                              [*common, "train.steps=10", "train.ckpt_every=10", "vae.kind=recap",
                               f"vae.path={root / 'vae'}"])
    assert main("dit", dit_cfg, root / "dit") == 0
    return root / "dit"


@pytest.fixture(scope="module")
def sampler(run: Path) -> Sampler:
    return Sampler(run, device="cpu")


def settings(**kw) -> SampleSettings:
    base = dict(frames=FRAMES, width=SIZE, height=SIZE, steps=4, cfg_scale=3.0, seed=7)
    return SampleSettings(**(base | kw))


def test_image_to_video_reproduces_the_first_frame(sampler: Sampler):
    image = clip(100, "yellow", "down")[0]
    videos = sampler.generate(PROMPTS[:2], settings(frames=9), image=image)
    assert videos.shape == (2, 9, SIZE, SIZE, 3)
    for video in videos:
        assert psnr_uint8(video[0], image) >= 25.0          # the VAE round trip of the given frame
    assert psnr_uint8(videos[0, 0], videos[1, 0]) >= 40.0    # whatever the prompt and the noise
    # the rest is generated: a text-to-video sample with the same seed starts elsewhere
    free = sampler.generate(PROMPTS[:1], settings(frames=9))
    assert psnr_uint8(free[0, 0], image) < psnr_uint8(videos[0, 0], image)


def test_bf16_precision_runs_the_model_in_bf16_and_samples_alike(run: Path, sampler: Sampler):
    """--precision bf16 (auto's choice on a GPU) autocasts text, DiT and VAE; the samples match fp32's."""
    fast = Sampler(run, device="cpu", precision="bf16", attention_kernel="math")
    assert fast.bf16 and not sampler.bf16                       # auto on the CPU: fp32
    linear = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Linear))
    seen: list[torch.dtype] = []
    hook = linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        low = fast.generate(PROMPTS[:2], settings())
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    full = sampler.generate(PROMPTS[:2], settings())
    assert low.shape == full.shape and psnr_uint8(low, full) >= 40.0     # ~59 dB here
    with pytest.raises(ValueError, match="attention kernel"):
        Sampler(run, device="cpu", attention_kernel="fastest")


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "L", "RGBA"])
def test_first_frames_of_any_pixel_format_keep_their_brightness(tmp_path: Path, mode: str):
    """A 16-bit grayscale PNG came in nearly all white: convert("RGB") clips Pillow's integer
    modes at 255 instead of scaling them."""
    ramp = np.linspace(0, 255, 64).round().astype(np.uint8).reshape(8, 8)
    if mode.startswith("I"):     # 16-bit samples, 0..65535
        wide = (ramp.astype(">u2" if mode == "I;16B" else "<u2") * 257).tobytes()
        image = Image.frombytes("I;16B" if mode == "I;16B" else "I;16", (8, 8), wide)
        image = image.convert("I") if mode == "I" else image
    else:
        image = Image.fromarray(np.repeat(ramp[..., None], 3, axis=-1)).convert(mode)
    path = tmp_path / ("first.tiff" if mode == "I" else "first.png")    # PNG cannot hold 32-bit "I"
    image.save(path)
    frame = read_image(path)
    assert frame.shape == (8, 8, 3) and frame.dtype == np.uint8
    assert (frame[..., 0] == ramp).all()


def test_extension_keeps_the_given_frames_and_continues_them(sampler: Sampler):
    context = clip(101, "green", "right")
    videos = sampler.generate(PROMPTS[:1], settings(frames=11, window=5, overlap=3), video=context)
    assert videos.shape == (1, 11, SIZE, SIZE, 3)
    assert np.abs(videos[0, :FRAMES].astype(int) - context.astype(int)).max() <= 1   # given frames kept
    # the new frames continue the last given ones: the first new frame is nearer to the last given
    # frame than a text-to-video sample of the same seed is
    fresh = sampler.generate(PROMPTS[:1], settings(frames=5))
    assert psnr_uint8(videos[0, FRAMES], context[-1]) > psnr_uint8(fresh[0, 0], context[-1])


def test_long_videos_come_window_by_window(sampler: Sampler):
    long = sampler.generate(PROMPTS[:1], settings(frames=13, window=5))
    assert long.shape == (1, 13, SIZE, SIZE, 3)
    one_window = sampler.generate(PROMPTS[:1], settings(frames=5))
    assert np.array_equal(long[0, :5], one_window[0])        # the first window is the plain sample
    with pytest.raises(ValueError, match="cannot carry"):
        sampler.generate(PROMPTS[:1], settings(frames=13, window=5, overlap=5))


def test_seeds_reproduce_and_do_not_depend_on_the_batch(sampler: Sampler):
    a = sampler.generate(PROMPTS, settings())
    b = sampler.generate(PROMPTS, settings())
    assert np.array_equal(a, b)
    alone = sampler.generate(PROMPTS[2:], settings(), first_index=2)   # sample 2 uses seed 7 + 2
    assert np.abs(alone[0].astype(int) - a[2].astype(int)).max() <= 2
    other = sampler.generate(PROMPTS, settings(seed=8))
    assert not np.array_equal(a, other)
    assert np.abs(other[0].astype(int) - a[0].astype(int)).max() > 2


def cli(*argv: str) -> int:
    from trainer import sample_cli
    parser = argparse.ArgumentParser()
    sample_cli.add_arguments(parser)
    return sample_cli.run(parser.parse_args(list(argv)))


def test_cli_writes_videos_contact_sheet_and_records(run: Path, tmp_path: Path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPTS[0]}\n# a comment\n{json.dumps({'caption': PROMPTS[1]})}\n")
    first = tmp_path / "first.png"
    write_png(first, clip(102)[0])
    out = tmp_path / "out"
    assert cli("--ckpt", str(run), "--prompts", str(prompts), "--frames", "9", "--size", f"{SIZE}x{SIZE}",
               "--steps", "3", "--solver", "heun", "--seed", "5", "--image", str(first), "--batch-size", "1",
               "--out", str(out)) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records] == [(PROMPTS[0], 5), (PROMPTS[1], 6)]
    assert {r["precision"] for r in records} == {"fp32"}          # auto on the CPU
    for r in records:
        frames, _ = read_video(out / r["file"])
        assert frames.shape == (9, SIZE, SIZE, 3)
    from PIL import Image
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size[1] > sheet.size[0] / 9 and sheet.size[0] > 9 * SIZE    # 2 rows of 9 frames
    assert "2 videos of 9 frames" in capsys.readouterr().out

    assert cli("--ckpt", str(run), "--prompt", "x", "--size", "15x16", "--out", str(tmp_path / "bad")) == 2
    assert "multiples of" in capsys.readouterr().err
    context = tmp_path / "context.mp4"
    context.write_bytes(encode_mp4(clip(103), 8.0))
    assert cli("--ckpt", str(run), "--prompt", "x", "--video", str(context), "--frames", "5",
               "--size", f"{SIZE}x{SIZE}", "--out", str(tmp_path / "bad")) == 2
    assert "must exceed" in capsys.readouterr().err
    assert cli("--ckpt", str(tmp_path / "no-run"), "--prompt", "x", "--out", str(tmp_path / "bad")) == 2
    assert "no-run: no such run folder or checkpoint file" in capsys.readouterr().err   # was: "No such file ..."
    assert cli("--ckpt", str(run), "--prompt", "x", "--fps", "0", "--out", str(tmp_path / "bad")) == 2
    assert "--fps must be between 0 and 1000, got 0" in capsys.readouterr().err   # was: after all the sampling
    assert not (tmp_path / "bad").exists()


def test_cli_says_in_one_line_when_the_checkpoint_or_the_out_is_not_what_it_needs(tmp_path: Path, capsys):
    """A --ckpt file that is not safetensors (or is truncated) and an --out that is a file were
    tracebacks (SafetensorError, FileExistsError)."""
    whole = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64)}, str(whole), metadata={"format": "recap.dit"})
    (tmp_path / "cut.safetensors").write_bytes(whole.read_bytes()[:40])
    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    for name in ("cut.safetensors", "picture.png"):
        assert cli("--ckpt", str(tmp_path / name), "--prompt", "x", "--out", str(tmp_path / "out")) == 2
        err = capsys.readouterr().err
        assert f"{name} cannot be read as a checkpoint" in err and "Traceback" not in err
    (tmp_path / "taken").write_text("not a folder")
    assert cli("--ckpt", str(whole), "--prompt", "x", "--out", str(tmp_path / "taken")) == 2
    assert "--out " in capsys.readouterr().err and (tmp_path / "taken").read_text() == "not a folder"


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(run: Path, tmp_path: Path, capsys):
    """A run whose newest EMA file was cut off (a crash while copying it) could not be sampled at
    all, while `recap train --resume` falls back to the checkpoint before: sampling now does too."""
    copy = tmp_path / "dit"
    shutil.copytree(run, copy)
    newest = sorted((copy / "checkpoints").iterdir())[-1]
    step = int(newest.name.removeprefix("step_"))
    damaged = shutil.copytree(newest, newest.with_name(f"step_{step + 1:08d}"))
    (damaged / "ema.safetensors").write_bytes((newest / "ema.safetensors").read_bytes()[:100])
    model, meta = load_dit(str(copy))
    assert meta["format"] == "recap.dit" and count_params(model) > 0
    assert f"step_{step + 1:08d}/ema.safetensors cannot be read" in capsys.readouterr().err
    shutil.rmtree(newest)                 # nothing readable left: one error naming each file
    with pytest.raises(CheckpointError, match="no checkpoint of .* can be read"):
        load_dit(str(copy))


def test_cli_refuses_to_overwrite_samples_and_shows_progress(run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    common = ("--ckpt", str(run), "--prompt", PROMPTS[0], "--frames", "13", "--window", "5", "--size",
              f"{SIZE}x{SIZE}", "--steps", "3", "--out", str(out))
    assert cli(*common) == 0
    err = capsys.readouterr().err
    assert "sample" in err and "9/9" in err       # 3 windows (5 + 4 + 4 frames) x 3 steps, one bar
    first = (out / "sample_000.mp4").read_bytes()
    assert cli(*common, "--seed", "9") == 2       # a second run into the same folder
    assert "already holds samples" in capsys.readouterr().err
    assert (out / "sample_000.mp4").read_bytes() == first
    assert cli(*common, "--seed", "9", "--overwrite") == 0
    assert (out / "sample_000.mp4").read_bytes() != first


def test_plan_counts_the_windows_generate_samples(sampler: Sampler):
    calls = []
    for kw, given in ((dict(frames=13, window=5), 0), (dict(frames=5), 0), (dict(frames=11, window=5, overlap=3), 5)):
        calls.clear()
        video = clip(104) if given else None
        sampler.generate(PROMPTS[:1], settings(steps=2, **kw), video=video, progress=lambda: calls.append(1))
        assert len(calls) == 2 * sampler.plan(settings(**kw), given)[2]

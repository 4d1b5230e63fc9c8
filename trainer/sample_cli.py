"""Sample videos from a trained DiT: from text, from a first frame, or continuing a video.

  recap sample --ckpt RUN --prompt "a red square moving left on a dark background" --out OUT
  recap sample --ckpt RUN --prompts prompts.txt --frames 9 --size 32x32 --seed 7 --out OUT
  recap sample --ckpt RUN --prompt "..." --image first.png --out OUT          # image-to-video
  recap sample --ckpt RUN --prompt "..." --video start.mp4 --frames 33 --out OUT  # extension
  recap sample --ckpt RUN --prompt "..." --frames 65 --window 17 --out OUT      # long video

RUN is a `recap train dit` run directory (its last checkpoint) or a checkpoint's .safetensors file;
the EMA weights are used unless --weights model. The text encoder, autoencoder and timestep shift
are the ones the run was trained with. --prompts reads one prompt per line (or JSON lines with a
"prompt" or "caption" field). Sample i uses seed S + i, so the same command gives the same videos.
Videos longer than --window are made window by window, each continuing the last --overlap frames
of the one before. --cfg 1 turns guidance off; --cfg 0 samples without the prompt at all.

Writes OUT/sample_NNN.mp4 (H.264 through PyAV), OUT/contact_sheet.png (a row of frames per
sample) and OUT/samples.jsonl (prompt, seed, file and settings of each sample); an OUT that holds
samples already is refused unless --overwrite. A progress bar counts the denoising steps of every
window, with the time left.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from trainer.progress import add_no_progress_option, progress_bar
from trainer.runtime import ATTENTION_KERNELS
from trainer.sample import (
    Sampler,
    SampleSettings,
    contact_sheet,
    read_image,
    read_prompts,
    read_video,
    write_mp4,
    write_png,
)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="RUN", help="DiT run directory or checkpoint .safetensors")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="one prompt")
    prompt.add_argument("--prompts", metavar="FILE", help="one prompt per line (or JSON lines)")
    p.add_argument("--negative-prompt", default="", metavar="TEXT", help="what guidance steers away from")
    p.add_argument("--frames", type=int, default=17, metavar="N", help="frames per video (default 17)")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="WxH", help="frame size (default 256x256)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the MP4 files (default 8)")
    p.add_argument("--steps", type=int, default=30, help="ODE steps (default 30)")
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    p.add_argument("--solver", choices=["euler", "heun"], default="euler",
                   help="ODE solver: euler (one model call per step) or heun (two, more accurate)")
    p.add_argument("--shift", type=float, metavar="S", help="timestep shift (default: the training shift)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sample i uses seed S + i (default 0)")
    p.add_argument("--image", metavar="FIRST.png", help="first frame: image-to-video")
    p.add_argument("--video", metavar="CONTEXT.mp4", help="video to extend (its frames open the output)")
    p.add_argument("--window", type=int, default=0, metavar="N",
                   help="frames per model call; longer videos are extended window by window (default: --frames)")
    p.add_argument("--overlap", type=int, default=0, metavar="N",
                   help="frames each window continues from (default: half a window)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="samples per model call (default 8)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default ema)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto (default): bf16 autocast on a GPU with bf16, fp32 on the CPU")
    p.add_argument("--attention-kernel", choices=["auto", *ATTENTION_KERNELS], default="auto",
                   help="SDPA backend tried first, as train.attention_kernel (default auto: torch's order)")
    p.add_argument("--out", required=True, metavar="OUT", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the samples of an earlier run in OUT")
    add_no_progress_option(p)


def run(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"recap sample: error: {message}", file=sys.stderr)
        return 2

    if args.image and args.video:
        return fail("--image and --video exclude each other")
    if args.frames < 1 or args.steps < 1 or args.batch_size < 1:
        return fail("--frames, --steps and --batch-size must be >= 1")
    if not 0 < args.fps < 1000:    # checked now: the MP4s are written after all the sampling
        return fail(f"--fps must be between 0 and 1000, got {args.fps:g}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():    # said now, not as a traceback once the models are loaded
        return fail(f"--out {out} is a file, not a folder; choose another --out")
    earlier = sorted(out.glob("sample_*.mp4")) + [p for p in (out / "samples.jsonl",) if p.exists()]
    if earlier and not args.overwrite:
        return fail(f"{out} already holds samples ({earlier[0].name}{' and more' if len(earlier) > 1 else ''}): "
                    "choose another --out, or pass --overwrite to replace them")
    try:
        prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
        image = read_image(args.image) if args.image else None
        video = read_video(args.video)[0] if args.video else None
        sampler = Sampler(args.ckpt, weights=args.weights, device=args.device, precision=args.precision,
                          attention_kernel=args.attention_kernel)
    except (OSError, ValueError) as e:
        return fail(str(e))
    width, height = args.size
    settings = SampleSettings(frames=args.frames, width=width, height=height, steps=args.steps,
                              cfg_scale=args.cfg, solver=args.solver, shift=args.shift, seed=args.seed,
                              negative_prompt=args.negative_prompt, window=args.window, overlap=args.overlap)
    try:
        sampler.check_size(height, width)
        windows = sampler.plan(settings, len(video) if video is not None else 0)[2]
    except ValueError as e:
        return fail(str(e))
    for old in earlier:
        old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    videos = []
    records = []
    batches = -(-len(prompts) // args.batch_size)
    # every ODE step of every window of every batch, with the time left (tqdm's estimate)
    bar = progress_bar(total=batches * windows * args.steps, desc="sample", unit="step")
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first:first + args.batch_size]
        bar.set_postfix(videos=f"{first}/{len(prompts)}", windows=windows)
        try:
            frames = sampler.generate(batch, settings, image=image, video=video, first_index=first,
                                      progress=lambda: bar.update(1))
        except ValueError as e:
            bar.close()
            return fail(str(e))
        for i, (prompt, clip) in enumerate(zip(batch, frames)):
            index = first + i
            name = f"sample_{index:03d}.mp4"
            write_mp4(out / name, clip, args.fps)
            records.append({"file": name, "prompt": prompt, "seed": args.seed + index, "frames": int(clip.shape[0]),
                            "size": f"{width}x{height}", "steps": args.steps, "cfg": args.cfg, "solver": args.solver,
                            "negative_prompt": args.negative_prompt, "image": args.image, "video": args.video,
                            "ckpt": str(args.ckpt), "weights": args.weights,
                            "precision": "bf16" if sampler.bf16 else "fp32"})
            videos.append(clip)
    bar.close()
    write_png(out / "contact_sheet.png", contact_sheet(np.stack(videos)))
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(videos)} videos of {settings.frames} frames at {width}x{height} in {out} "
          f"({time.perf_counter() - started:.1f} s); contact sheet {out / 'contact_sheet.png'}")
    return 0


if __name__ == "__main__":   # python -m trainer.sample_cli ... (the same as `recap sample ...`)
    _parser = argparse.ArgumentParser(prog="trainer.sample_cli", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))

#!/usr/bin/env bash
# End to end through the real CLIs on a CUDA machine, on shards built from `recap samples`:
#   samples -> ingest -> caption (signals) -> export -> train vae -> train cache -> train dit (from the
#   cache, and online; then resumed) -> sample in every mode -> bench/train.py (a short table).
# Exits non-zero at the first failure, naming the step.
#
#   bash bench/gpu_smoke.sh [WORK]            # default WORK: a fresh temporary folder
#   TINY=1 bash bench/gpu_smoke.sh            # tiny configs and buckets: the same plumbing, on CPU too
#   BENCH_ARGS="--sizes B L" bash bench/gpu_smoke.sh   # the full bench table at the end (long)
#   SHARDS=DIR bash bench/gpu_smoke.sh        # start from exported shards (skips samples .. export)
#   STEPS=10 BENCH=0 bash bench/gpu_smoke.sh  # fewer training steps; no bench table (bench/gpu_check.sh)
#   SHARDS_ONLY=1 bash bench/gpu_smoke.sh WORK  # samples .. export only, on any machine: WORK/shards for
#                                             # a device without the ingest packages (bench/gpu_kit.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
RECAP=("$PY" -m pipeline.cli)
WORK="${1:-$(mktemp -d -t recap_gpu_smoke.XXXXXX)}"
mkdir -p "$WORK"
STEP=setup
trap 'echo "gpu_smoke: FAILED at step: $STEP (work folder $WORK)" >&2' ERR

step() { STEP="$1"; echo; echo "=== $1"; }

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  "$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
elif [ "${TINY:-0}" != 1 ] && [ "${SHARDS_ONLY:-0}" != 1 ]; then
  echo "gpu_smoke: no CUDA device here; TINY=1 runs the same steps with tiny configs on the CPU" >&2
  exit 2
fi

if [ "${TINY:-0}" = 1 ]; then
  VAE_CONFIG=configs/vae_tiny.yaml; DIT_CONFIG=configs/dit_tiny.yaml; AREA=3072; STEPS=${STEPS:-6}; BATCH=2
  DIT_SET=(--set vae.kind=recap --set "vae.path=$WORK/vae")
  BENCH_DEFAULT=(--sizes tiny --buckets 32x32x9 --steps 4)
else
  VAE_CONFIG=configs/vae.yaml; DIT_CONFIG=configs/dit.yaml; AREA=36864; STEPS=${STEPS:-30}; BATCH=2
  DIT_SET=(--set "vae.path=$WORK/vae" --set model.size=S)
  BENCH_DEFAULT=(--sizes S --buckets 256x256x33 --steps 10)
fi
# the VAE run and the DiT run from the cache compile (the default on CUDA); the online and resumed runs
# do not: on an H100 compiling took ~70 s of each DiT run, time a smoke spends better on the other steps
EAGER=(--set train.compile=false)
COMMON=(--set "train.steps=$STEPS" --set "train.ckpt_every=$STEPS" --set train.log_every=2
        --set "data.batch_size=$BATCH" --set optim.warmup_steps=2)

if [ -n "${SHARDS:-}" ]; then
  ln -sfn "$(cd "$SHARDS" && pwd)" "$WORK/shards"
else
step "samples"
"${RECAP[@]}" samples "$WORK/samples" --seed 0

step "ingest"
"${RECAP[@]}" ingest "$WORK/samples" --out "$WORK/lib"
# a smoke needs samples more than it needs the best ones: let short and static clips through
"${RECAP[@]}" filter "$WORK/lib" --set filters.duration.min=1.2 --set filters.motion.min=0 \
  --set filters.frozen.max=1.0 --set filters.camera.reject=[]

step "caption"
"${RECAP[@]}" caption "$WORK/lib" --backend signals

step "export"
cat > "$WORK/buckets.yaml" <<EOF
fps: 8
frames: [9]
resolutions:
  smoke: $AREA
aspect_ratios: ["3:4", "1:1", "4:3", "16:9"]
multiple: 16
max_crop_share: 0.5
upscale_tolerance: 0.05
EOF
"${RECAP[@]}" export "$WORK/lib" --out "$WORK/shards" --buckets "$WORK/buckets.yaml" --val-fraction 0
fi
if [ "${SHARDS_ONLY:-0}" = 1 ]; then
  echo "gpu_smoke: shards written to $WORK/shards (SHARDS_ONLY)"
  exit 0
fi
BUCKET="$("$PY" - "$WORK/shards" <<'EOF'
import sys
from collections import Counter
from trainer.shards import SkipCounter, iter_raw_samples, list_shards
counts = Counter(s.meta.bucket for url in list_shards(sys.argv[1]) for s in iter_raw_samples(url, SkipCounter()))
print(counts.most_common(1)[0][0])
EOF
)"
SIZE="${BUCKET%x*}"
echo "largest bucket: $BUCKET"
BUCKETS=(--set "data.buckets=[$BUCKET]")

step "loader: pinned batches copy to the GPU"
"$PY" - "$WORK/shards" <<'PYEOF'
import sys, torch
from trainer.shards import BucketLoader, list_shards
from trainer.tasks import host_tensor
if torch.cuda.is_available():   # page-locked memory needs CUDA: a CPU-only (TINY) run skips this step
    loader = BucketLoader(list_shards(sys.argv[1]), batch_size=2, seed=0, shuffle_buffer=4, pin_memory=True)
    for _, batch in zip(range(3), loader):
        pinned = host_tensor(batch, "video")
        assert pinned.is_pinned() and pinned.data_ptr() == batch.video.ctypes.data
        assert torch.equal(pinned.to("cuda", non_blocking=True).cpu(), torch.from_numpy(batch.video))
    print("pinned batches: ok")
PYEOF

step "train vae"
"${RECAP[@]}" train vae --config "$VAE_CONFIG" --data "$WORK/shards" --out "$WORK/vae" "${COMMON[@]}" "${BUCKETS[@]}"

step "train cache"
"${RECAP[@]}" train cache --config "$DIT_CONFIG" --data "$WORK/shards" --vae "$WORK/vae" --out "$WORK/cache" \
  --latents mean_logvar

step "train dit (from the cache)"
"${RECAP[@]}" train dit --config "$DIT_CONFIG" --data "$WORK/cache" --out "$WORK/dit_cache" "${DIT_SET[@]}" \
  "${COMMON[@]}" "${BUCKETS[@]}"

step "train dit (online)"
"${RECAP[@]}" train dit --config "$DIT_CONFIG" --data "$WORK/shards" --out "$WORK/dit_online" "${DIT_SET[@]}" \
  "${COMMON[@]}" "${BUCKETS[@]}" --set data.sample_posterior=true "${EAGER[@]}"

step "train dit (resumed, from the cache)"
"${RECAP[@]}" train dit --config "$DIT_CONFIG" --data "$WORK/cache" --out "$WORK/dit_cache" "${DIT_SET[@]}" \
  "${COMMON[@]}" "${BUCKETS[@]}" --set "train.steps=$((STEPS + 4))" --resume "${EAGER[@]}"

step "check the runs"
"$PY" - "$WORK" "$STEPS" <<'EOF'
import json, math, sys
from pathlib import Path
work, steps = Path(sys.argv[1]), int(sys.argv[2])
for run, last in (("vae", steps), ("dit_online", steps), ("dit_cache", steps + 4)):
    records = [json.loads(line) for line in (work / run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == last, (run, records[-1])
    assert all(math.isfinite(r["loss"]) for r in records), run
    print(f"{run}: {len(records)} records, last loss {records[-1]['loss']:.4f}, "
          f"{records[-1]['tokens_per_s']:,.0f} tokens/s, peak {records[-1].get('max_memory_gb', 0):.1f} GB")
EOF

step "prepare sampling inputs"
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
from trainer.sample import write_png
from trainer.shards import SkipCounter, decode_mp4, iter_raw_samples, list_shards
work = Path(sys.argv[1])
sample = next(iter_raw_samples(list_shards(work / "shards")[0], SkipCounter()))
(work / "context.mp4").write_bytes(sample.mp4)
write_png(work / "first.png", decode_mp4(sample.mp4, max_frames=1)[0])
(work / "prompts.txt").write_text(sample.meta.caption + "\nA static shot of a bright scene.\n")
EOF

S=(--ckpt "$WORK/dit_cache" --size "${SIZE}" --steps 6 --seed 0)
step "sample: text to video";   "${RECAP[@]}" sample "${S[@]}" --prompts "$WORK/prompts.txt" --frames 9 --out "$WORK/s_t2v"
step "sample: heun, no guidance"; "${RECAP[@]}" sample "${S[@]}" --prompts "$WORK/prompts.txt" --frames 9 --solver heun --cfg 1 --out "$WORK/s_heun"
step "sample: unconditional";   "${RECAP[@]}" sample "${S[@]}" --prompt "anything" --frames 9 --cfg 0 --out "$WORK/s_uncond"
step "sample: image to video";  "${RECAP[@]}" sample "${S[@]}" --prompts "$WORK/prompts.txt" --image "$WORK/first.png" --frames 9 --out "$WORK/s_i2v"
step "sample: extension";       "${RECAP[@]}" sample "${S[@]}" --prompts "$WORK/prompts.txt" --video "$WORK/context.mp4" --frames 17 --out "$WORK/s_ext"
step "sample: long (windows)";  "${RECAP[@]}" sample "${S[@]}" --prompts "$WORK/prompts.txt" --frames 25 --window 9 --out "$WORK/s_long"
step "sample: online-trained model, model weights"
"${RECAP[@]}" sample --ckpt "$WORK/dit_online" --size "${SIZE}" --steps 4 --prompt "a bright scene" --frames 9 \
  --weights model --out "$WORK/s_online"
for out in s_t2v s_heun s_uncond s_i2v s_ext s_long s_online; do
  test -s "$WORK/$out/contact_sheet.png" && test -s "$WORK/$out/sample_000.mp4"
done

if [ "${BENCH:-1}" != 0 ]; then
step "bench"
# shellcheck disable=SC2086
"$PY" bench/train.py ${BENCH_ARGS:-${BENCH_DEFAULT[*]}} --work "$WORK/bench" --json "$WORK/bench.json"
fi

echo
echo "gpu_smoke: all steps passed (work folder $WORK)"

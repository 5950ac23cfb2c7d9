#!/usr/bin/env bash
# Build the CPU-only environment for sglang-concur from nothing: real SGLang 0.5.23 on CPU torch,
# this package (editable), and the embedded tiny models.  Usage: scripts/install_cpu.sh [VENV]
# About 4 minutes and 2.5 GB.  Re-running is cheap: a finished venv is reused.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$ROOT/.venv}
PY=${PYTHON:-python3}
if [ ! -f "$VENV/.sglang-cpu-ok" ]; then
  "$PY" -m venv "$VENV"
  . "$VENV/bin/activate"
  CONS=$(mktemp); echo "torch==2.13.0" > "$CONS"      # keep the CPU wheel; never pull CUDA torch
  pip install -q -c "$CONS" torch==2.13.0
  pip install -q --no-deps sglang==0.5.23              # its metadata pins CUDA-only deps
  pip install -q -c "$CONS" -r "$ROOT/scripts/requirements-cpu.txt"
  pip install -q --no-deps torchvision==0.28.0         # sglang imports its pure-python parts
  # torchvision registers fake kernels for ops its CUDA-built _C never defined on CPU torch: skip those two
  TV=$(python -c "import importlib.util,os;print(os.path.dirname(importlib.util.find_spec('torchvision').origin))")
  sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)/@(lambda f: f)  # cpu-shim: skip fake for \1/' "$TV/_meta_registrations.py"
  pip install -q -c "$CONS" pytest matplotlib
  touch "$VENV/.sglang-cpu-ok"
fi
. "$VENV/bin/activate"
python -c "import hypothesis" 2>/dev/null || pip install -q hypothesis   # property tests
pip install -q --no-deps --no-build-isolation -e "$ROOT"
. "$ROOT/scripts/cpu_env.sh"
python -m sglang_concur.tiny_model "$ROOT/models" >/dev/null
python -c "import sglang, sglang_concur, torch; print('sglang', sglang.__version__, 'torch', torch.__version__, 'sglang_concur', sglang_concur.__version__)"

# Source me: environment for real SGLang on a CPU-only machine (see python/sglang_concur/cpu.py).
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SGLANG_USE_CPU_ENGINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$_root/python/sglang_concur/cpu_shim${PYTHONPATH:+:$PYTHONPATH}"

"""Running real SGLang on a CPU-only machine (no CUDA, no sgl-kernel build): environment and flags.

`cpu_shim/sgl_kernel` is a stub that answers only the `*_cpu` op names SGLang imports at module load
with SGLANG_USE_CPU_ENGINE=1 (none is called on a CPU without AMX) and refuses every other name, so
SGLang's own fallbacks run.  Not used on a GPU machine, where upstream sgl-kernel is installed.
"""

from __future__ import annotations

import os
from typing import Dict, List

SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_shim")

SERVER_ARGS: List[str] = [
    "--device", "cpu", "--attention-backend", "torch_native", "--sampling-backend", "pytorch",
    "--grammar-backend", "none", "--disable-cuda-graph", "--skip-server-warmup", "--disable-overlap-schedule",
]
ENGINE_KWARGS: Dict[str, object] = dict(
    device="cpu", attention_backend="torch_native", sampling_backend="pytorch", grammar_backend="none",
    disable_cuda_graph=True, skip_server_warmup=True, disable_overlap_schedule=True,
)


def env(base: Dict[str, str] | None = None) -> Dict[str, str]:
    """A copy of `base` (default os.environ) set up for SGLang on CPU."""
    e = dict(os.environ if base is None else base)
    e["SGLANG_USE_CPU_ENGINE"] = "1"
    e["HF_HUB_OFFLINE"] = e["TRANSFORMERS_OFFLINE"] = "1"
    paths = [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p]
    if SHIM_DIR not in paths:
        e["PYTHONPATH"] = os.pathsep.join([SHIM_DIR] + paths)
    return e


def apply() -> None:
    """Set up this process (before importing sglang) for SGLang on CPU."""
    import sys

    os.environ.update(env())
    if SHIM_DIR not in sys.path:
        sys.path.insert(0, SHIM_DIR)

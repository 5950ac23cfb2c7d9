"""GPU regression run: plain SGLang vs --concur-enable per policy on an H100/A100, on a trace scaled
to overflow the KV cache of a real model config loaded with `--load-format dummy` (random weights:
no download, same shapes and speed).  Fails (exit 1) when a policy's speedup over plain SGLang
falls under the threshold kept in benchmark/gpu_threshold.json.

    python benchmark/gpu_regression.py                       # Qwen3-8B config, preset gpu-h100
    python benchmark/gpu_regression.py --agents 64 --out benchmark/results/gpu-h100

Needs upstream SGLang with CUDA and this package installed (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    from sglang_concur.bench.__main__ import PRESETS, build_trace, run_dir, run_on_server, table
    from sglang_concur.bench.trace import dump_trace

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold-file", default=os.path.join(HERE, "gpu_threshold.json"))
    ap.add_argument("--agents", type=int, help="override the preset's agent count")
    ap.add_argument("--model", help="override the model config directory")
    ap.add_argument("--out", default=os.path.join(HERE, "runs"))
    a = ap.parse_args()
    with open(a.threshold_file) as f:
        th = json.load(f)
    p = PRESETS[th["preset"]]
    p = replace(p, agents=a.agents or p.agents, model=a.model or p.model)
    agents = build_trace(p, None)
    out = run_dir(a.out)
    dump_trace(agents, os.path.join(out, "trace.jsonl"))
    results = run_on_server(p, agents, "sglang", [], out, progress=True)
    for pol in th["policies"]:
        results += run_on_server(p, agents, f"concur-{pol}", ["--concur-enable", "--concur-policy", pol], out, True)
    plain = results[0]["completion_time_s"]
    verdict = {r["label"]: round(plain / r["completion_time_s"], 3) for r in results[1:]}
    failed = {k: v for k, v in verdict.items() if v < th["min_speedup_vs_plain"]}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    meta = {"commit": commit, "gpu": gpu.stdout.strip(), "host": platform.node(), "preset": th["preset"],
            "model": p.model, "threshold": th["min_speedup_vs_plain"], "speedups": verdict, "failed": failed}
    with open(os.path.join(out, "regression.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(out, "regression.md"), "w") as f:
        f.write(f"commit {commit}, {meta['gpu']}, preset {th['preset']}\n\n{table(results)}\n\nspeedups: {verdict}\n")
    print(table(results), "\nspeedups over plain SGLang:", verdict)
    if failed:
        print(f"REGRESSION: speedup under {th['min_speedup_vs_plain']}: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

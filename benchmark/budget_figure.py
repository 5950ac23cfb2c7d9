"""The figure of docs/policies.md: native's budget and admitted agents over time on one committed
sweep, beside the sweep's fixed agent caps (and their completion times).

    python benchmark/budget_figure.py benchmark/results/cpu-tools docs/figures/native-budget-cpu-tools.png
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list) -> int:
    if len(argv) != 2:
        raise SystemExit("budget_figure: error: usage: budget_figure.py SWEEP_DIR OUT.png")
    sweep, out = argv
    path = os.path.join(sweep, "concur-native.json")
    if not os.path.exists(path):
        raise SystemExit(f"budget_figure: error: no concur-native.json in {sweep!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    native = json.load(open(path))
    pool = native["server"]["max_total_tokens"] if isinstance(native.get("server"), dict) and native["server"].get("max_total_tokens") else None
    caps = {}
    for name in sorted(os.listdir(sweep)):
        if name.startswith("sglang-cap") and name.endswith(".json"):
            r = json.load(open(os.path.join(sweep, name)))
            caps[int(name[len("sglang-cap"):-5])] = r["completion_time_s"]
    tl = native["timeline"]
    t = [x["t"] for x in tl]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(t, [x["window"] for x in tl], label="native budget B (tokens)")
    if pool:
        ax1.axhline(pool, color="k", ls=":", label=f"KV pool C = {pool}")
    ax1.set_ylabel("tokens")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot(t, [x["active_agents"] for x in tl], label=f"native: admitted agents ({native['completion_time_s']:.0f} s)")
    for cap, secs in sorted(caps.items()):
        ax2.axhline(cap, ls="--", lw=0.8, color="gray")
        ax2.text(t[-1], cap, f" cap {cap}: {secs:.0f} s", va="center", fontsize=7)
    ax2.set_ylabel("agents")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"native on {os.path.basename(os.path.normpath(sweep))}: budget and admitted agents vs fixed caps")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

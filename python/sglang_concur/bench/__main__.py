"""Agent batch benchmark CLI.

    python -m sglang_concur.bench compare --preset cpu-smoke      # plain SGLang vs --concur-enable
    python -m sglang_concur.bench generate-trace --agents 64 --seed 0 -o trace.jsonl
    python -m sglang_concur.bench run --url http://127.0.0.1:30000 --trace trace.jsonl
    python -m sglang_concur.bench sweep --preset cpu-smoke     # baselines, caps, policies + plots

See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sglang_concur.bench.runner import RunConfig, brief, run_trace, write_results
from sglang_concur.bench.trace import AgentTrace, dump_trace, generate_trace, load_trace, summary


@dataclass(frozen=True)
class Preset:
    description: str
    model: str
    agents: int
    max_total_tokens: int  # KV pool size in tokens
    scale: float = 1.0
    seed: int = 0
    trace: Dict[str, Any] = field(default_factory=dict)  # TraceParams overrides
    server_args: Tuple[str, ...] = ()  # extra flags for both servers
    concur_args: str = "--concur-policy native"
    # sweep: SGLang --max-running-requests values, client-side agent caps, CONCUR policies
    sweep_max_running: Tuple[int, ...] = (2, 4, 8)
    sweep_agent_caps: Tuple[int, ...] = (2, 4, 8)
    sweep_policies: Tuple[str, ...] = ("aimd", "static")
    device: str = "cpu"  # cpu: CPU flags and shim; cuda: upstream GPU defaults


PRESETS: Dict[str, Preset] = {
    "cpu-smoke": Preset(
        "2-core CPU, both runs in ~2-4 min: 12 agents, ~5 turns, contexts up to 1k tokens, 2k-token KV pool",
        model="models/small", agents=12, max_total_tokens=2048, scale=0.06, seed=0,
        trace=dict(turns_scale=0.4, turns_max=8, time_scale=0.5, tool_max_s=8.0, max_context_tokens=1000,
                   prefix_min=800, prefix_max=1600, output_median=50.0, output_min=20, output_max=150),
    ),
    "cpu": Preset(
        "2-core CPU thrashing preset: 32 agents x ~10 turns, ~1.4k-token final histories each (~45k in all) "
        "against an 8k-token KV pool; each configuration a few minutes",
        model="models/small", agents=32, max_total_tokens=8192, scale=0.15, seed=0,
        trace=dict(turns_median=10, turns_sigma=0.25, turns_min=7, turns_max=13, n_prefixes=1, prefix_min=600,
                   prefix_max=700, task_median=1000, task_sigma=0.3, append_median=800, append_sigma=0.5,
                   max_context_tokens=2400, output_median=60, output_sigma=0.3, output_min=30, output_max=100,
                   time_scale=0.5, tool_max_s=6.0),
        sweep_max_running=(4, 8), sweep_agent_caps=(2, 4, 8, 16), sweep_policies=("aimd", "native"),
    ),
    "cpu-mixed": Preset(
        "the cpu preset with mixed agent sizes: a quarter of the agents have 10x larger observations",
        model="models/small", agents=32, max_total_tokens=8192, scale=0.15, seed=0,
        trace=dict(turns_median=10, turns_sigma=0.25, turns_min=7, turns_max=13, n_prefixes=1, prefix_min=600,
                   prefix_max=700, task_median=1000, task_sigma=0.3, append_median=500, append_sigma=0.5,
                   long_fraction=0.25, long_factor=10.0, max_context_tokens=6000, output_median=60,
                   output_sigma=0.3, output_min=30, output_max=100, time_scale=0.5, tool_max_s=6.0),
        sweep_max_running=(), sweep_agent_caps=(2, 4, 8, 16), sweep_policies=("aimd", "native"),
    ),
    "gpu-h100": Preset(
        "H100/A100 regression: Qwen3-8B shapes with random weights, 128 agents at full trace scale "
        "(~15k-token final histories, ~2M tokens in all) against the GPU's whole KV cache",
        model="benchmark/configs/qwen3-8b", agents=128, max_total_tokens=0, scale=1.0, seed=0,
        trace=dict(turns_max=40, max_context_tokens=32000), device="cuda",
        sweep_max_running=(32, 64), sweep_agent_caps=(16, 32, 64), sweep_policies=("aimd", "native"),
    ),
}


# --- helpers -----------------------------------------------------------------------------
def build_trace(p: Preset, trace_file: Optional[str]) -> List[AgentTrace]:
    return load_trace(trace_file) if trace_file else generate_trace(p.agents, p.seed, p.scale, **p.trace)


def apply_overrides(p: Preset, a: argparse.Namespace) -> Preset:
    trace = dict(p.trace)
    for k in ("turns_scale", "time_scale", "long_fraction", "long_factor"):
        if getattr(a, k, None) is not None:
            trace[k] = getattr(a, k)
    p = replace(p, trace=trace)
    for k in ("model", "agents", "max_total_tokens", "scale", "seed", "concur_args"):
        if getattr(a, k, None) is not None:
            p = replace(p, **{k: getattr(a, k)})
    if getattr(a, "server_args", None) is not None:
        p = replace(p, server_args=tuple(shlex.split(a.server_args)))
    return p


def run_dir(base: str) -> str:
    d = os.path.join(base, time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(d, exist_ok=True)
    return d


def run_on_server(p: Preset, agents: Sequence[AgentTrace], label: str, extra: Sequence[str], out: str,
                  progress: bool, agent_caps: Sequence[Optional[int]] = (None,)) -> List[Dict[str, Any]]:
    """Start a CPU server with `extra` flags; run the trace once per agent cap (cache flushed between)."""
    import urllib.request

    from sglang_concur.bench.server import cpu_server, gpu_server

    log = os.path.join(out, f"server-{label}.log")
    t = time.monotonic()
    results = []
    launch = gpu_server if p.device == "cuda" else cpu_server
    with launch(p.model, extra=[*p.server_args, "--enable-metrics", *extra], log_path=log,
                max_total_tokens=p.max_total_tokens or None) as srv:
        print(f"[{label}] server up in {time.monotonic() - t:.0f}s: {' '.join(extra) or '(plain)'}", flush=True)
        for i, cap in enumerate(agent_caps):
            name = label if cap is None else f"{label}-cap{cap}"
            if i:
                urllib.request.urlopen(urllib.request.Request(srv.url + "/flush_cache", method="POST"), timeout=60).read()
            res = run_trace(agents, RunConfig(label=name, url=srv.url, progress=progress, agent_cap=cap))
            res["server"] = {"model": p.model, "max_total_tokens": p.max_total_tokens,
                             "extra_args": [*p.server_args, *extra]}
            write_results(res, os.path.join(out, f"{name}.json"))
            print(f"[{name}] done: {res['completion_time_s']:.1f}s, hit rate {res['hit_rate']:.1%}, "
                  f"failed turns {res['failed_turns']}", flush=True)
            results.append(res)
    return results


COLUMNS = [("completion_time_s", "completion s", "{:.1f}"), ("output_tokens_per_s", "output tok/s", "{:.1f}"),
           ("total_tokens_per_s", "total tok/s", "{:.0f}"), ("hit_rate", "hit rate", "{:.1%}"),
           ("recomputed_tokens", "recomputed tok", "{:d}"), ("failed_turns", "failed turns", "{:d}"),
           ("turns_completed", "turns", "{:d}")]


def table(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown table, one row per run."""
    head = "| run | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in results:
        rows.append(f"| {r['label']} | " + " | ".join(f.format(r[k]) for k, _, f in COLUMNS) + " |")
    return "\n".join(rows)


# --- subcommands -------------------------------------------------------------------------
def cmd_compare(a: argparse.Namespace) -> int:
    p = apply_overrides(PRESETS[a.preset], a)
    agents = build_trace(p, a.trace)
    out = run_dir(a.out)
    dump_trace(agents, os.path.join(out, "trace.jsonl"))
    s = summary(agents)
    print(f"preset {a.preset}: {p.description}\nmodel {p.model}, {s['agents']} agents, {s['turns_total']} turns, "
          f"max context {s['final_context_tokens']['max']:.0f} tokens, KV pool {p.max_total_tokens} tokens -> {out}",
          flush=True)
    [plain] = run_on_server(p, agents, "sglang", [], out, not a.no_progress)
    [concur] = run_on_server(p, agents, "concur", ["--concur-enable", *shlex.split(p.concur_args)], out,
                             not a.no_progress)
    speedup = plain["completion_time_s"] / concur["completion_time_s"] if concur["completion_time_s"] else float("nan")
    md = table([plain, concur]) + f"\n\nspeedup (SGLang / CONCUR completion time): {speedup:.2f}x\n"
    print("\n" + md)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(f"preset {a.preset}, model {p.model}, KV pool {p.max_total_tokens} tokens, concur args "
                f"`{p.concur_args}`\n\n" + md)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump({"preset": a.preset, "trace_summary": s, "speedup": speedup,
                   "runs": [brief(plain), brief(concur)]}, f, indent=1)
    return 0 if plain["failed_turns"] == concur["failed_turns"] == 0 else 1


def cmd_sweep(a: argparse.Namespace) -> int:
    p = apply_overrides(PRESETS[a.preset], a)
    only = None if a.runs is None else set(a.runs.split(","))
    known = {"sglang", *(f"sglang-cap{c}" for c in p.sweep_agent_caps), *(f"sglang-mrr{m}" for m in p.sweep_max_running),
             *(f"concur-{pol}" for pol in p.sweep_policies)}
    if only is not None and not only <= known:
        raise SystemExit(f"sglang_concur.bench: error: --runs: unknown run(s) {sorted(only - known)} for preset "
                         f"{a.preset}; choose from {sorted(known)}")
    agents = build_trace(p, a.trace)
    out = run_dir(a.out)
    dump_trace(agents, os.path.join(out, "trace.jsonl"))
    prog = not a.no_progress

    def want(label: str) -> bool:
        return only is None or label in only

    caps = [c for c in (None, *p.sweep_agent_caps) if want("sglang" if c is None else f"sglang-cap{c}")]
    results = run_on_server(p, agents, "sglang", [], out, prog, agent_caps=caps) if caps else []
    for m in p.sweep_max_running:
        if want(f"sglang-mrr{m}"):
            results += run_on_server(p, agents, f"sglang-mrr{m}", ["--max-running-requests", str(m)], out, prog)
    base = [x for x in shlex.split(p.concur_args) if x != "--concur-policy" and x not in ("static", "aimd", "native")]
    for pol in p.sweep_policies:
        if want(f"concur-{pol}"):
            results += run_on_server(p, agents, f"concur-{pol}", ["--concur-enable", "--concur-policy", pol, *base],
                                     out, prog)
    md = f"preset {a.preset}, model {p.model}, KV pool {p.max_total_tokens} tokens\n\n" + table(results) + "\n"
    print("\n" + md)
    with open(os.path.join(out, "sweep.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "sweep.json"), "w") as f:
        json.dump({"preset": a.preset, "trace_summary": summary(agents), "runs": [brief(r) for r in results]}, f, indent=1)
    plot(results, out)
    print(f"results: {out}")
    return 0


def plot(results: Sequence[Dict[str, Any]], out: str) -> None:
    """completion.png: completion time against the fixed agent cap (the U), with plain SGLang, its
    request caps and each CONCUR policy as lines; timeline.png: output tok/s, hit rate and KV usage
    over time for plain SGLang, the best fixed cap and CONCUR."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)")
        return
    by = {r["label"]: r for r in results}
    caps = sorted((int(l.rsplit("cap", 1)[1]), r) for l, r in by.items() if "-cap" in l and l.startswith("sglang-cap"))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if caps:
        ax.plot([c for c, _ in caps], [r["completion_time_s"] for _, r in caps], "o-", color="C0", label="fixed agent cap")
        ax.set_xscale("log", base=2)
        ax.set_xticks([c for c, _ in caps], [str(c) for c, _ in caps])
    styles = {"sglang": ("k", "--")}
    for i, (label, r) in enumerate(x for x in by.items() if not x[0].startswith("sglang-cap")):
        color, ls = styles.get(label, (f"C{i + 1}", "-" if label.startswith("concur") else ":"))
        ax.axhline(r["completion_time_s"], color=color, ls=ls, lw=1.5, label=label)
    ax.set_xlabel("client-side agent cap")
    ax.set_ylabel("batch completion time (s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "completion.png"), dpi=120)
    plt.close(fig)
    chosen = [by[l] for l in ("sglang",) if l in by]
    if caps:
        chosen.append(min((r for _, r in caps), key=lambda r: r["completion_time_s"]))
    chosen += [r for l, r in by.items() if l.startswith("concur")]
    keys = [("output_tokens_per_s", "output tok/s"), ("hit_rate", "hit rate (last 1 s)"), ("kv_usage", "KV usage")]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 8), sharex=True)
    for r in chosen:
        tl = r["timeline"]
        for ax, (k, name) in zip(axes, keys):
            pts = [(x["t"], x[k]) for x in tl if x.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), label=r["label"], lw=1)
            ax.set_ylabel(name)
    axes[-1].set_xlabel("time (s)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "timeline.png"), dpi=120)
    plt.close(fig)


def cmd_plot(a: argparse.Namespace) -> int:
    """Re-draw the plots and the table of a finished sweep directory from its per-run JSON files."""
    runs = []
    for name in sorted(os.listdir(a.dir)):
        if name.endswith(".json") and name not in ("sweep.json", "compare.json"):
            with open(os.path.join(a.dir, name)) as f:
                r = json.load(f)
            if isinstance(r, dict) and "timeline" in r:
                runs.append(r)
    def order(r: Dict[str, Any]) -> Tuple[int, int, str]:
        label = r["label"]
        group = 0 if label == "sglang" else 1 if "-cap" in label else 2 if "-mrr" in label else 3
        digits = "".join(ch for ch in label.rsplit("-", 1)[-1] if ch.isdigit())
        return group, int(digits or 0), label

    runs.sort(key=order)
    plot(runs, a.dir)
    print(table(runs))
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    p = apply_overrides(PRESETS[a.preset], a)
    agents = build_trace(p, a.trace)
    cfg = RunConfig(label=a.label, target=a.target, url=a.url, agent_cap=a.agent_cap, arrival_rate=a.arrival_rate,
                    progress=not a.no_progress)
    res = run_trace(agents, cfg)
    out = run_dir(a.out)
    write_results(res, os.path.join(out, f"{a.label}.json"))
    print(table([res]) + f"\n\nresults: {out}")
    return 0 if res["failed_turns"] == 0 else 1


def cmd_generate(a: argparse.Namespace) -> int:
    p = apply_overrides(PRESETS[a.preset] if a.preset else Preset("full-size trace", "", agents=64, max_total_tokens=0), a)
    agents = build_trace(p, None)
    dump_trace(agents, a.output)
    print(json.dumps(summary(agents), indent=1))
    print(f"wrote {len(agents)} agents to {a.output}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sglang_concur.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def trace_opts(s: argparse.ArgumentParser) -> None:
        s.add_argument("--agents", type=int, help="number of agents (generated trace)")
        s.add_argument("--seed", type=int)
        s.add_argument("--scale", type=float, help="multiplies every token count of the generated trace")
        s.add_argument("--turns-scale", type=float, help="multiplies turns per agent")
        s.add_argument("--time-scale", type=float, help="multiplies tool latencies")
        s.add_argument("--long-fraction", type=float, help="share of agents with long_factor x larger observations")
        s.add_argument("--long-factor", type=float)

    c = sub.add_parser("compare", help="plain SGLang vs SGLang --concur-enable on the same trace (CPU servers)")
    c.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    trace_opts(c)
    c.add_argument("--trace", help="replay this JSONL trace instead of generating one")
    c.add_argument("--model")
    c.add_argument("--max-total-tokens", type=int, help="KV pool size in tokens")
    c.add_argument("--concur-args", help='flags for the CONCUR server, e.g. "--concur-policy static --concur-initial-window 4"')
    c.add_argument("--server-args", help="extra flags for both servers")
    c.add_argument("--out", default="benchmark/runs")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(fn=cmd_compare)

    w = sub.add_parser("sweep", help="plain, --max-running-requests values, client agent caps, CONCUR policies; "
                                     "Markdown table and PNG plots")
    w.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    trace_opts(w)
    w.add_argument("--trace")
    w.add_argument("--model")
    w.add_argument("--max-total-tokens", type=int)
    w.add_argument("--concur-args")
    w.add_argument("--server-args")
    w.add_argument("--runs", help="comma-separated subset of the preset's runs, e.g. sglang-cap4,concur-native")
    w.add_argument("--out", default="benchmark/runs")
    w.add_argument("--no-progress", action="store_true")
    w.set_defaults(fn=cmd_sweep)

    r = sub.add_parser("run", help="drive a trace against a running server")
    r.add_argument("--url", required=True)
    r.add_argument("--target", choices=("http", "openai"), default="http")
    r.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke", help="trace shape when no --trace")
    trace_opts(r)
    r.add_argument("--trace")
    r.add_argument("--label", default="run")
    r.add_argument("--agent-cap", type=int, help="client-side cap on agents in flight")
    r.add_argument("--arrival-rate", type=float, help="Poisson agent arrivals per second (default: all at once)")
    r.add_argument("--out", default="benchmark/runs")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_run)

    g = sub.add_parser("generate-trace", help="write a generated JSONL trace and print its summary")
    g.add_argument("-o", "--output", required=True)
    g.add_argument("--preset", choices=sorted(PRESETS), help="start from this preset's trace shape")
    trace_opts(g)
    g.set_defaults(fn=cmd_generate)

    pl = sub.add_parser("plot", help="re-draw the plots and table of a sweep directory")
    pl.add_argument("dir")
    pl.set_defaults(fn=cmd_plot)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parser().parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())

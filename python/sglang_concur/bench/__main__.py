"""Agent batch benchmark CLI.

    python -m sglang_concur.bench compare --preset cpu-smoke      # plain SGLang vs --concur-enable
    python -m sglang_concur.bench sweep --preset cpu              # baselines, caps, policies, limit + plots
    python -m sglang_concur.bench sweep --preset cpu-tools --time-scales 0.25,1,4
    python -m sglang_concur.bench generate-trace --shape terminal-bench --agents 64 -o trace.jsonl
    python -m sglang_concur.bench run --url http://127.0.0.1:30000 --trace trace.jsonl --client header

See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sglang_concur.bench.runner import CLIENTS, RunConfig, brief, run_trace, write_results
from sglang_concur.bench.shapes import SHAPES, generate_shape
from sglang_concur.bench.trace import AgentTrace, TraceError, dump_trace, generate_trace, load_trace, summary


@dataclass(frozen=True)
class Preset:
    description: str
    model: str
    agents: int
    max_total_tokens: int  # KV pool size in tokens (0: the device's)
    scale: float = 1.0
    seed: int = 0
    trace: Dict[str, Any] = field(default_factory=dict)  # TraceParams overrides (or shape arguments)
    shape: Optional[str] = None  # a public-trace shape (bench/shapes.py) instead of the default generator
    server_args: Tuple[str, ...] = ()  # extra flags for every server
    concur_args: str = ""  # extra flags for the CONCUR server (defaults otherwise)
    # sweep: SGLang --max-running-requests values, client-side agent caps, CONCUR policies
    sweep_max_running: Tuple[int, ...] = ()
    sweep_agent_caps: Tuple[int, ...] = (2, 4, 8)
    sweep_policies: Tuple[str, ...] = ("aimd", "native")
    device: str = "cpu"  # cpu: CPU flags and shim; cuda: upstream GPU defaults


_CPU_TRACE = dict(turns_median=10, turns_sigma=0.25, turns_min=7, turns_max=13, n_prefixes=1, prefix_min=600,
                  prefix_max=700, task_median=1000, task_sigma=0.3, append_median=800, append_sigma=0.5,
                  max_context_tokens=2400, output_median=60, output_sigma=0.3, output_min=30, output_max=100,
                  time_scale=0.5, tool_max_s=6.0)

PRESETS: Dict[str, Preset] = {
    "cpu-smoke": Preset(
        "the README's first run, 2-core CPU, both servers in under 4 minutes: 12 agents x ~10 turns, "
        "~1.4k-token final histories against a 3k-token KV pool",
        model="models/small", agents=12, max_total_tokens=3072, scale=0.15, seed=0, trace=dict(_CPU_TRACE),
        sweep_agent_caps=(1, 2, 4, 8),
    ),
    "cpu": Preset(
        "2-core CPU thrashing preset: 32 agents x ~10 turns, ~1.4k-token final histories each (~45k in all) "
        "against an 8k-token KV pool; each configuration a few minutes",
        model="models/small", agents=32, max_total_tokens=8192, scale=0.15, seed=0, trace=dict(_CPU_TRACE),
        sweep_max_running=(4, 8), sweep_agent_caps=(2, 4, 8, 16),
    ),
    "cpu-mixed": Preset(
        "the cpu preset with mixed agent sizes: a quarter of the agents have 10x larger observations",
        model="models/small", agents=32, max_total_tokens=8192, scale=0.15, seed=0,
        trace={**_CPU_TRACE, "append_median": 500, "long_fraction": 0.25, "long_factor": 10.0,
               "max_context_tokens": 6000},
        sweep_agent_caps=(2, 4, 8, 16),
    ),
    "cpu-tools": Preset(
        "2-core CPU, tool-heavy: 48 agents x 3-13 turns whose tool waits (median 2 s) are over 5x the LLM "
        "time per turn, ~1.2k-token final histories against an 8k-token KV pool",
        model="models/small", agents=48, max_total_tokens=8192, scale=0.15, seed=0,
        trace={**_CPU_TRACE, "turns_median": 8, "turns_sigma": 0.35, "turns_min": 3, "turns_max": 13,
               "tool_median_s": 2.0, "tool_sigma": 0.5, "tool_tail_p": 0.1, "tool_tail_median_s": 6.0,
               "tool_tail_sigma": 0.5, "tool_max_s": 12.0, "time_scale": 1.0},
        sweep_agent_caps=(4, 8, 16, 32),
    ),
    "cpu-terminal-bench": Preset(
        "Terminal-Bench 2.0-shaped agents on the 2-core CPU (bench/shapes.py): tokens x0.05, lives x0.25 "
        "(same final histories), tool waits x0.5; 32 agents against a 6k-token KV pool",
        model="models/small", agents=32, max_total_tokens=6144, scale=0.05, seed=0, shape="terminal-bench",
        trace=dict(time_scale=0.5, turns_scale=0.25, max_context_tokens=3000), sweep_agent_caps=(4, 8, 16),
    ),
    "cpu-swe-agent": Preset(
        "SWE-agent-shaped agents on the 2-core CPU: tokens x0.05, lives x0.25 (same final histories), tool "
        "waits x0.5; 32 agents against a 6k-token KV pool",
        model="models/small", agents=32, max_total_tokens=6144, scale=0.05, seed=0, shape="swe-agent",
        trace=dict(time_scale=0.5, turns_scale=0.25, max_context_tokens=3000), sweep_agent_caps=(4, 8, 16),
    ),
    "cpu-mooncake-agent": Preset(
        "Mooncake tool-and-agent-shaped agents on the 2-core CPU: tokens x0.1, tool gaps as measured; 32 agents "
        "against a 6k-token KV pool",
        model="models/small", agents=32, max_total_tokens=6144, scale=0.1, seed=0, shape="mooncake-agent",
        trace=dict(time_scale=1.0, max_context_tokens=3000), sweep_agent_caps=(4, 8, 16),
    ),
    "gpu-h100": Preset(
        "H100/A100 regression: Qwen3-8B shapes with random weights, 128 agents at full trace scale "
        "(~15k-token final histories, ~2M tokens in all) against the GPU's whole KV cache",
        model="benchmark/configs/qwen3-8b", agents=128, max_total_tokens=0, scale=1.0, seed=0,
        trace=dict(turns_max=40, max_context_tokens=32000), device="cuda",
        sweep_max_running=(32, 64), sweep_agent_caps=(16, 32, 64),
    ),
}


# --- argument types: one line naming the argument and its range ---------------------------------
def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {v!r}") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {v!r}")
        return n
    return parse


def _number(lo: float, hi: float = math.inf, lo_open: bool = False) -> Callable[[str], float]:
    rule = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]" if math.isfinite(hi) else f"{'>' if lo_open else '>='} {lo:g}"

    def parse(v: str) -> float:
        try:
            x = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {v!r}") from None
        if not math.isfinite(x) or x < lo or (lo_open and x == lo) or x > hi:
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {v!r}")
        return x
    return parse


def _number_list(v: str) -> List[float]:
    try:
        xs = [float(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers > 0, got {v!r}") from None
    if not xs or any(not math.isfinite(x) or x <= 0 for x in xs):
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers > 0, got {v!r}")
    return xs


def _clients(v: str) -> List[str]:
    xs = [x.strip() for x in v.split(",") if x.strip()]
    bad = [x for x in xs if x not in CLIENTS]
    if not xs or bad:
        raise argparse.ArgumentTypeError(f"unknown client mode(s) {bad or [v]}; choose from {', '.join(CLIENTS)}")
    return xs


# --- helpers -----------------------------------------------------------------------------
def build_trace(p: Preset, trace_file: Optional[str]) -> List[AgentTrace]:
    if trace_file:
        return load_trace(trace_file)
    if p.shape is not None:
        return generate_shape(p.shape, p.agents, p.seed, p.scale, **p.trace)
    return generate_trace(p.agents, p.seed, p.scale, **p.trace)


def apply_overrides(p: Preset, a: argparse.Namespace) -> Preset:
    trace = dict(p.trace)
    for k in ("turns_scale", "time_scale", "long_fraction", "long_factor"):
        if getattr(a, k, None) is not None:
            trace[k] = getattr(a, k)
    p = replace(p, trace=trace)
    if getattr(a, "shape", None) is not None:
        p = replace(p, shape=a.shape, trace={k: v for k, v in trace.items() if k in ("time_scale", "turns_scale",
                                                                                  "max_context_tokens")})
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


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    return (r.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def limit_pool(agents: Sequence[AgentTrace]) -> int:
    """A KV pool that holds every agent's final history at once (nothing is ever evicted)."""
    need = sum(a.context_tokens() + max(t.output_tokens for t in a.turns) for a in agents)
    return int(need * 1.1) + 1024


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its label, the server it needs and the client that drives it."""

    label: str
    server: Tuple[str, ...]  # extra server flags ((): plain SGLang)
    client: str = "routing-key-end"
    agent_cap: Optional[int] = None
    pool: Optional[int] = None  # KV pool override (the no-eviction limit)


def run_on_server(p: Preset, agents: Sequence[AgentTrace], runs: Sequence[Run], out: str, progress: bool,
                  client_cap: Optional[int] = None) -> List[Dict[str, Any]]:
    """Start one server for `runs` (same flags and pool), run each (cache flushed between)."""
    import urllib.request

    from sglang_concur.bench.server import cpu_server, gpu_server

    first = runs[0]
    log = os.path.join(out, f"server-{first.label}.log")
    t = time.monotonic()
    results = []
    launch = gpu_server if p.device == "cuda" else cpu_server
    pool = first.pool or p.max_total_tokens or None
    flags = [*p.server_args, "--enable-metrics", "--enable-cache-report", *first.server]
    with launch(p.model, extra=flags, log_path=log, max_total_tokens=pool) as srv:
        print(f"[{first.label}] server up in {time.monotonic() - t:.0f}s: {' '.join(first.server) or '(plain)'}"
              f"{'' if first.pool is None else f', pool {first.pool}'}", flush=True)
        for i, r in enumerate(runs):
            if i:
                urllib.request.urlopen(urllib.request.Request(srv.url + "/flush_cache", method="POST"), timeout=60).read()
            cfg = RunConfig(label=r.label, url=srv.url, progress=progress, agent_cap=r.agent_cap, client=r.client,
                            client_cap=client_cap, tokenizer=p.model, model=p.model)
            res = run_trace(agents, cfg)
            res["server"] = {"model": p.model, "max_total_tokens": pool, "extra_args": flags}
            write_results(res, os.path.join(out, f"{r.label}.json"))
            print(f"[{r.label}] done: {res['completion_time_s']:.1f}s, hit rate {res['hit_rate']:.1%}, "
                  f"failed turns {res['failed_turns']}", flush=True)
            results.append(res)
    return results


COLUMNS = [("client", "client", "{}"), ("completion_time_s", "completion s", "{:.1f}"),
           ("x_limit", "x limit", "{:.2f}"), ("output_tokens_per_s", "output tok/s", "{:.1f}"),
           ("total_tokens_per_s", "total tok/s", "{:.0f}"), ("hit_rate", "hit rate", "{:.1%}"),
           ("recomputed_tokens", "recomputed tok", "{:d}"), ("failed_turns", "failed turns", "{:d}"),
           ("turns_completed", "turns", "{:d}")]


def table(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown table, one row per run; `x limit` is the completion time over the no-eviction limit's."""
    limit = next((r["completion_time_s"] for r in results if r["label"].startswith("sglang-limit")), None)
    head = "| run | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in results:
        vals = {**r, "client": r.get("config", {}).get("client", r.get("client", "?")),
                "x_limit": r["completion_time_s"] / limit if limit else None}
        rows.append(f"| {r['label']} | " + " | ".join("-" if vals.get(k) is None else f.format(vals[k])
                                                       for k, _, f in COLUMNS) + " |")
    return "\n".join(rows)


def header(p: Preset, name: str, cmd: str, agents: Sequence[AgentTrace]) -> str:
    import platform

    s = summary(agents)
    return (f"preset `{name}` ({p.description})\n\n- command: `{cmd}`\n- commit: {commit()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n- machine: {platform.machine()}, "
            f"{os.cpu_count()} cores, {platform.processor() or 'cpu'}; model `{p.model}`, KV pool "
            f"{p.max_total_tokens or 'device'} tokens\n- trace: {s['agents']} agents, {s['turns_total']} turns, "
            f"median final context {s['final_context_tokens']['median']:.0f} tokens, median tool wait "
            f"{s['tool_latency_s']['median']:.2f} s\n")


# --- subcommands -------------------------------------------------------------------------
def cmd_compare(a: argparse.Namespace) -> int:
    p = apply_overrides(PRESETS[a.preset], a)
    agents = build_trace(p, a.trace)
    out = run_dir(a.out)
    dump_trace(agents, os.path.join(out, "trace.jsonl"))
    s = summary(agents)
    print(f"preset {a.preset}: {p.description}\nmodel {p.model}, {s['agents']} agents, {s['turns_total']} turns, "
          f"max context {s['final_context_tokens']['max']:.0f} tokens, KV pool {p.max_total_tokens} tokens, "
          f"client {a.client} -> {out}", flush=True)
    [plain] = run_on_server(p, agents, [Run("sglang", (), a.client)], out, not a.no_progress, a.client_cap)
    concur_flags = ("--concur-enable", *shlex.split(p.concur_args))
    [concur] = run_on_server(p, agents, [Run("concur", concur_flags, a.client)], out, not a.no_progress, a.client_cap)
    speedup = plain["completion_time_s"] / concur["completion_time_s"] if concur["completion_time_s"] else float("nan")
    md = table([plain, concur]) + f"\n\nspeedup (SGLang / CONCUR completion time): {speedup:.2f}x\n"
    print("\n" + md)
    print(f"what happened: CONCUR kept a {concur['hit_rate']:.0%} prefix hit rate against SGLang's "
          f"{plain['hit_rate']:.0%}, recomputing {concur['recomputed_tokens']:,} history tokens instead of "
          f"{plain['recomputed_tokens']:,}.\nplots: {os.path.join(out, 'timeline.png')} (results in {out})")
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(header(p, a.preset, " ".join(sys.argv), agents) + "\n" + md)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump({"preset": a.preset, "commit": commit(), "trace_summary": s, "speedup": speedup,
                   "runs": [brief(plain), brief(concur)]}, f, indent=1)
    plot([plain, concur], out)
    return 0 if plain["failed_turns"] == concur["failed_turns"] == 0 else 1


def all_runs(p: Preset, clients: Sequence[str], agents: Sequence[AgentTrace]) -> List[List[Run]]:
    """Every run a sweep knows, grouped by server: plain with its agent caps (under each client of
    `clients`: `sglang@header`, `sglang-cap4@openai`), the no-eviction limit, --max-running-requests,
    and each CONCUR policy under each client mode."""
    groups: List[List[Run]] = []
    for c in dict.fromkeys(["routing-key-end", *clients]):
        at = "" if c == "routing-key-end" else f"@{c}"
        groups.append([Run("sglang" + at, (), c)] + [Run(f"sglang-cap{n}{at}", (), c, agent_cap=n) for n in p.sweep_agent_caps])
    groups.append([Run("sglang-limit", (), pool=limit_pool(agents))])
    groups += [[Run(f"sglang-mrr{m}", ("--max-running-requests", str(m)))] for m in p.sweep_max_running]
    base = [x for x in shlex.split(p.concur_args) if x != "--concur-policy" and x not in ("static", "aimd", "native")]
    for pol in p.sweep_policies:
        for c in clients:
            label = f"concur-{pol}" if c == "routing-key-end" else f"concur-{pol}@{c}"
            groups.append([Run(label, ("--concur-enable", "--concur-policy", pol, *base), c)])
    return groups


def sweep_runs(p: Preset, clients: Sequence[str], only: Optional[set], agents: Sequence[AgentTrace]) -> List[List[Run]]:
    """The runs `only` names; without it, every run but plain SGLang under a client other than the
    default (each costs a full run: the baseline for a client whose requests cost more than the
    trace's token counts, such as the `openai` client's chat template)."""
    keep = (lambda r: r.server or r.client == "routing-key-end") if only is None else (lambda r: r.label in only)
    return [g for g in ([r for r in g if keep(r)] for g in all_runs(p, clients, agents)) if g]


def cmd_sweep(a: argparse.Namespace) -> int:
    p = apply_overrides(PRESETS[a.preset], a)
    clients = a.clients or ["routing-key-end"]
    only = None if a.runs is None else set(a.runs.split(","))
    base_agents = build_trace(p, a.trace)
    known = {r.label for g in all_runs(p, clients, base_agents) for r in g}
    if only is not None and not only <= known:
        raise SystemExit(f"sglang_concur.bench: error: --runs: unknown run(s) {sorted(only - known)} for preset "
                         f"{a.preset}; choose from {sorted(known)}")
    out = run_dir(a.out)
    scales = a.time_scales or [None]
    series = []
    for ts in scales:
        sub = out if ts is None else os.path.join(out, f"time-scale-{ts:g}")
        os.makedirs(sub, exist_ok=True)
        agents = base_agents if ts is None else scale_time(base_agents, ts)
        dump_trace(agents, os.path.join(sub, "trace.jsonl"))
        results = []
        for group in sweep_runs(p, clients, only, agents):
            results += run_on_server(p, agents, group, sub, not a.no_progress, a.client_cap)
        md = header(p, a.preset, " ".join(sys.argv), agents) + ("" if ts is None else f"- tool waits x{ts:g}\n") \
            + "\n" + table(results) + "\n"
        print("\n" + md)
        with open(os.path.join(sub, "sweep.md"), "w") as f:
            f.write(md)
        with open(os.path.join(sub, "sweep.json"), "w") as f:
            json.dump({"preset": a.preset, "commit": commit(), "command": " ".join(sys.argv), "time_scale": ts,
                       "trace_summary": summary(agents), "runs": [brief(r) for r in results]}, f, indent=1)
        plot(results, sub)
        series.append((ts, results))
    if len(series) > 1:
        plot_series(series, out)
    print(f"results: {out}")
    return 0


def scale_time(agents: Sequence[AgentTrace], factor: float) -> List[AgentTrace]:
    """The same agents with every tool wait multiplied by `factor`."""
    return [replace(x, turns=tuple(replace(t, tool_latency_s=round(t.tool_latency_s * factor, 4)) for t in x.turns))
            for x in agents]


def _cap(label: str) -> Optional[int]:
    """N for `sglang-capN` (the U over fixed caps, default client); None for any other run."""
    m = re.fullmatch(r"sglang-cap(\d+)", label)
    return int(m.group(1)) if m else None


def _smooth(pts: Sequence[Tuple[float, float]], window_s: float = 5.0) -> Tuple[List[float], List[float]]:
    """Moving average over `window_s` seconds (the timeline is sampled every second)."""
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    out = []
    for i, x in enumerate(xs):
        w = [y for x2, y in zip(xs, ys) if x - window_s < x2 <= x]
        out.append(sum(w) / len(w))
    return xs, out


def plot(results: Sequence[Dict[str, Any]], out: str) -> None:
    """completion.png: completion time against the fixed agent cap (the U), with plain SGLang, the
    no-eviction limit and each CONCUR run as horizontal lines; timeline.png: one panel per signal
    (output rate, hit rate, KV usage, the window), smoothed over 5 s, for plain SGLang, the best
    fixed cap and CONCUR."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)")
        return
    by = {r["label"]: r for r in results}
    caps = sorted((c, r) for l, r in by.items() if (c := _cap(l)))
    if caps or len(by) > 2:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        if caps:
            ax.plot([c for c, _ in caps], [r["completion_time_s"] for _, r in caps], "o-", color="C0", lw=2,
                    label="plain SGLang, fixed agent cap")
            ax.set_xscale("log", base=2)
            ax.set_xticks([c for c, _ in caps], [str(c) for c, _ in caps])
        styles = {"sglang": ("k", "--"), "sglang-limit": ("grey", ":")}
        i = 1
        for label, r in by.items():
            if _cap(label):
                continue
            color, ls = styles.get(label, (f"C{i}", "-" if label.startswith("concur") else "-."))
            i += label not in styles
            name = {"sglang": "plain SGLang", "sglang-limit": "no-eviction limit"}.get(label, label)
            ax.axhline(r["completion_time_s"], color=color, ls=ls, lw=1.6, label=f"{name}: {r['completion_time_s']:.0f} s")
        ax.set_xlabel("client-side agent cap (plain SGLang)")
        ax.set_ylabel("batch completion time (s)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "completion.png"), dpi=120)
        plt.close(fig)
    chosen = [by[l] for l in ("sglang",) if l in by]
    if caps:
        chosen.append(min((r for _, r in caps), key=lambda r: r["completion_time_s"]))
    chosen += [r for l, r in by.items() if l.startswith("concur")]
    def tokens(r: Dict[str, Any]) -> bool:  # native's window is a token budget, the others' an agent count
        args = list(r.get("server", {}).get("extra_args", []))
        policy = args[args.index("--concur-policy") + 1] if "--concur-policy" in args[:-1] else "native"
        return "--concur-enable" in args and policy == "native"

    panels = [("output_tokens_per_s", "output tok/s", None), ("hit_rate", "prefix hit rate", None),
              ("kv_usage", "KV usage", None), ("window", "agent window (agents)", False),
              ("window", "token budget (tokens)", True), ("active_agents", "active agents", None)]
    colors = {r["label"]: f"C{j}" for j, r in enumerate(chosen)}  # one colour per run in every panel

    def series(r: Dict[str, Any], k: str, unit: Optional[bool]) -> List[Tuple[float, float]]:
        if unit is not None and tokens(r) != unit:
            return []
        return [(x["t"], x[k]) for x in r["timeline"] if x.get(k) is not None]

    panels = [p for p in panels if any(series(r, p[0], p[2]) for r in chosen)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.1 * len(panels)), sharex=True, squeeze=False)
    for ax, (k, name, unit) in zip(axes[:, 0], panels):
        for r in chosen:
            pts = series(r, k, unit)
            if pts:
                ax.plot(*_smooth(pts), label=r["label"], lw=1.2, color=colors[r["label"]])
        ax.set_ylabel(name, fontsize=8)
        ax.legend(fontsize=6, loc="upper right")
    axes[-1, 0].set_xlabel("time (s), 5-s moving average")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "timeline.png"), dpi=110)
    plt.close(fig)


def plot_series(series: Sequence[Tuple[float, Sequence[Dict[str, Any]]]], out: str) -> None:
    """time-scales.png: the U over fixed caps at each tool-time scale, CONCUR as markers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (ts, results) in enumerate(series):
        by = {r["label"]: r for r in results}
        limit = by.get("sglang-limit", {}).get("completion_time_s")
        norm = limit or 1.0
        caps = sorted((c, r) for l, r in by.items() if (c := _cap(l)))
        if caps:
            ax.plot([c for c, _ in caps], [r["completion_time_s"] / norm for _, r in caps], "o-", color=f"C{i}",
                    label=f"tool waits x{ts:g}: fixed caps")
        for j, (label, mark) in enumerate((("concur-native", "*"), ("concur-aimd", "^"), ("sglang", "x"))):
            if label in by:
                ax.axhline(by[label]["completion_time_s"] / norm, color=f"C{i}", ls=["-", "--", ":"][j], lw=1,
                           label=f"x{ts:g}: {label}")
    ax.set_xscale("log", base=2)
    ticks = sorted({c for _, results in series for c in map(_cap, (r["label"] for r in results)) if c})
    ax.set_xticks(ticks, [str(c) for c in ticks])
    ax.set_xlabel("client-side agent cap (plain SGLang)")
    ax.set_ylabel("completion time / no-eviction limit")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "time-scales.png"), dpi=120)
    plt.close(fig)


def cmd_plot(a: argparse.Namespace) -> int:
    """Re-draw the plots and the table of a finished sweep directory from its per-run JSON files."""
    if not os.path.isdir(a.dir):
        raise SystemExit(f"sglang_concur.bench: error: plot: no such directory {a.dir!r}")
    points = sorted((float(n.split("-", 2)[2]), n) for n in os.listdir(a.dir)
                    if re.fullmatch(r"time-scale-[0-9]+(\.[0-9]+)?", n) and os.path.isdir(os.path.join(a.dir, n)))
    if points:  # a --time-scales series: each point's plots, then time-scales.png
        series = [(ts, _runs_in(os.path.join(a.dir, n))) for ts, n in points]
        for (ts, runs), (_, n) in zip(series, points):
            plot(runs, os.path.join(a.dir, n))
            print(f"tool waits x{ts:g}\n{table(runs)}\n")
        plot_series(series, a.dir)
        return 0
    runs = _runs_in(a.dir)
    plot(runs, a.dir)
    print(table(runs))
    return 0


def _runs_in(path: str) -> List[Dict[str, Any]]:
    """The per-run results of a sweep directory, in table order (plain, caps, mrr, CONCUR)."""
    runs = []
    for name in sorted(os.listdir(path)):
        if name.endswith(".json") and name not in ("sweep.json", "compare.json"):
            with open(os.path.join(path, name)) as f:
                r = json.load(f)
            if isinstance(r, dict) and "timeline" in r:
                runs.append(r)

    def order(r: Dict[str, Any]) -> Tuple[int, int, str]:
        label = r["label"]
        group = 0 if label.split("@")[0] == "sglang" else 1 if "-cap" in label else 2 if "-mrr" in label else 3
        digits = "".join(ch for ch in label.rsplit("-", 1)[-1] if ch.isdigit())
        return group, int(digits or 0), label

    if not runs:
        raise SystemExit(f"sglang_concur.bench: error: plot: no run results (*.json with a timeline) in {path!r}")
    return sorted(runs, key=order)


def cmd_run(a: argparse.Namespace) -> int:
    p = apply_overrides(PRESETS[a.preset], a)
    agents = build_trace(p, a.trace)
    cfg = RunConfig(label=a.label, url=a.url, agent_cap=a.agent_cap, client_cap=a.client_cap, client=a.client,
                    arrival_rate=a.arrival_rate, progress=not a.no_progress, tokenizer=a.tokenizer or p.model,
                    model=a.model_name)
    res = run_trace(agents, cfg)
    out = run_dir(a.out)
    write_results(res, os.path.join(out, f"{a.label}.json"))
    print(table([res]) + f"\n\nresults: {out}")
    return 0 if res["failed_turns"] == 0 else 1


def cmd_generate(a: argparse.Namespace) -> int:
    base = PRESETS[a.preset] if a.preset else Preset("full-size trace", "", agents=64, max_total_tokens=0)
    p = apply_overrides(base, a)
    agents = build_trace(p, None)
    dump_trace(agents, a.output)
    print(json.dumps(summary(agents), indent=1))
    print(f"wrote {len(agents)} agents to {a.output}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line naming the problem (no usage dump)
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m sglang_concur.bench", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def trace_opts(s: argparse.ArgumentParser) -> None:
        s.add_argument("--agents", type=_int_at_least(1), help="number of agents (generated trace)")
        s.add_argument("--seed", type=_int_at_least(0))
        s.add_argument("--scale", type=_number(0, lo_open=True), help="multiplies every token count of the generated trace")
        s.add_argument("--shape", choices=sorted(SHAPES), help="a trace shaped on public agent-trace statistics")
        s.add_argument("--turns-scale", type=_number(0, lo_open=True), help="multiplies turns per agent")
        s.add_argument("--time-scale", type=_number(0), help="multiplies tool latencies")
        s.add_argument("--long-fraction", type=_number(0, 1), help="share of agents with long_factor x larger observations")
        s.add_argument("--long-factor", type=_number(0, lo_open=True))

    def server_opts(s: argparse.ArgumentParser) -> None:
        s.add_argument("--trace", help="replay this JSONL trace instead of generating one")
        s.add_argument("--model")
        s.add_argument("--max-total-tokens", type=_int_at_least(1), help="KV pool size in tokens")
        s.add_argument("--concur-args", help='flags for the CONCUR server, e.g. "--concur-policy static --concur-initial-window 4"')
        s.add_argument("--server-args", help="extra flags for every server")
        s.add_argument("--client-cap", type=_int_at_least(1), help="a framework's own cap on trajectories in flight "
                                                                   "(like slime's semaphore), for every run")
        s.add_argument("--out", default="benchmark/runs")
        s.add_argument("--no-progress", action="store_true")

    c = sub.add_parser("compare", help="plain SGLang vs SGLang --concur-enable on the same trace")
    c.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    trace_opts(c)
    server_opts(c)
    c.add_argument("--client", choices=list(CLIENTS), default="routing-key-end", help="how the client names agents")
    c.set_defaults(fn=cmd_compare)

    w = sub.add_parser("sweep", help="plain, fixed agent caps, the no-eviction limit, --max-running-requests, CONCUR "
                                     "policies under client modes; Markdown table and PNG plots")
    w.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    trace_opts(w)
    server_opts(w)
    w.add_argument("--clients", type=_clients, help="comma-separated client modes for the CONCUR runs "
                                                    f"(default routing-key-end): {', '.join(CLIENTS)}; plain "
                                                    "SGLang and its caps under one of them when --runs names "
                                                    "them, e.g. sglang@openai,sglang-cap4@openai")
    w.add_argument("--time-scales", type=_number_list, help="comma-separated tool-time multipliers: the whole "
                                                            "sweep at each (a series from light to heavy tools)")
    w.add_argument("--runs", help="comma-separated subset of the preset's runs, e.g. sglang-cap4,concur-native")
    w.set_defaults(fn=cmd_sweep)

    r = sub.add_parser("run", help="drive a trace against a running server")
    r.add_argument("--url", required=True)
    r.add_argument("--client", choices=list(CLIENTS), default="routing-key-end")
    r.add_argument("--tokenizer", help="tokenizer (model directory) for --client openai; default: the preset's model")
    r.add_argument("--model-name", default="default", help="`model` field for --client openai")
    r.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke", help="trace shape when no --trace")
    trace_opts(r)
    r.add_argument("--trace")
    r.add_argument("--label", default="run")
    r.add_argument("--agent-cap", type=_int_at_least(1), help="client-side cap on agents in flight")
    r.add_argument("--client-cap", type=_int_at_least(1), help="a framework's own trajectory cap")
    r.add_argument("--arrival-rate", type=_number(0, lo_open=True), help="Poisson agent arrivals per second (default: all at once)")
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
    try:
        return a.fn(a)
    except (TraceError, ValueError, OSError) as e:  # bad input: one line, no traceback
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.strerror}: {e.filename!r}"
        raise SystemExit(f"sglang_concur.bench: error: {msg}") from None


if __name__ == "__main__":
    sys.exit(main())

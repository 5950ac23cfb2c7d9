"""Microbenchmark of the per-agent KV footprint kernel (sglang_concur_kernels.footprint).

On CUDA: times the Triton kernel (CUDA events, warmup, median of N) over
num_slots x num_agents x owner-map distribution x kernel mode, and compares it
with a same-size device copy of the int32 owner map (``dst.copy_(src)``, i.e.
what ``clone()`` does minus the allocation; read + write bytes):

    copy_bw     = 2 * 4 * num_slots / t_copy
    achieved_bw = 4 * num_slots / t_kernel          (bytes read by the kernel)
    fraction    = achieved_bw / copy_bw             (goal: >= 0.70 at 1M slots, 10k agents)

Two kernel timings are reported: ``e2e`` = what ``agent_footprints(...)`` costs
(memset of the output + kernel) and ``kernel`` = the kernel alone
(``accumulate=True``). By default the L2 cache is flushed (a 256 MiB memset)
before every timed launch, so the owner map is read from DRAM as in the
scheduler (H100 L2 = 50 MB would otherwise hold even the 4M-slot map); the
flush also keeps the GPU busy while the launch is queued, so CPU launch
overhead is not timed. ``--no-flush-l2`` times hot-cache repeats instead.

On CPU: only the torch reference (``torch.bincount``) is timed; the kernel
figures need a GPU.

Usage:
    python benchmark/kernel_footprint_bench.py [--out DIR] [--iters 50] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "sgl-kernel"))

from sglang_concur_kernels import footprint as fp  # noqa: E402

DEFAULT_OUT = _ROOT / "benchmark" / "results" / "kernel_footprint"
GOAL_SLOTS, GOAL_AGENTS, GOAL_FRACTION = 1 << 20, 10_000, 0.70


def make_owner_map(n: int, num_agents: int, dist: str, device, seed: int = 0) -> torch.Tensor:
    """``runs256``: contiguous runs, lengths uniform in [1, 511] (mean ~256);
    ``random``: i.i.d. owners. Both: ~10% shared, ~10% free."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def owners(k):
        x = torch.randint(0, max(num_agents, 1), (k,), generator=g, dtype=torch.int32)
        if num_agents == 0:
            x.fill_(-1)
        u = torch.rand(k, generator=g)
        x[u < 0.2] = -1
        x[u < 0.1] = fp.SHARED
        return x

    if dist == "random":
        x = owners(n)
    elif dist.startswith("runs"):
        mean = int(dist[4:] or 256)
        k = n // max(1, mean // 2) + 2
        lens = torch.randint(1, 2 * mean, (k,), generator=g)
        x = torch.repeat_interleave(owners(k), lens)[:n]
        if x.numel() < n:
            x = torch.cat([x, torch.full((n - x.numel(),), -1, dtype=torch.int32)])
    else:
        raise ValueError(dist)
    return x.contiguous().to(device)


def cuda_time_us(fn, iters: int, warmup: int, flush: torch.Tensor | None) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        if flush is not None:
            flush.zero_()  # evict L2; also queues work ahead of the launch
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def cpu_time_us(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def modes_for(num_agents: int, wanted: list[str]) -> list[str]:
    out = []
    for m in wanted:
        if m == "hist" and fp._next_pow2(num_agents + 2) > fp._HIST_HARD_CAP:
            continue
        out.append(m)
    return out


def bench_cuda(args) -> dict:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    flush = None if args.no_flush_l2 else torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    rows = []
    for n in args.slots:
        src_copy = torch.ones(n, dtype=torch.int32, device=dev)
        dst_copy = torch.empty_like(src_copy)
        t_copy = cuda_time_us(lambda: dst_copy.copy_(src_copy), args.iters, args.warmup, flush)
        copy_bw = 2 * 4 * n / (t_copy * 1e-6)
        for a in args.agents:
            for dist in args.dists:
                owner = make_owner_map(n, a, dist, dev, seed=n + a)
                want = fp.agent_footprints_ref(owner.cpu(), a)
                x2 = (owner.to(torch.int64) + 2)
                t_bincount = cuda_time_us(
                    lambda: torch.bincount(x2, minlength=a + 2), args.iters, args.warmup, flush
                )
                for mode in modes_for(a, args.modes):
                    resolved = fp.choose_mode(a) if mode == "auto" else mode
                    out = torch.zeros(a + 1, dtype=torch.int32, device=dev)
                    got = fp.agent_footprints(owner, a, out, mode=mode)
                    torch.cuda.synchronize()
                    ok = torch.equal(got.cpu(), want)
                    t_e2e = cuda_time_us(lambda: fp.agent_footprints(owner, a, out, mode=mode), args.iters, args.warmup, flush)
                    t_k = cuda_time_us(
                        lambda: fp.agent_footprints(owner, a, out, mode=mode, accumulate=True),
                        args.iters,
                        args.warmup,
                        flush,
                    )
                    row = dict(
                        num_slots=n,
                        num_agents=a,
                        dist=dist,
                        mode=mode,
                        resolved_mode=resolved,
                        correct=ok,
                        copy_us=t_copy,
                        copy_bw_GBps=copy_bw / 1e9,
                        e2e_us=t_e2e,
                        kernel_us=t_k,
                        e2e_bw_GBps=4 * n / (t_e2e * 1e-6) / 1e9,
                        kernel_bw_GBps=4 * n / (t_k * 1e-6) / 1e9,
                        e2e_frac_of_copy=(4 * n / t_e2e) / (2 * 4 * n / t_copy),
                        kernel_frac_of_copy=(4 * n / t_k) / (2 * 4 * n / t_copy),
                        torch_bincount_us=t_bincount,
                    )
                    rows.append(row)
                    print(
                        f"n={n:>8} A={a:>6} {dist:>8} {mode:>5}({resolved:>4}) ok={ok} "
                        f"copy={t_copy:7.2f}us ({copy_bw / 1e9:6.0f} GB/s) "
                        f"kernel={t_k:7.2f}us ({row['kernel_frac_of_copy']:.2f}) "
                        f"e2e={t_e2e:7.2f}us ({row['e2e_frac_of_copy']:.2f}) bincount={t_bincount:7.2f}us",
                        flush=True,
                    )
    return dict(
        device=props.name,
        backend="cuda",
        flush_l2=flush is not None,
        rows=rows,
    )


def bench_cpu(args) -> dict:
    print("No CUDA device: timing the torch reference (torch.bincount) only. "
          "The Triton kernel figures (and the 70%-of-copy goal) need a GPU.")
    rows = []
    for n in args.slots:
        src = torch.ones(n, dtype=torch.int32)  # touched: no page faults in the timing
        dst = torch.zeros_like(src)
        t_copy = cpu_time_us(lambda: dst.copy_(src), args.iters, args.warmup)
        for a in args.agents:
            for dist in args.dists:
                owner = make_owner_map(n, a, dist, "cpu", seed=n + a)
                t_ref = cpu_time_us(lambda: fp.agent_footprints_ref(owner, a), args.iters, args.warmup)
                rows.append(
                    dict(
                        num_slots=n,
                        num_agents=a,
                        dist=dist,
                        mode="reference",
                        copy_us=t_copy,
                        ref_us=t_ref,
                        ref_frac_of_copy=(4 * n / t_ref) / (2 * 4 * n / t_copy),
                        kernel_us=None,
                    )
                )
                print(f"n={n:>8} A={a:>6} {dist:>8} reference={t_ref:9.1f}us copy={t_copy:8.1f}us", flush=True)
    return dict(device=platform.processor() or platform.machine(), backend="cpu", rows=rows,
                note="CPU run: torch reference only; kernel figures need a GPU")


def write_results(res: dict, args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.update(
        torch=torch.__version__,
        triton=_triton_version(),
        iters=args.iters,
        warmup=args.warmup,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
        config=dict(
            RUNS_BLOCK=fp.RUNS_BLOCK,
            RUNS_NUM_WARPS=fp.RUNS_NUM_WARPS,
            HIST_BLOCK=fp.HIST_BLOCK,
            HIST_NUM_WARPS=fp.HIST_NUM_WARPS,
            HIST_MAX_BINS=fp.HIST_MAX_BINS,
            HIST_PROGRAMS_PER_SM=fp.HIST_PROGRAMS_PER_SM,
        ),
    )
    (out / f"results_{res['backend']}.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Footprint kernel microbenchmark ({res['backend']}: {res['device']})", ""]
    lines.append(f"torch {res['torch']}, triton {res['triton']}, median of {args.iters} (warmup {args.warmup}), {res['timestamp']}")
    lines.append("")
    if res["backend"] == "cuda":
        lines.append(f"L2 flushed before each launch: {res['flush_l2']}. fraction = (4*N/t) / (8*N/t_copy).")
        lines += ["", "| slots | agents | dist | mode | ok | copy us | copy GB/s | kernel us | kernel frac | e2e us | e2e frac | bincount us |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            lines.append(
                f"| {r['num_slots']} | {r['num_agents']} | {r['dist']} | {r['mode']}({r['resolved_mode']}) | {r['correct']} "
                f"| {r['copy_us']:.2f} | {r['copy_bw_GBps']:.0f} | {r['kernel_us']:.2f} | {r['kernel_frac_of_copy']:.2f} "
                f"| {r['e2e_us']:.2f} | {r['e2e_frac_of_copy']:.2f} | {r['torch_bincount_us']:.2f} |"
            )
        goal = [r for r in res["rows"] if r["num_slots"] == GOAL_SLOTS and r["num_agents"] == GOAL_AGENTS and r["mode"] == "auto"]
        lines.append("")
        for r in goal:
            verdict = "MET" if r["kernel_frac_of_copy"] >= GOAL_FRACTION else "NOT MET"
            lines.append(f"Goal (>= {GOAL_FRACTION:.0%} of copy bandwidth at 1M slots, 10k agents, {r['dist']}): "
                         f"kernel {r['kernel_frac_of_copy']:.2f}, e2e {r['e2e_frac_of_copy']:.2f} -> {verdict}")
    else:
        lines.append("**CPU run: torch reference only. The Triton kernel figures need a GPU.** "
                     "CPU timings (reference includes validation) are informational; on a shared machine they are noisy.")
        lines += ["", "| slots | agents | dist | reference us | copy us | ref frac of copy |", "|---|---|---|---|---|---|"]
        for r in res["rows"]:
            lines.append(f"| {r['num_slots']} | {r['num_agents']} | {r['dist']} | {r['ref_us']:.1f} | {r['copy_us']:.1f} | {r['ref_frac_of_copy']:.3f} |")
    (out / f"results_{res['backend']}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / ('results_' + res['backend'] + '.json')} and .md")


def _triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:  # pragma: no cover
        return None


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--slots", type=_ints, default=[1 << 16, 1 << 18, 1 << 20, 1 << 22])
    p.add_argument("--agents", type=_ints, default=[100, 1000, 10_000])
    p.add_argument("--dists", type=lambda s: s.split(","), default=["runs256", "random"])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["auto", "runs", "hist"],
                   help="kernel modes to time (CUDA); hist is skipped where too many agents")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 50 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--no-flush-l2", action="store_true")
    p.add_argument("--cpu", action="store_true", help="force the CPU (reference-only) run")
    args = p.parse_args(argv)
    use_cuda = torch.cuda.is_available() and not args.cpu and os.environ.get("TRITON_INTERPRET", "0") != "1"
    args.iters = args.iters or (50 if use_cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if use_cuda else 1)
    res = bench_cuda(args) if use_cuda else bench_cpu(args)
    write_results(res, args)


if __name__ == "__main__":
    main()

"""Per-scheduler-step CPU cost of the controller (the gate's work in `get_new_batch_prefill`).

Drives the real `SchedulerGate` glue against a stand-in scheduler object (its queue, running batch
and pool stats are plain Python here: the cost measured is the controller's own, not SGLang's).
Writes results.json and results.md under --out.

    python benchmark/controller_overhead.py --agents 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from sglang_concur.cpu import apply  # noqa: E402

apply()
from sglang_concur.config import ConcurConfig  # noqa: E402
from sglang_concur.scheduler_hook import SchedulerGate  # noqa: E402


class Batch:
    def __init__(self, reqs):
        self.reqs = reqs
        self.batch_to_run = None

    def is_empty(self):
        return not self.reqs


def fake_scheduler(queue, running):
    tree = SimpleNamespace(on_release=lambda req, checkpointed: None, update_eviction_metrics=lambda n, t: None)
    pool = SimpleNamespace(get_max_pool_usage=lambda: 0.4)
    s = SimpleNamespace(
        waiting_queue=queue, chunked_req=None, max_total_num_tokens=1_000_000, tree_cache=tree, metrics_collector=None, tp_size=1,
        pool_stats_observer=SimpleNamespace(get_pool_stats=lambda: pool), idle_sleeper=None,
        _request_dispatcher=SimpleNamespace(__iadd__=None),
    )
    s.get_new_batch_prefill = lambda running_batch: Batch([])
    return s


def req(agent):
    return SimpleNamespace(routing_key=agent, origin_input_ids=[0] * 1000, prefix_len=0)


def scenario(agents: int, window: int, running: int, queued: int, seed: int = 0):
    rng = random.Random(seed)
    ids = [f"agent-{i}" for i in range(agents)]
    run = [req(a) for a in rng.sample(ids, running)]
    queue = [req(a) for a in rng.sample(ids, queued)]
    return ids, run, queue


def measure(agents: int, window: int, running: int, queued: int, steps: int, policy: str = "static",
            event_every_step: bool = False) -> dict:
    """`event_every_step`: every step also sees an event (a request admitted or released), so the
    admission decision reruns each time (the worst case; in steady state it reruns only on events)."""
    _, run, queue = scenario(agents, window, running, queued)
    sched = fake_scheduler(list(queue), run)
    import sglang.utils as su

    orig = su.TypeBasedDispatcher
    sched._request_dispatcher = orig([])
    gate = SchedulerGate(sched, ConcurConfig(concur_enable=True, concur_policy=policy, concur_initial_window=min(window, 4096),
                                             concur_control_interval=1.0))
    rb = Batch(run)
    for _ in range(3):  # warm up: control steps see the running agents, then the gate decides
        gate.controller.next_control = 0.0
        gate.get_new_batch_prefill(rb)
    for _ in range(50):
        gate.get_new_batch_prefill(rb)
    samples = []
    for _ in range(steps):
        if event_every_step:
            gate._epoch += 1
        t0 = time.perf_counter_ns()
        gate.get_new_batch_prefill(rb)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    samples.sort()
    return {"policy": policy, "steps": "event every step" if event_every_step else "steady", "agents": agents, "window": window if policy != "native" else "tokens", "running": running, "queued": queued,
            "median_us": round(statistics.median(samples), 2), "p90_us": round(samples[int(0.9 * len(samples))], 2),
            "held": len(gate.controller.held)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "controller_overhead"))
    a = ap.parse_args()
    n = a.agents
    cases = [  # (window, running requests, queued requests)
        (n, n // 4, 0),            # no pressure: nothing queued
        (n, n // 4, n // 20),      # no pressure: a few new turns queued
        (n // 4, n // 4, n // 10), # window binding: some agents held
        (n // 4, n // 4, n // 2),  # heavy: half the agents queued, most held
    ]
    rows = [measure(n, w, r, q, a.steps, event_every_step=e) for e in (False, True) for w, r, q in cases]
    rows += [measure(n, n, n // 4, q, a.steps, "native", e) for e in (False, True) for q in (n // 20, n // 2)]
    os.makedirs(a.out, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "budget_us": 50}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = ["| policy | steps | agents | window | running | queued | held | median us/step | p90 us/step |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['policy']} | {r['steps']} | {r['agents']} | {r['window']} | {r['running']} | {r['queued']} | {r['held']} | {r['median_us']} | {r['p90_us']} |" for r in rows]
    text = "\n".join(lines)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(f"Controller work per scheduler step ({meta['machine']}, Python {meta['python']}); budget 50 us.\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()

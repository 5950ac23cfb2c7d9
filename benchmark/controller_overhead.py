"""Per-scheduler-step CPU cost of the controller (the gate's work in `get_new_batch_prefill`).

Drives the real `SchedulerGate` glue against a stand-in scheduler object (its queue, running batch
and pool stats are plain Python here: the cost measured is the controller's own, not SGLang's;
the stand-in's own work in each step is timed and subtracted).  Two kinds of steps:
- steady: nothing happens between steps (decode steps);
- an event every step: each step SGLang admits a queued request of an active agent into a prefill
  batch, or a running request finishes and its agent's next turn arrives (a real admission or
  release through the hooks, not a forced re-decision).
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
import subprocess
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from sglang_concur.cpu import apply  # noqa: E402

apply()
from sglang_concur.config import ConcurConfig  # noqa: E402
from sglang_concur.scheduler_hook import SchedulerGate  # noqa: E402


class Req:
    __slots__ = ("routing_key", "origin_input_ids", "prefix_len", "done", "__dict__")

    def __init__(self, agent: str) -> None:
        self.routing_key, self.origin_input_ids, self.prefix_len, self.done = agent, range(1000), 0, False

    def finished(self) -> bool:
        return self.done

    def owned_kv_len(self) -> int:
        return 1000


class Batch:
    def __init__(self, reqs):
        self.reqs = reqs
        self.prefill_stats = SimpleNamespace(log_hit_tokens=900, log_input_tokens=100)

    def is_empty(self):
        return not self.reqs


class FakeScheduler:
    """Just what the gate touches.  `admit_next` makes SGLang's pass admit one eligible request."""

    def __init__(self, queue, running):
        self.waiting_queue, self.running = queue, running
        self.chunked_req, self.max_total_num_tokens, self.max_queued_requests = None, 1_000_000, None
        self.metrics_collector, self.tp_size, self.idle_sleeper = None, 1, None
        self.tree_cache = SimpleNamespace(on_release=lambda req, checkpointed: None,
                                          update_eviction_metrics=lambda n, t: None)
        pool = SimpleNamespace(get_max_pool_usage=lambda: 0.4)
        self.pool_stats_observer = SimpleNamespace(get_pool_stats=lambda: pool)
        self.grammar_manager = SimpleNamespace(has_waiting_grammars=lambda: False)
        import sglang.utils as su

        self._request_dispatcher = su.TypeBasedDispatcher([])
        self.admit_next, self.own_ns = False, 0

    def get_new_batch_prefill(self, running_batch):
        t0 = time.perf_counter_ns()
        plan = SimpleNamespace(batch_to_run=None, running_batch=running_batch)
        if self.admit_next and self.waiting_queue:
            r = self.waiting_queue[-1]
            self.waiting_queue = self.waiting_queue[:-1]  # SGLang rebuilds the queue without the admitted ones
            running_batch.reqs.append(r)
            plan.batch_to_run = Batch([r])
        self.own_ns += time.perf_counter_ns() - t0
        return plan

    def _add_request_to_queue(self, req, is_retracted=False):
        self.waiting_queue.append(req)

    def _abort_on_queued_limit(self, req):
        return False

    def _poll_timeout_aborts(self):
        return []


def measure(agents: int, window: int, running: int, queued: int, steps: int, policy: str = "static",
            events: bool = False, new_agents: bool = False) -> dict:
    """`new_agents`: a request of an agent never seen arrives every step (a full decision each time)."""
    rng = random.Random(0)
    ids = [f"agent-{i}" for i in range(agents)]
    run_ids = rng.sample(ids, running)
    rest = [a for a in ids if a not in set(run_ids)]
    queue = [Req(a) for a in rng.sample(run_ids, min(running, queued // 2))]  # turns of running (admitted) agents
    queue += [Req(a) for a in rng.sample(rest, queued - len(queue))]  # new agents' first turns
    rb = Batch([Req(a) for a in run_ids])
    s = FakeScheduler(queue, rb.reqs)
    gate = SchedulerGate(s, ConcurConfig(concur_enable=True, concur_policy=policy, concur_initial_window=min(window, 4096),
                                         concur_control_interval=60.0))
    gate.now = 1.0
    gate.get_new_batch_prefill(rb)  # first control step: the running agents are active
    for _ in range(50):
        gate.get_new_batch_prefill(rb)
    samples = []
    for i in range(steps):
        s.admit_next = events and i % 2 == 0
        if events and i % 2 == 1:  # a running request finishes; its agent's next turn arrives
            r = rb.reqs.pop(0)
            r.done = True
            s.tree_cache.on_release(r, checkpointed=True)
            s._add_request_to_queue(Req(r.routing_key))
        if new_agents:
            s._add_request_to_queue(Req(f"new-{i}"))
        gate.now += 0.001
        s.own_ns = 0
        t0 = time.perf_counter_ns()
        gate.get_new_batch_prefill(rb)
        samples.append((time.perf_counter_ns() - t0 - s.own_ns) / 1000)
    samples.sort()
    kind = "a new agent every step" if new_agents else "an admission or release every step" if events else "steady"
    return {"policy": policy, "steps": kind, "agents": agents,
            "window": window if policy != "native" else "tokens", "running": running, "queued": queued,
            "held": len(gate.controller.held), "median_us": round(statistics.median(samples), 2),
            "p90_us": round(samples[int(0.9 * len(samples))], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "controller_overhead"))
    a = ap.parse_args()
    if a.agents < 20 or a.steps < 10:
        raise SystemExit("controller_overhead: error: need --agents >= 20 and --steps >= 10")
    n = a.agents
    cases = [  # (window, running requests, queued requests)
        (n, n // 4, 0),            # no pressure: nothing queued
        (n, n // 4, n // 20),      # no pressure: a few turns queued
        (n // 4, n // 4, n // 10), # window binding: some agents held
        (n // 4, n // 4, n // 2),  # heavy: half the agents queued, most held
    ]
    rows = [measure(n, w, r, q, a.steps, events=e) for e in (False, True) for w, r, q in cases]
    rows += [measure(n, n, n // 4, q, a.steps, "native", e) for e in (False, True) for q in (n // 20, n // 2)]
    rows += [measure(n, w, r, q, a.steps // 4, pol, True, True) for pol in ("static", "native") for w, r, q in cases[2:]]
    os.makedirs(a.out, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__)).stdout.strip() or "unknown"
    meta = {"python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "commit": commit, "command": "python benchmark/controller_overhead.py "
            + " ".join(sys.argv[1:]), "budget_us": {"steady": 5, "events": 50}}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = ["| policy | steps | agents | window | running | queued | held | median us/step | p90 us/step |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['policy']} | {r['steps']} | {r['agents']} | {r['window']} | {r['running']} | {r['queued']} | "
              f"{r['held']} | {r['median_us']} | {r['p90_us']} |" for r in rows]
    text = "\n".join(lines)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(f"Controller work per scheduler step. Commit {commit}, `{meta['command']}`, {meta['machine']} "
                f"({os.cpu_count()} cores), Python {meta['python']}. Budget: 5 us steady, 50 us with an event.\n\n"
                f"{text}\n")
    print(text)


if __name__ == "__main__":
    main()

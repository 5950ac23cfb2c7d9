"""Tensor and data parallelism on real SGLang (CPU).

- `--tp-size 2`: every TP rank runs its own gate and must admit the same requests at the same step,
  or the ranks run different batches.  An agent batch that makes the window move (a tiny pool) runs
  under each policy; every rank's decision digest (a checksum over every admission state change)
  is gathered at the status request and must be equal.
- `--dp-size 2`: every request of one agent goes to the same DP rank (a stable hash of its id), so
  its history is cached on one rank only; status fans out to both.
SGLang needs SGLANG_CPU_OMP_THREADS_BIND and an explicit --max-total-tokens for TP on CPU."""

from __future__ import annotations

import random
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sglang_concur.bench.server import cpu_server
from sglang_concur.server_hook import dp_rank

AGENTS, TURNS = 6, 4


def run_agents(url: str, prefix: str, header: bool = False) -> None:
    def agent(i: int) -> int:
        rng, name = random.Random(i), f"{prefix}-{i}"
        hist = [7] * 24
        for _ in range(TURNS):
            hist = hist + [rng.randrange(10, 500) for _ in range(70)]
            body = {"input_ids": hist, "sampling_params": {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}}
            if header:
                r = requests.post(url + "/generate", json=body, headers={"X-SMG-Routing-Key": name}, timeout=300)
            else:
                r = requests.post(url + "/generate", json={**body, "routing_key": name}, timeout=300)
            assert r.ok, r.text
            hist += r.json()["output_ids"]
        return TURNS

    with ThreadPoolExecutor(AGENTS) as pool:
        assert list(pool.map(agent, range(AGENTS))) == [TURNS] * AGENTS


@pytest.mark.parametrize("policy", ["static", "aimd", "native"])
def test_tp2_every_rank_takes_the_same_decisions(tiny_model, policy):
    extra = {"static": ["--concur-initial-window", "3"], "aimd": ["--concur-initial-window", "2", "--concur-max-window", "4"], "native": []}[policy]
    flags = ["--tp-size", "2", "--concur-enable", "--concur-policy", policy, "--concur-control-interval", "0.1",
             "--log-level", "info", *extra]
    srv = cpu_server(tiny_model, flags, max_total_tokens=900)
    srv.env["SGLANG_CPU_OMP_THREADS_BIND"] = "0|1"
    with srv:
        run_agents(srv.url, f"tp-{policy}")
        st = requests.get(srv.url + "/concur/status", timeout=60).json()["ranks"][0]
        digests = st["decision_digests"]
        assert len(digests) == 2 and digests[0] == digests[1], digests
        assert st["decision_digest"] == digests[0] and st["held_requests"] == 0
        # 6 agents, none ends, at most 3 or 4 admitted (native: a 900-token pool): some waited
        assert st["held_agents_total"] > 0, "the gate never held or paused an agent: the test checked nothing"
        log = open(srv.log_path).read()
    # every window change was logged by both ranks, with the same digest
    changes = Counter(re.findall(r"concur window change, (old=\d+, new=\d+).*digest=([0-9a-f]+)", log))
    assert all(n % 2 == 0 for n in changes.values()), changes


def test_dp2_pins_every_agent_to_one_rank(tiny_model):
    flags = ["--dp-size", "2", "--concur-enable", "--concur-policy", "static", "--concur-initial-window", "16",
             "--concur-control-interval", "0.1"]
    srv = cpu_server(tiny_model, flags, max_total_tokens=4096)
    srv.env["SGLANG_CPU_OMP_THREADS_BIND"] = "0|1"
    with srv:
        run_agents(srv.url, "dp", header=True)
        ranks = requests.get(srv.url + "/concur/status", timeout=60).json()["ranks"]
    assert len(ranks) == 2
    seen = [{a: v["turns"] for a, v in r["agents"].items()} for r in ranks]
    names = [f"dp-{i}" for i in range(AGENTS)]
    where = {}
    for name in names:
        on = [i for i in (0, 1) if name in seen[i]]
        assert len(on) == 1 and seen[on[0]][name] == TURNS, (name, seen)  # every turn on one rank
        where[name] = on[0]
    # the rank is the agent id's stable hash: agents with the same hash share a rank, others do not
    for x in names:
        for y in names:
            assert (where[x] == where[y]) == (dp_rank(x, 2) == dp_rank(y, 2)), (x, y, where)
    assert {dp_rank(n, 2) for n in names} == {0, 1}  # (the test spreads agents over both ranks)

"""`native` live: the window is a KV-token budget starting at a quarter of the pool's capacity; agent
histories that together do not fit make the gate hold agents (priced by predicted footprint), the
budget stays within its capacity-derived bounds, and every request still completes."""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import end_agent, generate, status
from sglang_concur.bench.server import cpu_server

AGENTS, TURNS, POOL = 10, 4, 1536


@pytest.fixture(scope="module")
def server(tiny_model):
    flags = ["--concur-enable", "--concur-policy", "native", "--concur-control-interval", "0.1", "--log-level", "info"]
    with cpu_server(tiny_model, flags, max_total_tokens=POOL) as srv:
        yield srv


def agent(url: str, i: int) -> int:
    rng = random.Random(i)
    history: list = [7] * 32  # a shared system prefix
    for _ in range(TURNS):
        history = history + [rng.randrange(10, 500) for _ in range(90)]
        r = generate(url, history, max_new_tokens=16, agent=f"nat-{i}", timeout=300)
        assert r.ok, r.text
        history += r.json()["output_ids"]
    end_agent(url, f"nat-{i}")
    return TURNS


def test_budget_starts_at_a_quarter_of_capacity_and_run_completes(server):
    st = status(server.url)
    assert st["window_unit"] == "tokens" and 0.22 * POOL <= st["window"] <= 0.25 * POOL  # a slow start (SGLang may round the pool)
    with ThreadPoolExecutor(AGENTS) as pool:
        assert list(pool.map(lambda i: agent(server.url, i), range(AGENTS))) == [TURNS] * AGENTS
    st = status(server.url)
    assert st["agents"] == {} and st["held_requests"] == 0
    assert POOL / 4 * 0.9 <= st["window"] <= 2 * POOL
    changes = re.findall(r"concur window change, old=\d+, new=\d+, policy=native, .*active=(\d+), paused=(\d+), "
                         r"waiting=(\d+)", open(server.log_path).read())
    assert changes, "the budget never moved"
    assert any(int(p) + int(w) > 0 for _, p, w in changes), "the gate never held an agent"
    assert max(int(a) for a, _, _ in changes) < AGENTS

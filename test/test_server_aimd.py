"""`aimd` live: a deliberately tiny KV pool and agents whose histories do not fit make the window
shrink (Eq. 1's decrease: high usage and a low hit rate), and every request still completes."""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import end_agent, generate, status
from sglang_concur.bench.server import cpu_server

AGENTS, TURNS = 12, 3


@pytest.fixture(scope="module")
def server(tiny_model):
    flags = ["--concur-enable", "--concur-policy", "aimd", "--concur-initial-window", "8",
             "--concur-control-interval", "0.1", "--log-level", "info"]
    with cpu_server(tiny_model, flags, max_total_tokens=1024) as srv:
        yield srv


def agent(url: str, i: int) -> int:
    rng = random.Random(i)
    done = 0
    history: list = []
    for _ in range(TURNS):
        history = history + [rng.randrange(10, 500) for _ in range(120)]  # a large fresh observation
        r = generate(url, history, max_new_tokens=24, agent=f"aimd-{i}", timeout=300)
        assert r.ok, r.text
        history += r.json()["output_ids"]
        done += 1
    end_agent(url, f"aimd-{i}")
    return done


def test_window_shrinks_and_run_completes(server):
    with ThreadPoolExecutor(AGENTS) as pool:
        done = list(pool.map(lambda i: agent(server.url, i), range(AGENTS)))
    assert done == [TURNS] * AGENTS
    st = status(server.url)
    assert st["window_changes"]["down"] >= 1, st
    assert st["agents"] == {} and st["held_requests"] == 0
    changes = re.findall(r"concur window change, old=(\d+), new=(\d+), policy=aimd, kv_usage=([\d.]+), hit_rate=([\d.]+|none)",
                         open(server.log_path).read())
    downs = [c for c in changes if int(c[1]) < int(c[0])]
    assert downs, "no decrease logged"
    assert all(float(u) > 0.5 and h != "none" and float(h) < 0.2 for _, _, u, h in downs)

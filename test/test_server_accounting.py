"""Eviction and recompute accounting against independent counts (real server, real radix cache):
agent A's history is evicted by agent B's growth; A's next turn recomputes exactly the evicted part."""

from __future__ import annotations

import random
import time

import pytest
import requests

from helpers import generate, status
from sglang_concur.bench.server import cpu_server


@pytest.fixture(scope="module")
def url(tiny_model):
    flags = ["--enable-metrics", "--concur-enable", "--concur-policy", "static", "--concur-initial-window", "4",
             "--concur-control-interval", "0.1"]
    with cpu_server(tiny_model, flags, max_total_tokens=1024) as srv:
        yield srv.url


def metric(url: str, name: str, label: str = "") -> float:
    """Sum of the series `name` (those carrying `label`, e.g. 'kind="shared"')."""
    text = requests.get(url + "/metrics", timeout=30).text
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{") and label in l)


def measured(url: str) -> dict:
    """Status after a control step that follows everything sent so far (footprints are read there)."""
    status(url)
    time.sleep(0.3)
    return status(url)


def test_evicted_history_is_recomputed_exactly(url):
    rng = random.Random(0)
    obs = lambda n: [rng.randrange(10, 500) for _ in range(n)]  # noqa: E731
    p1 = obs(100)
    o1 = generate(url, p1, 8, agent="A").json()["output_ids"]
    # no pressure: the whole previous context (prompt + output, less the last sampled token, whose KV
    # is never computed) is cached, and the ledger says so before the next turn reveals it
    assert status(url)["agents"]["A"]["context_cached"] == len(p1) + len(o1) - 1
    p2 = p1 + o1 + obs(50)
    r2 = generate(url, p2, 8, agent="A").json()
    assert r2["meta_info"]["cached_tokens"] == len(p1) + len(o1) - 1
    a = status(url)["agents"]["A"]
    assert a["recomputed_tokens"] == 0 and a["turns"] == 2
    context2 = len(p2) + len(r2["output_ids"]) - 1
    assert a["context_cached"] == context2
    # the device owner map holds A's whole context (no other agent shares it)
    assert measured(url)["agents"]["A"]["kv_tokens"] == context2
    evicted_before = status(url)["evicted_tokens"]
    # B's growth needs nearly the whole 1024-token pool: A's cached history is evicted
    rb = generate(url, obs(990), 8, agent="B").json()
    m = measured(url)
    assert m["agents"]["B"]["kv_tokens"] == 990 + len(rb["output_ids"]) - 1
    p3 = p2 + r2["output_ids"] + obs(20)
    r3 = generate(url, p3, 8, agent="A").json()
    lost = context2 - r3["meta_info"]["cached_tokens"]
    assert lost > 0
    # what the owner map said A still had is exactly what A's next turn found in the cache
    assert m["agents"]["A"]["kv_tokens"] == r3["meta_info"]["cached_tokens"]
    s = status(url)
    assert s["agents"]["A"]["recomputed_tokens"] == lost and s["recomputed_tokens"] == lost
    assert s["evicted_tokens"] - evicted_before >= lost
    # the eviction counter agrees with SGLang's own, separately kept, eviction counter
    assert s["evicted_tokens"] == metric(url, "sglang:evicted_tokens_total")
    assert metric(url, "sglang:concur_recomputed_tokens_total") in (0.0, float(lost))  # exported each control step


def test_ledger_forgets_ended_agents(url):
    assert generate(url, [1, 2, 3], 2, agent="C").ok
    assert requests.post(url + "/concur/agents/C/end", timeout=30).json()["ended"] is True
    assert "C" not in status(url)["agents"]


def test_shared_prefix_is_counted_once(url):
    rng = random.Random(1)
    prefix = [rng.randrange(10, 500) for _ in range(60)]
    d = generate(url, prefix + [rng.randrange(10, 500) for _ in range(30)], 4, agent="D").json()
    before = measured(url)
    ctx_d = 90 + len(d["output_ids"]) - 1
    assert before["agents"]["D"]["kv_tokens"] == ctx_d
    e = generate(url, prefix + [rng.randrange(10, 500) for _ in range(40)], 4, agent="E").json()
    assert e["meta_info"]["cached_tokens"] == 60
    after = measured(url)
    assert after["kv_tokens_shared"] - before["kv_tokens_shared"] == 60
    assert after["agents"]["D"]["kv_tokens"] == ctx_d - 60
    assert after["agents"]["E"]["kv_tokens"] == 40 + len(e["output_ids"]) - 1
    # the same figures on /metrics (exported at each control step)
    kv = {k: metric(url, "sglang:concur_kv_tokens", f'kind="{k}"') for k in ("shared", "active", "inactive")}
    assert kv["shared"] == after["kv_tokens_shared"]
    assert kv["active"] + kv["inactive"] == sum(a["kv_tokens"] for a in after["agents"].values())

"""The gate on SGLang's pressure paths (real server on CPU, a tiny KV pool, small prefill chunks and a
queue limit): a request SGLang retracts keeps its agent in flight and is never dropped for a full
queue of held requests; a long prompt prefilled in chunks is one turn of its agent (a streaming
client that disconnects while held: test_server_concur.py).

SGLang reserves room for the tokens a request will generate before admitting it, so small requests
rarely run out of KV in decode; `SGLANG_TEST_RETRACT` (SGLang's own test switch) makes its scheduler
retract running requests every few steps through the same `retract_decode` path a full pool takes."""

from __future__ import annotations

import pytest
import requests

from helpers import Background, end_agent, generate, status, wait_for

POOL, CHUNK, QUEUE_LIMIT = 384, 64, 3


@pytest.fixture(scope="module")
def url(tiny_model):
    from sglang_concur.bench.server import cpu_server

    flags = ["--concur-enable", "--concur-policy", "static", "--concur-initial-window", "3",
             "--concur-agent-id", "routing-key", "--concur-control-interval", "0.2", "--concur-idle-timeout", "600",
             "--chunked-prefill-size", str(CHUNK), "--max-queued-requests", str(QUEUE_LIMIT)]
    srv = cpu_server(tiny_model, flags, max_total_tokens=POOL)
    srv.env.update(SGLANG_TEST_RETRACT="1", SGLANG_TEST_RETRACT_INTERVAL="10")
    with srv:
        yield srv.url


def end_all(url: str, names) -> None:
    for a in names:
        end_agent(url, a)


def test_retracted_requests_keep_their_agents_and_are_never_dropped_for_held_ones(url):
    names = [f"rt-{i}" for i in range(3)] + [f"rt-new{i}" for i in range(QUEUE_LIMIT)]
    try:
        for i in range(3):  # three agents take the window (3) after a first short turn
            assert generate(url, [10 + i] * 30, max_new_tokens=2, agent=f"rt-{i}").ok
        # new agents' requests are held and fill the queue to its limit
        held = [Background(lambda i=i: generate(url, [90 + i, 91], max_new_tokens=2, agent=f"rt-new{i}", timeout=300))
                for i in range(QUEUE_LIMIT)]
        wait_for(lambda: status(url)["held_requests"] == QUEUE_LIMIT, what="the queue full of held requests")
        # the admitted agents' next turns: accepted although the queue is full (held ones do not count),
        # then retracted by SGLang and queued again: never dropped for the full queue
        outs = [Background(lambda i=i: generate(url, [10 + i] * 31, max_new_tokens=150, agent=f"rt-{i}", timeout=300))
                for i in range(3)]
        outs = [r.result(timeout=300) for r in outs]
        assert all(o.ok for o in outs), [o.text[:200] for o in outs if not o.ok]
        assert sum(o.json()["meta_info"].get("num_retractions", 0) for o in outs) >= 1
        assert all(len(o.json()["output_ids"]) == 150 for o in outs)
        st = status(url)["agents"]
        assert all(st[f"rt-{i}"]["turns"] == 2 for i in range(3))  # each retracted turn counted once
        end_all(url, names[:3])
        assert all(h.result(timeout=120).ok for h in held)
    finally:
        end_all(url, names)


def test_a_prompt_prefilled_in_chunks_is_one_turn_of_its_agent(url):
    prompt = list(range(20, 20 + 5 * CHUNK))  # five chunks
    try:
        r = generate(url, prompt, max_new_tokens=4, agent="chunky", timeout=120)
        assert r.ok and r.json()["meta_info"]["prompt_tokens"] == len(prompt)
        a = status(url)["agents"]["chunky"]
        assert a["turns"] == 1 and a["state"] == "active" and a["admissions"] == 1
        assert a["context_cached"] == len(prompt) + 4 - 1  # the whole prompt and the reply, less its last token
    finally:
        end_agent(url, "chunky")

"""The closed-loop agent runner against one real tiny CPU server with --concur-enable."""

from __future__ import annotations

import time

import pytest
import requests

from sglang_concur.bench.runner import RunConfig, run_trace, token_ids
from sglang_concur.bench.server import cpu_server, free_port
from sglang_concur.bench.trace import AgentTrace, Turn


def trace(n_agents: int = 4, n_turns: int = 3) -> list[AgentTrace]:
    turns = tuple(Turn(append_tokens=12, output_tokens=4, tool_latency_s=0.05) for _ in range(n_turns))
    return [AgentTrace(f"r-{i}", f"p{i % 2}", 48, 8, turns) for i in range(n_agents)]


@pytest.fixture(scope="module")
def url(tiny_model):
    flags = ["--concur-enable", "--concur-idle-timeout", "600", "--concur-control-interval", "0.5"]
    with cpu_server(tiny_model, flags, max_total_tokens=8192) as srv:
        yield srv.url


def test_token_ids_deterministic():
    assert token_ids("prefix/p0", 32) == token_ids("prefix/p0", 32)
    assert token_ids("prefix/p0", 32) != token_ids("prefix/p1", 32)
    assert all(10 <= t < 500 for t in token_ids("x", 1000))


def test_native_http_trace_completes_with_cache_hits_and_ends_agents(url):
    agents = trace()
    res = run_trace(agents, RunConfig(label="t", url=url, progress=False, sample_interval_s=0.5))
    assert res["server_concur"] is True
    assert res["turns_completed"] == res["turns_planned"] == 12
    assert res["failed_turns"] == res["failed_agents"] == res["failed_attempts"] == 0
    by_agent: dict[str, list[dict]] = {}
    for t in sorted(res["turns"], key=lambda t: t["turn"]):
        by_agent.setdefault(t["agent_id"], []).append(t)
    for a in agents:
        ts = by_agent[a.agent_id]
        assert [t["turn"] for t in ts] == [0, 1, 2]
        assert ts[0]["prompt_tokens"] == 56 and all(t["output_tokens"] == 4 for t in ts)
        for prev, cur in zip(ts, ts[1:]):
            assert cur["prompt_tokens"] == prev["prompt_tokens"] + 4 + 12  # history + reply + observation
            assert cur["cached_tokens"] > 0
    assert res["hit_rate"] > 0.3 and res["recomputed_tokens"] >= 0
    assert res["completion_time_s"] > 0 and res["output_tokens"] == 48
    assert set(res["per_agent"]) == {a.agent_id for a in agents}
    assert requests.get(url + "/concur/status", timeout=10).json()["ranks"][0]["agents"] == {}


def test_closed_port_counts_failures_and_finishes():
    cfg = RunConfig(label="dead", url=f"http://127.0.0.1:{free_port()}", progress=False, max_retries=2,
                    retry_backoff_s=0.01, request_timeout_s=5)
    t = time.monotonic()
    res = run_trace(trace(3, 2), cfg)
    assert time.monotonic() - t < 30
    assert res["turns_completed"] == 0
    assert res["failed_turns"] == 3 and res["failed_agents"] == 3
    assert res["failed_attempts"] == 3 * 3  # first try + 2 retries per agent
    assert res["errors"] and all(v["failed"] and "turn 0" in v["error"] for v in res["per_agent"].values())


def test_metric_parsing():
    from sglang_concur.bench.runner import _metric

    text = ('# HELP sglang:token_usage x\nsglang:token_usage{tp_rank="0"} 0.5\nsglang:token_usage{tp_rank="1"} 0.25\n'
            'sglang:concur_window{tp_rank="0"} 8.0\nsglang:concur_window_changes_total{direction="up"} 3.0\n')
    assert _metric(text, "sglang:token_usage", mean=True) == 0.375
    assert _metric(text, "sglang:concur_window") == 8.0
    assert _metric(text, "sglang:num_running_reqs") is None


def test_openai_client_sends_as_many_tokens_as_the_trace_says(url, tiny_model):
    """--client openai turns the trace's token ids into text: the server must tokenize it back into
    as many tokens (plus the chat template), not more (a stray byte decodes to U+FFFD: three tokens)."""
    turns = (Turn(append_tokens=200, output_tokens=4, tool_latency_s=0.05),) * 2
    agents = [AgentTrace("oa-0", "oa", 300, 100, turns)]
    res = run_trace(agents, RunConfig(label="oa", url=url, progress=False, client="openai", tokenizer=tiny_model))
    assert res["failed_turns"] == 0 and res["turns_completed"] == 2
    first = min(res["turns"], key=lambda t: t["turn"])
    from transformers import AutoTokenizer

    empty = [{"role": "system", "content": ""}, {"role": "user", "content": ""}]
    ids = AutoTokenizer.from_pretrained(tiny_model).apply_chat_template(empty, add_generation_prompt=True)
    template = len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # (a BatchEncoding in newer transformers)
    assert abs(first["prompt_tokens"] - (300 + 100 + template)) <= 2, (first["prompt_tokens"], template)
    assert requests.get(url + "/concur/status", timeout=10).json()["ranks"][0]["agents"]["oa-0"]["turns"] == 2

"""--concur-enable on a real SGLang HTTP server (CPU): the static window gate, end signal, aborts,
malformed agent ids, status endpoint and metrics.  One server for the whole module."""

from __future__ import annotations

import pytest
import requests

from helpers import Background, end_agent, generate, status, wait_for
from sglang_concur.bench.server import cpu_server


@pytest.fixture(scope="module")
def url(tiny_model):
    flags = ["--enable-metrics", "--concur-enable", "--concur-policy", "static", "--concur-initial-window", "2",
             "--concur-control-interval", "0.2", "--concur-idle-timeout", "600"]
    with cpu_server(tiny_model, flags, max_total_tokens=8192) as srv:
        yield srv.url


def agents(url):
    return {k: v["state"] for k, v in status(url)["agents"].items()}


def test_static_window_two_third_agent_waits_for_an_end(url):
    assert generate(url, [11, 12, 13], agent="w-a").ok
    assert generate(url, [21, 22, 23], agent="w-b").ok
    assert agents(url) == {"w-a": "active", "w-b": "active"}  # both between turns (in a tool call)
    # an active agent's next turn runs while the window is not shrinking
    assert generate(url, [11, 12, 13, 14], agent="w-a").ok
    third = Background(lambda: generate(url, [31, 32, 33], max_new_tokens=4, agent="w-c"))
    wait_for(lambda: status(url)["held_requests"] == 1, what="w-c held by the gate")
    s = status(url)
    assert s["agents"]["w-c"]["state"] == "waiting" and s["waiting_agents"] == 1 and not third.done
    assert end_agent(url, "w-a").json() == {"agent_id": "w-a", "ended": True}
    r = third.result(timeout=60)
    assert r.ok and r.json()["meta_info"]["completion_tokens"] == 4
    assert agents(url) == {"w-b": "active", "w-c": "active"}
    for a in ("w-b", "w-c"):
        assert end_agent(url, a).json()["ended"] is True
    assert status(url)["agents"] == {}


def test_requests_without_agent_id_are_never_gated(url):
    for a in ("n-a", "n-b"):
        assert generate(url, [5, 6, 7], agent=a).ok
    held = Background(lambda: generate(url, [8, 9], agent="n-c"))
    wait_for(lambda: status(url)["held_requests"] == 1, what="n-c held")
    r = generate(url, [1, 2, 3, 4], max_new_tokens=5)  # no routing_key: runs at once
    assert r.ok and r.json()["meta_info"]["completion_tokens"] == 5 and not held.done
    end_agent(url, "n-a")
    assert held.result().ok
    for a in ("n-b", "n-c"):
        end_agent(url, a)


def test_aborted_held_request_leaks_no_slot(url):
    for a in ("x-a", "x-b"):
        assert generate(url, [40, 41], agent=a).ok
    with pytest.raises(requests.exceptions.ReadTimeout):
        generate(url, [50, 51, 52], agent="x-c", timeout=1.5)  # the client gives up: SGLang aborts it
    wait_for(lambda: status(url)["held_requests"] == 0, what="the aborted request to leave the queue")
    assert agents(url)["x-c"] == "waiting"  # never admitted, so it holds no slot
    end_agent(url, "x-a")
    end_agent(url, "x-c")
    r = generate(url, [60, 61], max_new_tokens=3, agent="x-d")  # the freed slot is usable
    assert r.ok and agents(url) == {"x-b": "active", "x-d": "active"}
    for a in ("x-b", "x-d"):
        end_agent(url, a)


@pytest.mark.parametrize("bad", ["has space", "", "x" * 257, "semi;colon"])
def test_malformed_agent_id_is_400_and_server_keeps_serving(url, bad):
    r = generate(url, [1, 2, 3], agent=bad)
    assert r.status_code == 400 and "invalid agent id (routing_key)" in r.text
    assert generate(url, [1, 2, 3], max_new_tokens=2).ok


def test_malformed_agent_id_on_openai_api_and_end_endpoint(url):
    body = {"model": "default", "prompt": [1, 2, 3], "max_tokens": 2}
    r = requests.post(url + "/v1/completions", json=body, headers={"x-smg-routing-key": "bad id"}, timeout=60)
    assert r.status_code == 400 and "invalid agent id" in r.text
    assert end_agent(url, "bad%20id").status_code == 400
    r = requests.post(url + "/v1/completions", json=body, headers={"x-smg-routing-key": "oa-1"}, timeout=60)
    assert r.ok and "oa-1" in status(url)["agents"]
    end_agent(url, "oa-1")


def test_metrics_series(url):
    wait_for(lambda: "sglang:concur_window" in requests.get(url + "/metrics", timeout=30).text, what="metrics")
    text = requests.get(url + "/metrics", timeout=30).text
    for name in ("sglang:concur_window", "sglang:concur_active_agents", "sglang:concur_paused_agents",
                 "sglang:concur_waiting_agents", "sglang:concur_held_requests"):
        line = next(l for l in text.splitlines() if l.startswith(name + "{"))
        assert float(line.rsplit(" ", 1)[1]) >= 0
    assert any(l.startswith("sglang:concur_window{") and l.endswith(" 2.0") for l in text.splitlines())

"""--concur-enable --concur-agent-id routing-key on a real SGLang HTTP server (CPU): the static window
gate, end signal, aborts (a client timeout, a stream disconnected while held), malformed agent ids, the agent id in the X-SMG-Routing-Key header, batches
and n>1, the queue limit, status and metrics.  One server for the whole module.  No agent here ever
makes a second turn after an idle gap, so none is released for looking gone: slots free only by end
calls (test_server_identity.py covers `auto` mode, test_server_lifecycle.py release)."""

from __future__ import annotations

import json

import pytest
import requests

from helpers import Background, end_agent, generate, status, wait_for
from sglang_concur.bench.server import cpu_server

QUEUE_LIMIT = 4


@pytest.fixture(scope="module")
def url(tiny_model):
    flags = ["--enable-metrics", "--concur-enable", "--concur-policy", "static", "--concur-initial-window", "2",
             "--concur-control-interval", "0.2", "--concur-idle-timeout", "600", "--concur-agent-id", "routing-key",
             "--max-queued-requests", str(QUEUE_LIMIT)]
    with cpu_server(tiny_model, flags, max_total_tokens=8192) as srv:
        yield srv.url


def agents(url):
    return {k: v["state"] for k, v in status(url)["agents"].items()}


def test_static_window_two_third_agent_waits_for_an_end(url):
    assert generate(url, [11, 12, 13], agent="w-a").ok
    assert generate(url, [21, 22, 23], agent="w-b").ok
    assert agents(url) == {"w-a": "active", "w-b": "active"}  # both between turns (in a tool call)
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
    r = generate(url, [1, 2, 3, 4], max_new_tokens=5)  # no routing_key (routing-key mode): runs at once
    assert r.ok and r.json()["meta_info"]["completion_tokens"] == 5 and not held.done
    assert "n-c" in status(url)["agents"] and len(status(url)["agents"]) == 3  # it made no agent
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
    if bad:  # (an empty header is no header)
        r = requests.post(url + "/generate", json={"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2}},
                          headers={"X-SMG-Routing-Key": bad}, timeout=60)
        assert r.status_code == 400 and "invalid agent id (routing_key)" in r.text
    assert generate(url, [1, 2, 3], max_new_tokens=2, agent="ok-after-bad").ok
    end_agent(url, "ok-after-bad")


def test_malformed_agent_id_on_openai_api_and_end_endpoint(url):
    body = {"model": "default", "prompt": [1, 2, 3], "max_tokens": 2}
    r = requests.post(url + "/v1/completions", json=body, headers={"x-smg-routing-key": "bad id"}, timeout=60)
    assert r.status_code == 400 and "invalid agent id" in r.text
    assert end_agent(url, "bad%20id").status_code == 400
    r = requests.post(url + "/v1/completions", json=body, headers={"x-smg-routing-key": "oa-1"}, timeout=60)
    assert r.ok and status(url)["agents"]["oa-1"]["identified_by"] == "routing_key"
    end_agent(url, "oa-1")


@pytest.mark.parametrize("header", ["X-SMG-Routing-Key", "x-smg-routing-key", "X-SMG-ROUTING-KEY"])
def test_header_on_native_generate_is_the_agent_and_is_gated(url, header):
    agent = "hdr-" + header[-3:].lower()
    body = {"input_ids": [3, 4, 5], "sampling_params": {"max_new_tokens": 2}}
    assert requests.post(url + "/generate", json=body, headers={header: agent}, timeout=60).ok
    assert generate(url, [6, 7], agent="hdr-other").ok  # the window (2) is full now
    held = Background(lambda: requests.post(url + "/generate", json=body, headers={header: "hdr-third"}, timeout=120))
    wait_for(lambda: status(url)["held_requests"] == 1, what="the header agent held like a body routing_key")
    assert status(url)["agents"][agent]["state"] == "active" and not held.done
    end_agent(url, agent)
    assert held.result().ok
    for a in ("hdr-other", "hdr-third"):
        end_agent(url, a)


def test_held_requests_do_not_make_an_admitted_agents_turn_a_503(url):
    long_sp = {"max_new_tokens": 1500, "temperature": 0, "ignore_eos": True}
    runners = [Background(lambda i=i: requests.post(url + "/generate", json={
        "input_ids": [1, 2 + i], "routing_key": f"q-run{i}", "sampling_params": long_sp}, timeout=300)) for i in range(2)]
    wait_for(lambda: all(status(url)["agents"].get(f"q-run{i}", {}).get("state") == "active" for i in range(2)),
             what="two agents running (the window is full)")
    waiting = [Background(lambda i=i: generate(url, [50 + i, 51], agent=f"q-new{i}", timeout=300))
               for i in range(QUEUE_LIMIT)]
    wait_for(lambda: status(url)["held_requests"] == QUEUE_LIMIT, what="the queue full of held requests")
    # a second request of an admitted, running agent: upstream would refuse it (the queue is full)
    r = generate(url, [5, 6], max_new_tokens=2, agent="q-run0")
    assert r.ok, r.text
    # the limit still holds for a new agent: its request would only wait behind the held ones
    r = generate(url, [7, 8], max_new_tokens=2, agent="q-late")
    assert r.status_code == 503 and "queue is full" in r.text
    for i in range(2):
        end_agent(url, f"q-run{i}")
    pending = set(range(QUEUE_LIMIT))  # they reached the server in any order: end each as it is answered
    while pending:
        done = wait_for(lambda: [i for i in pending if waiting[i].done], timeout=120, what="a held request answered")
        for i in done:  # each frees its slot for the next
            assert waiting[i].result().ok
            end_agent(url, f"q-new{i}")
            pending.discard(i)
    assert all(x.result(timeout=300).ok for x in runners)
    end_agent(url, "q-late")
    wait_for(lambda: status(url)["agents"] == {}, what="every agent ended")


def test_streaming_client_that_disconnects_while_held_leaks_nothing(url):
    try:
        _disconnect_while_held(url)
    finally:
        for a in ("sd-a", "sd-b", "sd-next", "sd-held", "sd-stream"):
            end_agent(url, a)


def _disconnect_while_held(url: str) -> None:
    for a in ("sd-a", "sd-b"):  # the window (2) is full
        assert generate(url, [5, 6], max_new_tokens=2, agent=a).ok
    body = {"input_ids": [7, 8, 9], "routing_key": "sd-held", "stream": True,
            "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}}
    resp = requests.post(url + "/generate", json=body, stream=True, timeout=60)
    wait_for(lambda: status(url)["held_requests"] == 1, what="the streaming request held")
    resp.close()  # the client goes away while held
    wait_for(lambda: status(url)["held_requests"] == 0, what="SGLang to abort the disconnected request")
    assert status(url)["agents"]["sd-held"]["state"] == "waiting"  # never admitted, holds nothing
    end_agent(url, "sd-a")
    r = generate(url, [1, 1], max_new_tokens=2, agent="sd-next")  # the room is usable at once
    assert r.ok
    end_agent(url, "sd-b")  # (a new agent: a second turn of sd-b would be a gap, which this module never makes)
    # and a stream that is admitted runs to the end
    with requests.post(url + "/generate", json={**body, "routing_key": "sd-stream"}, stream=True, timeout=60) as s:
        chunks = [json.loads(l[6:]) for l in s.iter_lines() if l.startswith(b"data: {")]
    assert len(chunks[-1]["output_ids"]) == 8


def test_metrics_series(url):
    wait_for(lambda: "sglang:concur_window" in requests.get(url + "/metrics", timeout=30).text, what="metrics")
    text = requests.get(url + "/metrics", timeout=30).text
    values = {l.split("{")[0]: float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
              if l.startswith("sglang:concur_") and "{" in l}
    assert values["sglang:concur_window"] == 2.0
    st = status(url)
    assert values["sglang:concur_active_agents"] == st["active_agents"]
    for name in ("sglang:concur_paused_agents", "sglang:concur_waiting_agents", "sglang:concur_held_requests",
                 "sglang:concur_lost_work", "sglang:concur_drain_seconds", "sglang:concur_work_seconds"):
        assert name in values
    assert values["sglang:concur_held_agents_total"] == st["held_agents_total"]
    before = st["idle_seconds"]  # the engine has nothing to run: its idle time is counted pass by pass
    wait_for(lambda: status(url)["idle_seconds"] > before + 0.5, what="idle time to be counted")


# last in the module: the n>1 warm-up is a turn and the samples the next one, so this test makes the
# server see a gap between turns; from then on an idle agent can look gone (see the module docstring)
def test_a_batch_and_n_samples_are_gated_per_part_as_their_agent(url):
    assert generate(url, [9, 9], agent="b-hold1").ok
    assert generate(url, [8, 8], agent="b-hold2").ok
    sp = {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True}
    batch = Background(lambda: requests.post(url + "/generate", json={"input_ids": [[1, 2, 3], [4, 5, 6]],
                                                                      "routing_key": "b-batch", "sampling_params": sp},
                                             timeout=120))
    wait_for(lambda: status(url)["held_requests"] == 2, what="both parts of the batch held (window full)")
    assert status(url)["agents"]["b-batch"]["state"] == "waiting"
    end_agent(url, "b-hold1")
    out = batch.result()
    assert out.ok and [len(o["output_ids"]) for o in out.json()] == [3, 3]
    assert status(url)["agents"]["b-batch"]["turns"] == 2  # two parts, one agent
    nsamp = Background(lambda: requests.post(url + "/generate", json={
        "input_ids": [7, 7, 7], "routing_key": "b-n", "sampling_params": {**sp, "n": 3, "temperature": 1.0}},
        timeout=120))
    wait_for(lambda: status(url)["held_requests"] >= 1, what="the n=3 request held (window full)")
    assert status(url)["agents"]["b-n"]["state"] == "waiting"
    end_agent(url, "b-hold2")
    out = nsamp.result()
    assert out.ok and len(out.json()) == 3
    st = status(url)["agents"]["b-n"]
    assert st["turns"] == 4  # the shared-prefix warm-up and the 3 samples, all gated as b-n
    for a in ("b-batch", "b-n"):
        end_agent(url, a)

"""`--concur-agent-id auto` (the default) on a real SGLang server (CPU): agents of clients that send
no id at all (verl, AReaL: a fresh rid per turn, the whole history as input_ids) are found from
their prompts; ids from the body or the X-SMG-Routing-Key header win.  One server; the window is
wide, so only identity is under test here."""

from __future__ import annotations

import random
import uuid

import pytest
import requests

from helpers import status

SP = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def url(tiny_model):
    from sglang_concur.bench.server import cpu_server

    flags = ["--concur-enable", "--concur-policy", "static", "--concur-initial-window", "64",
             "--concur-control-interval", "0.2", "--concur-idle-timeout", "600"]
    with cpu_server(tiny_model, flags, max_total_tokens=16384) as srv:
        yield srv.url


def anonymous(url: str, ids: list, **extra) -> dict:
    """One turn as verl / AReaL send it: no agent id, a fresh rid."""
    body = {"input_ids": ids, "rid": uuid.uuid4().hex, "sampling_params": SP, **extra}
    r = requests.post(url + "/generate", json=body, timeout=120)
    assert r.ok, r.text
    return r.json()


def new_agents(url: str, before: set) -> dict:
    return {k: v for k, v in status(url)["agents"].items() if k not in before}


def test_anonymous_multi_turn_agents_are_found_and_a_shared_system_prompt_keeps_them_apart(url):
    rng = random.Random(uuid.uuid4().int)
    system = [rng.randrange(10, 500) for _ in range(200)]  # long, shared by both agents
    before = set(status(url)["agents"])
    hist = {a: system + [rng.randrange(10, 500) for _ in range(30)] for a in ("x", "y")}
    for turn in range(3):
        for a in ("x", "y"):  # interleaved, as a batch of agents runs
            out = anonymous(url, hist[a])["output_ids"]
            hist[a] = hist[a] + out + [rng.randrange(10, 500) for _ in range(20)]  # reply + observation
    found = new_agents(url, before)
    assert len(found) == 2, found
    assert all(v["turns"] == 3 and v["identified_by"] == "inferred" for v in found.values())
    assert all(k.startswith("~") for k in found)


def test_n_anonymous_samples_of_one_task_are_n_agents(url):
    rng = random.Random(uuid.uuid4().int)
    prompt = [rng.randrange(10, 500) for _ in range(80)]
    before = set(status(url)["agents"])
    outs = anonymous(url, prompt, sampling_params={**SP, "n": 3, "temperature": 1.0})
    found = new_agents(url, before)
    assert len(outs) == 3 and len(found) == 3, found  # the shared-prefix warm-up (max_new_tokens 0) is no agent
    # each sample's next turn continues its own reply
    for o in outs:
        anonymous(url, prompt + o["output_ids"] + [rng.randrange(10, 500) for _ in range(10)])
    after = new_agents(url, before)
    assert set(after) == set(found) and all(v["turns"] == 2 for v in after.values())


def test_ids_in_body_or_header_win_over_inference(url):
    rng = random.Random(uuid.uuid4().int)
    hist = [rng.randrange(10, 500) for _ in range(60)]
    before = set(status(url)["agents"])
    out = anonymous(url, hist)["output_ids"]
    hist = hist + out + [1, 2, 3]
    body = {"input_ids": hist, "sampling_params": SP}
    r = requests.post(url + "/generate", json=body, headers={"x-smg-routing-key": "id-hdr"}, timeout=120)
    assert r.ok
    found = new_agents(url, before)
    assert found["id-hdr"]["identified_by"] == "routing_key" and found["id-hdr"]["turns"] == 1
    inferred = [v for k, v in found.items() if k.startswith("~")]
    assert len(inferred) == 1 and inferred[0]["turns"] == 1  # the header turn was not counted as the anonymous agent's

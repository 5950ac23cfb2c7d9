"""The agent lifecycle live (real SGLang server on CPU, static window of 2): an agent that stops
without an end call releases its room within a few of the gaps the server has seen, not after the
idle timeout; when it comes back it gets its room before a new agent, pausing at a turn boundary if
the window is full; an idle agent's state is forgotten after --concur-idle-timeout.  Each test waits
until the agents of earlier tests have gone (the idle timeout is short), so each runs alone."""

from __future__ import annotations

import random
import time

import pytest

from helpers import Background, generate, status, wait_for

IDLE_TIMEOUT = 8.0
GAP = 0.25  # tool time between an agent's turns


@pytest.fixture(scope="module")
def url(tiny_model):
    from sglang_concur.bench.server import cpu_server

    flags = ["--concur-enable", "--concur-policy", "static", "--concur-initial-window", "2",
             "--concur-control-interval", "0.1", "--concur-idle-timeout", str(IDLE_TIMEOUT), "--log-level", "info"]
    with cpu_server(tiny_model, flags, max_total_tokens=8192) as srv:
        yield srv


def clean(url: str) -> None:
    wait_for(lambda: not status(url)["agents"], timeout=IDLE_TIMEOUT + 10, what="agents of earlier tests to expire")


class Agent:
    def __init__(self, url: str, name: str, seed: int) -> None:
        self.url, self.name, self.rng = url, name, random.Random(seed)
        self.hist = [self.rng.randrange(10, 500) for _ in range(40)]

    def turn(self) -> float:
        """One turn (no end call ever); returns when its reply came."""
        r = generate(self.url, self.hist, max_new_tokens=3, agent=self.name, timeout=120)
        assert r.ok, r.text
        self.hist = self.hist + r.json()["output_ids"] + [self.rng.randrange(10, 500) for _ in range(8)]
        return time.monotonic()


def test_an_agent_that_stops_without_an_end_call_lets_a_waiting_agent_in_within_a_few_gaps(url):
    url = url.url
    clean(url)
    a, b = Agent(url, "lc-a", 1), Agent(url, "lc-b", 2)
    for _ in range(6):  # both agents alternate LLM turns and tool calls of 4 GAPs: the server sees the gaps
        a.turn()
        b.turn()
        time.sleep(4 * GAP)  # the tool: the client's own time, not a synchronisation
    a.turn()
    b.turn()
    # c arrives right after b's reply: a and b are between turns for far less than their gaps
    c = Background(lambda: generate(url, [7, 7, 7], max_new_tokens=2, agent="lc-c", timeout=120))
    wait_for(lambda: status(url)["held_requests"] == 1, what="lc-c held (window full)")
    a.turn()
    stopped = b.turn()  # b's last turn: it never comes back (no end call)
    for _ in range(20):  # a keeps working; c must get b's room within a few gaps
        time.sleep(GAP)
        if c.done:
            break
        a.turn()
    assert c.done, "the waiting agent never got the room of the agent that stopped"
    waited = c.finished_at - stopped
    assert waited < 4 * (4 * GAP) + 1.0 and waited < IDLE_TIMEOUT, waited  # a few of its gaps
    s = status(url)["agents"]
    assert s["lc-b"]["released"] and s["lc-b"]["state"] == "active" and s["lc-c"]["state"] == "active"


def test_a_released_agent_that_returns_pauses_at_its_turn_boundary_and_resumes_before_a_new_agent(url):
    url = url.url
    clean(url)
    a, b = Agent(url, "rs-a", 3), Agent(url, "rs-b", 4)
    for _ in range(6):
        a.turn()
        b.turn()
        time.sleep(GAP)
    wait_for(lambda: all(status(url)["agents"][x]["released"] for x in ("rs-a", "rs-b")),
             timeout=IDLE_TIMEOUT - 2, what="both idle agents to release their rooms")
    # two new agents take the rooms, each with a long request in flight (it cannot be released meanwhile)
    # (of different lengths: one room frees first, and it must go to the returning agent)
    long = [Background(lambda i=i: generate(url, [30 + i, 31], max_new_tokens=300 + 500 * i, agent=f"rs-c{i}",
                                            timeout=300)) for i in range(2)]
    wait_for(lambda: all(status(url)["agents"].get(f"rs-c{i}", {}).get("state") == "active" for i in range(2)),
             what="both new agents running")
    d = Background(lambda: generate(url, [9, 9, 9], max_new_tokens=2, agent="rs-d", timeout=300))
    wait_for(lambda: status(url)["agents"].get("rs-d", {}).get("state") == "waiting", what="rs-d waiting")
    back = Background(b.turn)  # b comes back to a full window: paused at its turn boundary
    wait_for(lambda: status(url)["agents"]["rs-b"]["state"] == "paused", what="rs-b paused")
    assert not back.done and not d.done
    for x in long:
        assert x.result(timeout=300).ok
    back.result(timeout=120)
    assert d.result(timeout=120).ok
    assert back.finished_at < d.finished_at  # the returning agent before the new one that waited longer


def test_idle_agent_state_is_forgotten_after_the_idle_timeout(url):
    url = url.url
    clean(url)
    assert generate(url, [5, 5, 5], max_new_tokens=2, agent="exp-a").ok  # one turn: no gap is ever seen for it
    seen = time.monotonic()
    assert "exp-a" in status(url)["agents"]
    wait_for(lambda: "exp-a" not in status(url)["agents"], timeout=IDLE_TIMEOUT + 10, what="exp-a to expire")
    assert time.monotonic() - seen >= IDLE_TIMEOUT - 0.5

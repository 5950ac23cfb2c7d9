"""The agent lifecycle, pure: identity inferred from the prompt (ContextIndex) and in-a-tool-or-gone
(GapModel).  Microseconds, no server."""

import random

import pytest

from sglang_concur.agents import ContextIndex, GapModel, is_inferred


def ids(seed: int, n: int) -> list:
    rng = random.Random(seed)
    return [rng.randrange(10, 500) for _ in range(n)]


SYSTEM = [7] * 100  # a long system prompt every agent shares


def turn(index: ContextIndex, rid: str, prompt: list, output: list, now: float = 0.0) -> str:
    agent = index.assign(rid, prompt, now)
    index.finished(rid, output, now)
    return agent


@pytest.mark.parametrize("block", [1, 4, 32, 64])
def test_a_multi_turn_agent_is_one_agent_and_a_shared_system_prompt_does_not_merge_two(block):
    ix = ContextIndex(block=block)
    a_hist, b_hist = SYSTEM + ids(1, 40), SYSTEM + ids(2, 40)
    a = turn(ix, "a0", a_hist, [1, 2, 3, 4])
    b = turn(ix, "b0", b_hist, [5, 6, 7, 8])
    assert a != b and is_inferred(a) and is_inferred(b)
    for k in range(1, 6):  # each turn appends the reply and an observation
        a_hist = a_hist + [1, 2, 3, 4] + ids(10 + k, 30)
        b_hist = b_hist + [5, 6, 7, 8] + ids(20 + k, 50)
        assert turn(ix, f"a{k}", a_hist, [1, 2, 3, 4]) == a
        assert turn(ix, f"b{k}", b_hist, [5, 6, 7, 8]) == b
    assert len(ix.contexts) == 2 and not ix.pending


def test_n_samples_of_one_prompt_are_separate_agents_and_each_continues_its_own_output():
    ix = ContextIndex(block=16)
    prompt = SYSTEM + ids(3, 50)
    agents = [ix.assign(f"s{i}", prompt, 0.0) for i in range(3)]  # sent together, before any reply
    assert len(set(agents)) == 3
    outs = [[100 + i, 200 + i, 300 + i] for i in range(3)]
    for i, out in enumerate(outs):
        ix.finished(f"s{i}", out, 1.0)
    for i in (2, 0, 1):
        assert ix.assign(f"t{i}", prompt + outs[i] + ids(30 + i, 20), 2.0) == agents[i]


def test_repeating_an_earlier_prompt_without_its_output_starts_a_new_agent():
    ix = ContextIndex()
    prompt = SYSTEM + ids(4, 30)
    a = turn(ix, "a0", prompt, [9, 9, 9])
    assert ix.assign("x", prompt, 1.0) != a  # the same first prompt again: another trajectory
    assert ix.assign("y", prompt + [9, 9] + [1], 1.0) == a  # the reply less its last token is enough


def test_rewritten_history_starts_a_new_agent_and_aborts_keep_the_context():
    ix = ContextIndex()
    prompt = SYSTEM + ids(5, 30)
    a = turn(ix, "a0", prompt, [11, 12, 13])
    assert ix.assign("r", prompt + [99, 12, 13] + ids(6, 5), 1.0) != a  # the client rewrote the reply
    nxt = prompt + [11, 12, 13] + ids(7, 5)
    assert ix.assign("a1", nxt, 2.0) == a
    ix.finished("a1", [], 2.5, completed=False)  # aborted: the context stays the last completed one
    assert ix.assign("a2", nxt, 3.0) == a


def test_identical_histories_prefer_the_agent_with_nothing_in_flight():
    ix = ContextIndex()
    prompt = SYSTEM + ids(8, 20)
    a, b = ix.assign("a0", prompt, 0.0), ix.assign("b0", prompt, 0.0)
    ix.finished("a0", [1, 2, 3], 1.0)
    ix.finished("b0", [1, 2, 3], 1.0)  # greedy decoding: the same reply
    nxt = prompt + [1, 2, 3] + [4]
    first = ix.assign("x", nxt, 2.0)
    second = ix.assign("y", nxt, 2.0)
    assert {first, second} == {a, b}


def test_expiry_forgets_idle_agents_but_not_those_in_flight_and_bounds_memory():
    ix = ContextIndex(max_agents=3)
    for i in range(5):
        turn(ix, f"r{i}", SYSTEM + ids(40 + i, 10), [1, 2], now=float(i))
    assert len(ix.contexts) == 3  # the oldest were dropped
    ix.assign("busy", SYSTEM + ids(44, 10) + [1] + [5], 10.0)  # continues the newest agent
    assert ix.expire(100.0, idle_timeout=50.0) == ["~3", "~4"]
    assert list(ix.contexts) == ["~5"]


def test_gap_model_return_probability():
    g = GapModel(size=4)
    assert g.p_return(100.0, 0.1) == 1.0  # nothing observed yet: nothing to compare with
    for gap in (1.0, 2.0, 3.0, 4.0):
        g.observe(gap)
    assert g.survival(2.5) == 0.5 and g.mean() == 2.5  # (2 longer + 1) / (4 + 2)
    assert g.survival(100.0) == 1 / 6  # longer than every gap seen: unlikely, never impossible
    assert g.p_return(100.0, 0.0) == 1.0  # an agent that never ends always comes back
    # P = (1 - h) S / ((1 - h) S + h)
    assert g.p_return(2.5, 0.1) == pytest.approx(0.45 / (0.45 + 0.1))
    assert g.p_return(100.0, 0.1) == pytest.approx(0.15 / (0.15 + 0.1))  # few gaps seen: still more likely back
    assert g.p_return(100.0, 0.25) < 0.5  # expected to do 3 more turns, idle longer than all 4 gaps: gone
    g.observe(10.0)  # the window keeps the last `size` gaps
    assert len(g) == 4 and g.survival(1.5) == 5 / 6

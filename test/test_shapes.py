"""Trace shapes calibrated on public agent-trace statistics (bench/shapes.py); no server."""

from __future__ import annotations

import dataclasses
import re

import pytest

from sglang_concur.bench.shapes import SHAPES, generate_shape, shape_stats
from sglang_concur.bench.trace import AgentTrace, Turn, dump_trace, load_trace

N = 2000  # agents per calibration trace (seed 0, scale 1)
ID_RE = re.compile(r"[A-Za-z0-9._:@/+=#-]{1,256}")


@pytest.fixture(scope="module")
def traces():
    return {s: generate_shape(s, N, seed=0) for s in SHAPES}


@pytest.fixture(scope="module")
def stats(traces):
    return {s: shape_stats(a) for s, a in traces.items()}


def within(value, target, rel=0.10):
    return abs(value - target) <= rel * abs(target)


# --- calibration against the cited figures (each within 10% relative unless said otherwise) --------
def test_terminal_bench_figures(stats):
    st = stats["terminal-bench"]
    assert within(st["turns_per_agent"]["median"], 20), st["turns_per_agent"]  # median steps per trial
    assert within(st["turns_per_agent"]["mean"], 47), st["turns_per_agent"]  # mean steps per trial
    assert st["turns_per_agent"]["max"] == 250  # the heavy tail reaches the cap
    # the 18.5k is the per-turn mean input of a sampled 50-turn trial: compare with the pooled mean
    # input over the requests of the agents with 45-55 turns
    assert st["band"]["agents"] >= 50, st["band"]
    assert within(st["band"]["mean_input_tokens"], 18500), st["band"]
    assert within(st["mean_output_tokens"], 163), st["mean_output_tokens"]
    # ~6 s per step = ~1 s of LLM time (assumed) + the tool wait
    assert within(st["tool_gap"]["mean_s"] + 1.0, 6.0), st["tool_gap"]
    assert st["mean_step_time_s"] is None


def test_swe_agent_figures(traces, stats):
    st = stats["swe-agent"]
    g = st["groups"]
    assert set(g) == {"resolved", "unresolved"}
    assert within(g["resolved"]["turns_mean"], 31), g
    assert within(g["unresolved"]["turns_mean"], 58), g
    assert within(g["resolved"]["share"], SHAPES["swe-agent"].target("resolved_share")), g
    assert 100 <= st["mean_output_tokens"] <= 300, st["mean_output_tokens"]
    assert 300 <= st["mean_observation_tokens"] <= 3000, st["mean_observation_tokens"]  # hundreds to thousands
    assert 3000 <= min(a.prefix_tokens for a in traces["swe-agent"])  # a few thousand tokens of tool docs
    # tool waits: mostly sub-second, with a tail of slow commands
    assert st["tool_gap"]["median_s"] < 1.0 and st["tool_gap"]["share_le_1s"] >= 0.7, st["tool_gap"]
    assert st["tool_gap"]["share_le_10s"] < 0.97, st["tool_gap"]


def test_mooncake_agent_figures(stats):
    st = stats["mooncake-agent"]
    assert within(st["mean_input_tokens"], 8596), st["mean_input_tokens"]  # over all requests
    assert within(st["mean_output_tokens"], 182), st["mean_output_tokens"]
    # gap shares: absolute +-0.02 (tighter than 10% relative, which would let 0.95 pass at 1.0)
    assert st["tool_gap"]["share_le_1s"] == pytest.approx(0.86, abs=0.02), st["tool_gap"]
    assert st["tool_gap"]["share_le_10s"] == pytest.approx(0.95, abs=0.02), st["tool_gap"]


def test_targets_and_sources():
    assert set(SHAPES) == {"terminal-bench", "swe-agent", "mooncake-agent"}
    for name, p in SHAPES.items():
        assert p.name == name and len(p.source) > 40 and p.assumptions and p.targets
        assert sum(c.share for c in p.turns) == pytest.approx(1.0)
        assert sum(c.share for c in p.tool) == pytest.approx(1.0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.n_prefixes = 1  # type: ignore[misc]


# --- format ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", list(SHAPES))
def test_prefixes_ids_outputs(shape, traces):
    agents = traces[shape]
    p = SHAPES[shape]
    by_prefix = {}
    for a in agents:
        by_prefix.setdefault(a.prefix_id, set()).add(a.prefix_tokens)
    assert len(by_prefix) == p.n_prefixes
    assert all(len(v) == 1 for v in by_prefix.values()), by_prefix  # one prefix length per prefix_id
    ids = [a.agent_id for a in agents]
    assert len(set(ids)) == len(ids)
    assert all(ID_RE.fullmatch(i) and i.startswith(f"{shape}-") for i in ids), ids[:3]
    assert all(t.output_tokens >= 1 for a in agents for t in a.turns)
    assert all(a.turns for a in agents)


def test_tiny_scale_keeps_outputs_and_round_trips(tmp_path):
    agents = generate_shape("swe-agent", 30, seed=2, scale=0.001)
    assert all(t.output_tokens >= 1 for a in agents for t in a.turns)
    assert all(a.prefix_tokens >= 1 and a.task_tokens >= 1 for a in agents)
    path = str(tmp_path / "t.jsonl")
    dump_trace(agents, path)
    assert load_trace(path) == agents


# --- determinism, scaling, truncation -----------------------------------------------------------
def test_determinism():
    a = generate_shape("mooncake-agent", 50, seed=7)
    assert a == generate_shape("mooncake-agent", 50, seed=7)
    assert a != generate_shape("mooncake-agent", 50, seed=8)
    assert generate_shape("mooncake-agent", 20, seed=7) == a[:20]  # agent i draws after agents 0..i-1


def test_scale_divides_tokens_keeps_turns(traces, stats):
    full, st = traces["terminal-bench"], stats["terminal-bench"]
    small = generate_shape("terminal-bench", N, seed=0, scale=0.1)
    assert [len(a.turns) for a in small] == [len(a.turns) for a in full]
    ss = shape_stats(small)
    for key in ("mean_input_tokens", "mean_output_tokens", "mean_observation_tokens", "mean_first_prompt_tokens"):
        assert ss[key] / st[key] == pytest.approx(0.1, rel=0.1), key
    assert [t.tool_latency_s for a in small for t in a.turns] == [t.tool_latency_s for a in full for t in a.turns]


def test_time_scale_multiplies_latency():
    base = generate_shape("swe-agent", 40, seed=3)
    slow = generate_shape("swe-agent", 40, seed=3, time_scale=2.5)
    lat = [t.tool_latency_s for a in base for t in a.turns]
    lat2 = [t.tool_latency_s for a in slow for t in a.turns]
    assert lat2 == pytest.approx([2.5 * x for x in lat], abs=2e-4)
    assert max(lat) > 0
    zero = generate_shape("swe-agent", 40, seed=3, time_scale=0)
    assert all(t.tool_latency_s == 0 for a in zero for t in a.turns)
    assert [[(t.append_tokens, t.output_tokens) for t in a.turns] for a in slow] == \
        [[(t.append_tokens, t.output_tokens) for t in a.turns] for a in base]


def test_max_context_tokens():
    cap = 3000
    full = generate_shape("terminal-bench", 200, seed=1, scale=0.1)
    capped = generate_shape("terminal-bench", 200, seed=1, scale=0.1, max_context_tokens=cap)
    truncated = 0
    for f, c in zip(full, capped):
        assert c.turns and c.turns == f.turns[:len(c.turns)]  # a prefix of the uncapped agent
        ctx = c.prefix_tokens + c.task_tokens
        for t in c.turns:
            assert ctx + t.output_tokens <= cap
            ctx += t.output_tokens + t.append_tokens
        truncated += len(c.turns) < len(f.turns)
    assert truncated >= 20
    # the first turn is kept even when it alone exceeds the cap
    one = generate_shape("terminal-bench", 5, seed=1, max_context_tokens=1)
    assert all(len(a.turns) == 1 for a in one)


# --- errors ----------------------------------------------------------------------------------
def test_unknown_shape_lists_known():
    with pytest.raises(ValueError) as e:
        generate_shape("swebench", 3, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "'swebench'" in msg
    assert all(name in msg for name in SHAPES)


@pytest.mark.parametrize("kwargs, name", [
    ({"n_agents": 0}, "n_agents"),
    ({"n_agents": -3}, "n_agents"),
    ({"scale": 0}, "scale"),
    ({"scale": -0.5}, "scale"),
    ({"scale": float("nan")}, "scale"),
    ({"time_scale": -1.0}, "time_scale"),
    ({"max_context_tokens": 0}, "max_context_tokens"),
])
def test_bad_arguments(kwargs, name):
    args = {"shape": "terminal-bench", "n_agents": 3, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=rf"^{name} must"):
        generate_shape(**args)


# --- shape_stats definitions on a hand-built trace ---------------------------------------------
def test_shape_stats_definitions():
    a = AgentTrace("x-0000-resolved", "p", 100, 20, (Turn(30, 5, 0.5), Turn(40, 7, 20.0), Turn(99, 3, 0.1)))
    b = AgentTrace("x-0001-unresolved", "p", 100, 10, (Turn(0, 4, 2.0),))
    st = shape_stats([a, b], turns_band=(3, 3))
    # prompts: a = 120, 155, 202; b = 110 (each turn resends the whole history)
    assert st["mean_input_tokens"] == pytest.approx((120 + 155 + 202 + 110) / 4)
    assert st["band"] == {"turns": [3, 3], "agents": 1, "mean_input_tokens": pytest.approx((120 + 155 + 202) / 3)}
    assert st["mean_output_tokens"] == pytest.approx((5 + 7 + 3 + 4) / 4)
    # growth and gaps only over turns followed by another turn: a's first two
    assert st["mean_context_growth_tokens"] == pytest.approx((35 + 47) / 2)
    assert st["tool_gap"]["n"] == 2
    assert st["tool_gap"]["share_le_1s"] == pytest.approx(0.5) and st["tool_gap"]["share_le_10s"] == pytest.approx(0.5)
    assert st["turns_per_agent"]["median"] == 2.0 and st["turns_per_agent"]["mean"] == 2.0
    assert st["groups"]["resolved"]["turns_mean"] == 3 and st["groups"]["unresolved"]["agents"] == 1
    with pytest.raises(ValueError):
        shape_stats([])

"""Trace generators shaped on public agent-trace statistics: `terminal-bench`, `swe-agent`, `mooncake-agent`.

`generate_shape(shape, n_agents, seed)` returns `AgentTrace`s (bench/trace.py's format: turn k sends
the whole history, generates `output_tokens`, waits `tool_latency_s`, then appends `append_tokens`).
`shape_stats(agents)` gives the statistics to hold against the cited figures.  Each shape's
parameters are a frozen `ShapeParams` in `SHAPES`, with its sources, assumptions and the cited
figures it is calibrated to (`targets`).  See docs/benchmark.md (Trace shapes) for the derivations and a table
of generated vs cited statistics.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sglang_concur.bench.trace import AgentTrace, Turn


@dataclass(frozen=True)
class LogNormal:
    """A lognormal (median, sigma) clipped to [lo, hi]."""

    median: float
    sigma: float
    lo: float
    hi: float

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.clip(rng.lognormal(math.log(self.median), self.sigma, size), self.lo, self.hi)

    @property
    def mean(self) -> float:
        """Mean before clipping: median * exp(sigma^2 / 2)."""
        return self.median * math.exp(self.sigma ** 2 / 2)


@dataclass(frozen=True)
class Component:
    """One part of a mixture: picked with probability `share`."""

    name: str
    share: float
    dist: LogNormal


@dataclass(frozen=True)
class ShapeParams:
    """One trace shape.  Token counts before `scale`, seconds before `time_scale`.

    `turns`: turns per agent, a mixture of rounded, clipped lognormals (each agent draws one
    component; with more than one component the component's name ends the agent id, e.g.
    `swe-agent-0007-resolved`).  `observation` is the per-turn appended tool output, `output` the
    tokens generated per turn, `tool` the per-turn tool wait (a mixture).  `targets` are the cited
    figures the shape is calibrated to (name, value); `source` and `assumptions` say where they come
    from and what was chosen.
    """

    name: str
    source: str
    assumptions: Tuple[str, ...]
    targets: Tuple[Tuple[str, float], ...]
    turns: Tuple[Component, ...]
    n_prefixes: int  # distinct shared system(+tools) prompts, spread over [prefix_min, prefix_max]; agents pick one uniformly
    prefix_min: int
    prefix_max: int
    task: LogNormal  # agent-specific task text after the prefix
    observation: LogNormal
    output: LogNormal
    tool: Tuple[Component, ...]

    def target(self, name: str) -> float:
        return dict(self.targets)[name]


# --- terminal-bench ------------------------------------------------------------------------
# Turns: median 20, mean 47.  sqrt(2 ln(47/20)) = 1.307 gives mean 47 unclipped, but clipping at
# 250 steps and rounding bring it to 41.2 (-12%); sigma 1.50 with the 250 cap gives 46.9 (4.7% of
# the trials end at the cap, like a step limit).  Tokens: first prompt P0 = prefix (uniform
# 2000-3500, mean 2750) + task (lognormal median 400, sigma 0.8, mean ~550) ~ 3300; a 50-turn trial
# averages P0 + g * 49/2 = 18.5k input tokens per turn, so g = (18500 - 3300) / 24.5 ~ 620 tokens of
# growth per turn = output (mean 163) + observation (mean ~457).  Tool: lognormal median 3 s,
# sigma 1.0 -> mean 4.95 s; with ~1 s of LLM time per step that is the ~6 s per step.
_TB = ShapeParams(
    name="terminal-bench",
    source=("Terminal-Bench 2.0 agent trajectories (tbench.ai leaderboard, terminal-bench@2.0; public "
            "trajectory set on Hugging Face: yoonholee/terminalbench-trajectories, 46,377 trials, median "
            "20 / mean 47.3 steps per trial). Per-turn figures (a sampled 50-turn trial: ~18.5k input "
            "and ~163 output tokens per turn, ~6 s per step) were given in the issue."),
    assumptions=(
        "turns: lognormal median 20, sigma 1.50, rounded, clipped to [1, 250] (sigma raised from "
        "sqrt(2 ln(47/20)) = 1.31 so the mean stays 47 after the 250-step cap)",
        "context grows linearly: first prompt ~3.3k (system prompt 2000-3500 + task), ~620 tokens per turn",
        "LLM time per step ~1 s, so the tool takes ~5 s of the ~6 s step (mean tool wait 4.95 s)",
        "4 shared prefixes (agent scaffolds)",
    ),
    targets=(("turns_median", 20), ("turns_mean", 47), ("mean_input_tokens_50_turns", 18500),
             ("mean_output_tokens", 163), ("step_time_s", 6.0), ("mean_tool_latency_s", 5.0)),
    turns=(Component("all", 1.0, LogNormal(20, 1.50, 1, 250)),),
    n_prefixes=4, prefix_min=2000, prefix_max=3500,
    task=LogNormal(400, 0.8, 50, 4000),
    output=LogNormal(136.2, 0.6, 10, 1500),  # mean 163: median = 163 * exp(-0.6^2 / 2)
    observation=LogNormal(277.4, 1.0, 0, 8000),  # mean 457: median = 457 * exp(-1/2)
    tool=(Component("command", 1.0, LogNormal(3.0, 1.0, 0.05, 180.0)),),
)

# --- swe-agent -----------------------------------------------------------------------------
# Turns: 30% resolved (lognormal median 27.4, sigma 0.5, [3, 150]: mean 31) and 70% unresolved
# (median 49.7, sigma 0.6, [5, 150]: mean 58; 3% hit the 150 cap, the cost/step limit).
_SWE = ShapeParams(
    name="swe-agent",
    source=("SWE-agent: Yang et al., 'SWE-agent: Agent-Computer Interfaces Enable Automated Software "
            "Engineering', NeurIPS 2024, arXiv 2405.15793 (ACI: file viewer windows, search, edit, "
            "run). Steps per trajectory: resolved 31, unresolved 58 on average (figures given in the "
            "issue; not confirmed in a public source). Failed trajectories are longer and more "
            "variable: Majgaonkar et al., arXiv 2511.00197."),
    assumptions=(
        "resolved share 0.3 (a two-component mixture; the share is our choice)",
        "resolved: lognormal median 27.4, sigma 0.5, [3, 150]; unresolved: median 49.7, sigma 0.6, [5, 150]",
        "observations (file windows, command output): lognormal median 500, sigma 1.0, <= 16000 (mean ~820)",
        "outputs (thought + command): lognormal median 170, sigma 0.4, [40, 800] (p10 ~100, p90 ~280)",
        "3 shared prefixes of 3000-5000 tokens (system prompt, command docs, demonstration)",
        "tool: 85% lognormal median 0.3 s, sigma 0.8 (view/edit/search); 15% median 8 s, sigma 1.0 "
        "(tests, installs), <= 300 s",
        "history is append-only (SWE-agent's collapsing of old observations is not modelled)",
    ),
    targets=(("resolved_turns_mean", 31), ("unresolved_turns_mean", 58), ("resolved_share", 0.3)),
    turns=(Component("resolved", 0.3, LogNormal(27.4, 0.5, 3, 150)),
           Component("unresolved", 0.7, LogNormal(49.7, 0.6, 5, 150))),
    n_prefixes=3, prefix_min=3000, prefix_max=5000,
    task=LogNormal(400, 0.8, 50, 8000),
    output=LogNormal(170, 0.4, 40, 800),
    observation=LogNormal(500, 1.0, 0, 16000),
    tool=(Component("fast", 0.85, LogNormal(0.3, 0.8, 0.01, 300.0)),
          Component("slow", 0.15, LogNormal(8.0, 1.0, 0.01, 300.0))),
)

# --- mooncake-agent ------------------------------------------------------------------------
# Turns: lognormal median 6, sigma 0.8, [1, 40]: mean 8.14 turns, and a request's turn index k
# (= turns of history before it) averages E[n(n-1)/2] / E[n] = 6.58.  First prompt P0 = prefix
# (uniform 3000-5000, mean 4000) + task (median 300, sigma 0.8, mean ~413) ~ 4413, so the mean
# input per request P0 + g * 6.58 = 8596 gives g ~ 636 tokens per turn = output (mean 182) +
# observation (mean ~454).  Gaps: 87.3% fast (lognormal median 0.3 s, sigma 0.6: 97.7% <= 1 s) and
# 12.7% slow (median 7.26 s, sigma 1.2), solved so that P(<= 1 s) = 0.86 and P(<= 10 s) = 0.95.
_MC = ShapeParams(
    name="mooncake-agent",
    source=("Mooncake FAST'25 trace release, kvcache-ai/Mooncake FAST25-release/traces/"
            "toolagent_trace.jsonl ('Tool and Agent' workload: 23,608 requests, average input 8,596 "
            "and output 182 tokens; FAST25-release/README.md). Gap shares (86% of an agent's "
            "consecutive requests within 1 s, 95% within 10 s) from a coding-agent trace cited in the "
            "issue; the source of those two figures was not confirmed."),
    assumptions=(
        "turns per agent: lognormal median 6, sigma 0.8, [1, 40] (mean 8.1); the Mooncake trace has no "
        "session ids, so turns per agent are our choice, fitted only through the mean input",
        "4 shared prefixes of 3000-5000 tokens (system prompt + tool schemas); task median 300",
        "per-turn growth ~636 = output (lognormal mean 182) + observation (lognormal median 275, sigma 1.0)",
        "gap = tool_latency_s: 87.3% lognormal median 0.3 s, sigma 0.6; 12.7% median 7.26 s, sigma 1.2, "
        "<= 300 s",
    ),
    targets=(("mean_input_tokens", 8596), ("mean_output_tokens", 182), ("gap_share_le_1s", 0.86),
             ("gap_share_le_10s", 0.95)),
    turns=(Component("all", 1.0, LogNormal(6, 0.8, 1, 40)),),
    n_prefixes=4, prefix_min=3000, prefix_max=5000,
    task=LogNormal(300, 0.8, 20, 4000),
    output=LogNormal(142.5, 0.7, 1, 2000),  # mean 182: median = 182 * exp(-0.7^2 / 2)
    observation=LogNormal(275.4, 1.0, 0, 16000),  # mean 454
    tool=(Component("fast", 0.873, LogNormal(0.3, 0.6, 0.005, 300.0)),
          Component("slow", 0.127, LogNormal(7.26, 1.2, 0.005, 300.0))),
)

SHAPES: Dict[str, ShapeParams] = {p.name: p for p in (_TB, _SWE, _MC)}



def _tokens(x: float, scale: float, lo: int = 0) -> int:
    return max(lo, int(round(float(x) * scale)))


def _mixture(rng: np.random.Generator, comps: Sequence[Component], size: int) -> np.ndarray:
    """`size` draws from a mixture: pick a component per draw, then draw every component and select."""
    if len(comps) == 1:
        return comps[0].dist.draw(rng, size)
    pick = rng.choice(len(comps), size=size, p=[c.share for c in comps])
    out = np.empty(size)
    for j, c in enumerate(comps):
        vals = c.dist.draw(rng, size)
        out[pick == j] = vals[pick == j]
    return out


def generate_shape(shape: str, n_agents: int, seed: int, scale: float = 1.0, time_scale: float = 1.0,
                   max_context_tokens: Optional[int] = None, turns_scale: float = 1.0) -> List[AgentTrace]:
    """`n_agents` agents of `shape`, deterministic in the arguments (numpy `default_rng(seed)`).

    `scale` multiplies every token count (prefix, task, observation, output; outputs, prefixes and
    tasks stay >= 1); turn counts do not change with it.  `time_scale` multiplies tool latencies.
    `max_context_tokens` (after scaling): an agent stops before a turn whose prompt plus output would
    exceed it; the first turn is always kept.  `turns_scale` shortens lives for a CPU run while keeping
    each agent's final history: turn counts are multiplied by it (at least one turn) and each turn's
    observation grows so that turns x (observation + output) stays what it was.  Agent i draws only after agents 0..i-1, so a smaller
    `n_agents` gives a prefix of a larger one's trace (ids are zero-padded to at least 4 digits).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    if isinstance(n_agents, bool) or not isinstance(n_agents, (int, np.integer)) or n_agents < 1:
        raise ValueError(f"n_agents must be an integer >= 1, got {n_agents!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale) and time_scale >= 0):
        raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale!r}")
    if not (isinstance(turns_scale, (int, float)) and math.isfinite(turns_scale) and 0 < turns_scale <= 1):
        raise ValueError(f"turns_scale must be a number in (0, 1], got {turns_scale!r}")
    if max_context_tokens is not None and (isinstance(max_context_tokens, bool)
                                           or not isinstance(max_context_tokens, (int, np.integer))
                                           or max_context_tokens < 1):
        raise ValueError(f"max_context_tokens must be None or an integer >= 1, got {max_context_tokens!r}")

    p = SHAPES[shape]
    rng = np.random.default_rng(seed)
    # stratified: prefix j is uniform in the j-th of n_prefixes equal slices of [prefix_min, prefix_max],
    # so the prefixes span the range and their mean stays near the middle whatever the seed
    strata = (np.arange(p.n_prefixes) + rng.random(p.n_prefixes)) / p.n_prefixes
    prefix_sizes = np.rint(p.prefix_min + (p.prefix_max - p.prefix_min) * strata)
    prefixes = [_tokens(s, scale, 1) for s in prefix_sizes]
    width = max(4, len(str(n_agents - 1)))
    shares = [c.share for c in p.turns]
    agents: List[AgentTrace] = []
    for i in range(n_agents):
        ci = int(rng.choice(len(p.turns), p=shares)) if len(p.turns) > 1 else 0
        comp = p.turns[ci]
        n_turns = int(np.clip(round(float(comp.dist.draw(rng, 1)[0])), comp.dist.lo, comp.dist.hi))
        pi = int(rng.integers(p.n_prefixes))
        task = _tokens(p.task.draw(rng, 1)[0], scale, 1)
        out = p.output.draw(rng, n_turns)
        obs = p.observation.draw(rng, n_turns)
        lat = _mixture(rng, p.tool, n_turns) * time_scale
        if turns_scale < 1:  # fewer, larger turns: the same final history
            kept = max(1, int(round(n_turns * turns_scale)))
            growth = float((out + obs).sum()) / kept
            out, lat = out[:kept], lat[:kept]
            obs = np.maximum(0.0, growth - out)
        turns: List[Turn] = []
        ctx = prefixes[pi] + task
        for o, a, l in zip(out, obs, lat):
            t = Turn(_tokens(a, scale), _tokens(o, scale, 1), round(float(l), 4))
            if max_context_tokens is not None and turns and ctx + t.output_tokens > max_context_tokens:
                break
            turns.append(t)
            ctx += t.output_tokens + t.append_tokens
        suffix = f"-{comp.name}" if len(p.turns) > 1 else ""
        agents.append(AgentTrace(f"{shape}-{i:0{width}d}{suffix}", f"{shape}-prefix-{pi}",
                                 prefixes[pi], task, tuple(turns)))
    return agents


def _prompts(a: AgentTrace) -> List[int]:
    """Prompt tokens of each turn: the full history before it."""
    out, ctx = [], a.prefix_tokens + a.task_tokens
    for t in a.turns:
        out.append(ctx)
        ctx += t.output_tokens + t.append_tokens
    return out


_GROUP_RE = re.compile(r"-([A-Za-z]+)$")


def shape_stats(agents: Sequence[AgentTrace], turns_band: Tuple[int, int] = (45, 55)) -> Dict[str, Any]:
    """Statistics of a trace to compare with the cited figures.

    - `turns_per_agent`: median / mean / p90 / max turns (LLM calls) per agent.
    - `mean_input_tokens`: mean prompt per request over all turns of all agents, each prompt being
      the full history (prefix + task + earlier outputs and observations).
    - `band`: the same mean over the requests of agents with `turns_band[0] <= turns <= turns_band[1]`
      (default 45-55: compare with a 50-turn trial's per-turn average).
    - `mean_output_tokens`, `median_output_tokens`: per request.
    - `mean_context_growth_tokens`: mean of output + observation over turns followed by another
      turn (= the next prompt minus this one); `mean_observation_tokens` likewise.
    - `tool_gap`: over turns followed by another turn, the gap between the reply and the agent's
      next request (`tool_latency_s`): share <= 1 s, share <= 10 s, median, mean.
    - `groups`: turns per agent by the id suffix (`-resolved`, `-unresolved`), when ids have one.
    - `mean_step_time_s` is None: a step is LLM time + tool time and the trace holds only the tool
      part (`tool_gap.mean_s`); the LLM part depends on the server and its load.
    """
    if not agents:
        raise ValueError("agents must not be empty")
    n_turns = np.array([len(a.turns) for a in agents], dtype=float)
    prompts = [_prompts(a) for a in agents]
    all_prompts = np.array([x for ps in prompts for x in ps], dtype=float)
    outs = np.array([t.output_tokens for a in agents for t in a.turns], dtype=float)
    inner = [t for a in agents for t in a.turns[:-1]]  # turns whose wait and observation are used
    gaps = np.array([t.tool_latency_s for t in inner], dtype=float)
    growth = np.array([t.output_tokens + t.append_tokens for t in inner], dtype=float)
    lo, hi = turns_band
    band = [x for a, ps in zip(agents, prompts) if lo <= len(a.turns) <= hi for x in ps]
    groups: Dict[str, List[int]] = {}
    for a in agents:
        m = _GROUP_RE.search(a.agent_id)
        if m:
            groups.setdefault(m.group(1), []).append(len(a.turns))

    def f(x: Any) -> Optional[float]:
        return None if x is None else float(x)

    return {
        "agents": len(agents),
        "requests": int(n_turns.sum()),
        "prefix_ids": len({a.prefix_id for a in agents}),
        "turns_per_agent": {"median": float(np.median(n_turns)), "mean": float(n_turns.mean()),
                            "p90": float(np.percentile(n_turns, 90)), "max": float(n_turns.max())},
        "mean_first_prompt_tokens": float(np.mean([a.prefix_tokens + a.task_tokens for a in agents])),
        "mean_input_tokens": float(all_prompts.mean()),
        "band": {"turns": [lo, hi], "agents": sum(lo <= len(a.turns) <= hi for a in agents),
                 "mean_input_tokens": f(np.mean(band)) if band else None},
        "mean_output_tokens": float(outs.mean()),
        "median_output_tokens": float(np.median(outs)),
        "mean_context_growth_tokens": f(growth.mean()) if len(growth) else None,
        "mean_observation_tokens": f(np.mean([t.append_tokens for t in inner])) if inner else None,
        "tool_gap": {"n": len(gaps),
                     "share_le_1s": f(np.mean(gaps <= 1.0)) if len(gaps) else None,
                     "share_le_10s": f(np.mean(gaps <= 10.0)) if len(gaps) else None,
                     "median_s": f(np.median(gaps)) if len(gaps) else None,
                     "mean_s": f(gaps.mean()) if len(gaps) else None},
        "groups": {k: {"agents": len(v), "share": len(v) / len(agents), "turns_mean": float(np.mean(v)),
                       "turns_median": float(np.median(v))} for k, v in sorted(groups.items())},
        "mean_step_time_s": None,
        "note": "mean step time = LLM time + tool time; the trace holds only the tool part (tool_gap.mean_s)",
    }

"""Agent traces: the JSONL format, its loader/dumper, and a seeded generator of coding-agent-like traces.

One agent per line:
    {"agent_id": str, "prefix_id": str, "prefix_tokens": int, "task_tokens": int,
     "turns": [{"append_tokens": int, "output_tokens": int, "tool_latency_s": float}, ...]}

Turn k sends the whole history (prefix + task + every earlier output and observation), generates
`output_tokens`, waits `tool_latency_s`, then appends `append_tokens` observation tokens.  See
docs/benchmark.md for the generator's distributions and where they come from.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


class TraceError(ValueError):
    """A malformed trace; the message names the file, line and field."""


@dataclass(frozen=True)
class Turn:
    append_tokens: int  # observation tokens appended after the reply and the tool wait
    output_tokens: int  # tokens the model generates this turn (max_new_tokens, ignore_eos)
    tool_latency_s: float  # tool wait after the reply, before the observation is appended


@dataclass(frozen=True)
class AgentTrace:
    agent_id: str
    prefix_id: str  # agents with the same prefix_id share the same system+tools prefix tokens
    prefix_tokens: int
    task_tokens: int
    turns: tuple[Turn, ...]

    def context_tokens(self) -> int:
        """Tokens of the full history after the last turn's reply (the last observation is never sent)."""
        body = sum(t.output_tokens + t.append_tokens for t in self.turns)
        return self.prefix_tokens + self.task_tokens + body - (self.turns[-1].append_tokens if self.turns else 0)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self) | {"turns": [dataclasses.asdict(t) for t in self.turns]}


# --- load / dump -------------------------------------------------------------------------
_AGENT_FIELDS = {"agent_id": str, "prefix_id": str, "prefix_tokens": int, "task_tokens": int, "turns": list}
_TURN_FIELDS = {"append_tokens": int, "output_tokens": int, "tool_latency_s": float}


def _field(obj: Dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in obj:
        raise TraceError(f"{where}: missing field {name!r}")
    v = obj[name]
    ok = (isinstance(v, (int, float)) if kind is float else isinstance(v, kind)) and not isinstance(v, bool)
    if not ok:
        raise TraceError(f"{where}: field {name!r} must be {kind.__name__}, got {type(v).__name__} {v!r}")
    if kind in (int, float) and (v < 0 or (kind is float and not math.isfinite(v))):
        raise TraceError(f"{where}: field {name!r} must be a finite value >= 0, got {v!r}")
    if kind is str and not v:
        raise TraceError(f"{where}: field {name!r} must be a non-empty string")
    return v


def parse_agent(obj: Any, where: str) -> AgentTrace:
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    vals = {k: _field(obj, k, kind, where) for k, kind in _AGENT_FIELDS.items()}
    if not vals["turns"]:
        raise TraceError(f"{where}: field 'turns' must not be empty")
    turns = []
    for i, t in enumerate(vals["turns"]):
        tw = f"{where}: turns[{i}]"
        if not isinstance(t, dict):
            raise TraceError(f"{tw}: expected a JSON object, got {type(t).__name__}")
        tv = {k: _field(t, k, kind, tw) for k, kind in _TURN_FIELDS.items()}
        turns.append(Turn(tv["append_tokens"], tv["output_tokens"], float(tv["tool_latency_s"])))
    if any(t.output_tokens < 1 for t in turns):
        i = next(i for i, t in enumerate(turns) if t.output_tokens < 1)
        raise TraceError(f"{where}: turns[{i}]: field 'output_tokens' must be >= 1")
    return AgentTrace(vals["agent_id"], vals["prefix_id"], vals["prefix_tokens"], vals["task_tokens"], tuple(turns))


def load_trace(path: str) -> List[AgentTrace]:
    agents: List[AgentTrace] = []
    seen: Dict[str, int] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceError(f"{where}: bad JSON: {e.msg} at column {e.colno}") from None
            a = parse_agent(obj, where)
            if a.agent_id in seen:
                raise TraceError(f"{where}: field 'agent_id': duplicate {a.agent_id!r} (first on line {seen[a.agent_id]})")
            seen[a.agent_id] = n
            agents.append(a)
    if not agents:
        raise TraceError(f"{path}: no agents")
    return agents


def dump_trace(agents: Sequence[AgentTrace], path: str) -> None:
    with open(path, "w") as f:
        for a in agents:
            f.write(json.dumps(a.to_dict()) + "\n")


# --- generator ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceParams:
    """Generator knobs (token counts before `scale`, seconds before `time_scale`)."""

    turns_median: float = 12.0  # turns per agent: lognormal, heavy right tail
    turns_sigma: float = 0.75
    turns_min: int = 2
    turns_max: int = 100
    turns_scale: float = 1.0  # multiplies turn counts (after the draw, before min/max)
    n_prefixes: int = 3  # distinct system+tools prompts
    prefix_min: int = 2000
    prefix_max: int = 5000
    task_median: float = 400.0  # issue / task description
    task_sigma: float = 0.8
    task_max: int = 8000
    append_median: float = 800.0  # observation tokens per turn: lognormal
    append_sigma: float = 1.1  # p90 = median * e^(1.2816 sigma) ~ 3300
    append_max: int = 32000
    output_median: float = 150.0  # output tokens per turn, lognormal clipped to [output_min, output_max]
    output_sigma: float = 0.6
    output_min: int = 50
    output_max: int = 450
    tool_median_s: float = 0.3  # fast tools (file view, edit, grep)
    tool_sigma: float = 0.9
    tool_tail_p: float = 0.1  # share of slow tools (test runs, installs, builds)
    tool_tail_median_s: float = 10.0
    tool_tail_sigma: float = 0.8
    tool_max_s: float = 120.0
    time_scale: float = 1.0  # multiplies tool latency
    long_fraction: float = 0.0  # share of agents whose observations are long_factor x bigger
    long_factor: float = 1.0
    max_context_tokens: Optional[int] = None  # after scaling: drop turns that would exceed this context


def _lognormal(rng: np.random.Generator, median: float, sigma: float, size: int) -> np.ndarray:
    return rng.lognormal(math.log(median), sigma, size)


def _tokens(x: float, scale: float, lo: int = 0) -> int:
    return max(lo, int(round(x * scale)))


def generate_trace(n_agents: int, seed: int, scale: float = 1.0, **overrides: Any) -> List[AgentTrace]:
    """`n_agents` agents, deterministic in (n_agents, seed, scale, overrides).

    `scale` multiplies every token count (prefix, task, appended, output; outputs stay >= 1);
    overrides are `TraceParams` fields, e.g. time_scale=0.1, turns_scale=0.3, long_fraction=0.25.
    """
    try:
        p = TraceParams(**overrides)
    except TypeError:
        bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(TraceParams)})
        raise TypeError(f"unknown trace parameter(s) {bad}; known: {[f.name for f in dataclasses.fields(TraceParams)]}") from None
    if n_agents < 1 or scale <= 0 or p.time_scale < 0:
        raise ValueError("need n_agents >= 1, scale > 0, time_scale >= 0")
    rng = np.random.default_rng(seed)
    prefix_sizes = rng.integers(p.prefix_min, p.prefix_max + 1, size=max(1, p.n_prefixes))
    n_long = int(round(n_agents * p.long_fraction))
    long_ids = set(rng.choice(n_agents, size=n_long, replace=False).tolist()) if n_long else set()
    width = len(str(n_agents - 1))
    agents = []
    for i in range(n_agents):
        pi = int(rng.integers(len(prefix_sizes)))
        n = _lognormal(rng, p.turns_median, p.turns_sigma, 1)[0] * p.turns_scale
        n_turns = int(min(p.turns_max, max(p.turns_min, round(n))))
        task = min(p.task_max, _lognormal(rng, p.task_median, p.task_sigma, 1)[0])
        factor = p.long_factor if i in long_ids else 1.0
        app = np.minimum(p.append_max, _lognormal(rng, p.append_median, p.append_sigma, n_turns)) * factor
        out = np.clip(_lognormal(rng, p.output_median, p.output_sigma, n_turns), p.output_min, p.output_max)
        slow = rng.random(n_turns) < p.tool_tail_p
        lat = np.where(slow, _lognormal(rng, p.tool_tail_median_s, p.tool_tail_sigma, n_turns),
                       _lognormal(rng, p.tool_median_s, p.tool_sigma, n_turns))
        lat = np.minimum(p.tool_max_s, lat) * p.time_scale
        prefix = _tokens(prefix_sizes[pi], scale, 1)
        task_t = _tokens(task, scale, 1)
        turns, ctx = [], prefix + task_t
        for a, o, l in zip(app, out, lat):
            t = Turn(_tokens(a, scale), _tokens(o, scale, 1), round(float(l), 4))
            if p.max_context_tokens is not None and turns and ctx + t.output_tokens > p.max_context_tokens:
                break
            turns.append(t)
            ctx += t.output_tokens + t.append_tokens
        suffix = "-long" if i in long_ids else ""
        agents.append(AgentTrace(f"agent-{i:0{width}d}{suffix}", f"prefix-{pi}", prefix, task_t, tuple(turns)))
    return agents


def summary(agents: Sequence[AgentTrace]) -> Dict[str, Any]:
    """Medians, p90s and totals of a trace."""
    turns = [t for a in agents for t in a.turns]

    def stats(xs: Sequence[float]) -> Dict[str, float]:
        arr = np.asarray(xs, dtype=float)
        return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
                "min": float(arr.min()), "max": float(arr.max())}

    return {
        "agents": len(agents),
        "turns_total": len(turns),
        "prefix_ids": len({a.prefix_id for a in agents}),
        "turns_per_agent": stats([len(a.turns) for a in agents]),
        "prefix_tokens": stats([a.prefix_tokens for a in agents]),
        "task_tokens": stats([a.task_tokens for a in agents]),
        "append_tokens": stats([t.append_tokens for t in turns]),
        "output_tokens": stats([t.output_tokens for t in turns]),
        "tool_latency_s": stats([t.tool_latency_s for t in turns]),
        "final_context_tokens": stats([a.context_tokens() for a in agents]),
        "output_tokens_total": sum(t.output_tokens for t in turns),
        "prompt_tokens_total": sum(_prompt_tokens(a) for a in agents),
    }


def _prompt_tokens(a: AgentTrace) -> int:
    """Prompt tokens the agent sends over all turns (each turn resends its whole history)."""
    total, ctx = 0, a.prefix_tokens + a.task_tokens
    for t in a.turns:
        total += ctx
        ctx += t.output_tokens + t.append_tokens
    return total

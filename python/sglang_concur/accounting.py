"""Thrashing, measured directly: evicted tokens and, per agent, recomputed history.  Pure.

At the end of an agent's turn the radix tree keeps its context (`context_cached`).  When the
agent's next turn is admitted, SGLang matches a prefix of it; whatever part of the previous
context did not match was evicted in between and must be prefilled again: that is the turn's
recomputed tokens.  Agents append to their history, so the previous context is a prefix of the
next prompt (when a client rewrites history, the count is bounded by the new prompt's length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple


@dataclass(slots=True)
class AgentLedger:
    context_cached: int = 0  # tokens of its context the tree kept at the end of its last turn
    recomputed: int = 0  # total recomputed tokens over its turns
    turns: int = 0
    shared: int = 0  # prefix matched on its first turn: shared with other agents (a system prompt)
    first_context: int = 0  # context kept at the end of its first turn
    prompt: int = 0  # prompt tokens of its latest admitted turn (its size while that turn runs)

    def growth(self) -> Optional[float]:
        """Mean context growth per turn so far (None before two finished turns)."""
        return (self.context_cached - self.first_context) / (self.turns - 1) if self.turns > 1 else None


@dataclass
class RecomputeLedger:
    agents: Dict[str, AgentLedger] = field(default_factory=dict)
    evicted_tokens: int = 0  # since start, from the radix tree's eviction path
    recomputed_tokens: int = 0  # since start, over all agents
    returning_prompt_tokens: int = 0  # prompt tokens of turns after an agent's first
    returning_turns: int = 0
    # the same, over the turns of agents that stayed admitted since their last turn: recompute there
    # is congestion among admitted agents (a resumed agent's recompute is the price of its pause)
    admitted_recomputed: int = 0
    admitted_prompt_tokens: int = 0
    lifetimes: List[int] = field(default_factory=list)  # turns of the latest ended agents (at most 256)
    provisional: Dict[str, int] = field(default_factory=dict)  # turns of live agents that look gone (no end call)
    growths: List[float] = field(default_factory=list)  # their mean context growth per turn
    finals: List[int] = field(default_factory=list)  # their private context at the end

    def evicted(self, n: int) -> None:
        self.evicted_tokens += n

    def turn_finished(self, agent: str, context_cached: int) -> None:
        a = self.agents.setdefault(agent, AgentLedger())
        if a.turns <= 1:
            a.first_context = context_cached
        a.context_cached = context_cached

    def turn_admitted(self, agent: str, prompt_len: int, matched: int, resumed: bool = False) -> int:
        """Returns the turn's recomputed tokens.  `resumed`: the agent was paused since its last turn."""
        a = self.agents.setdefault(agent, AgentLedger())
        a.turns += 1
        a.prompt = prompt_len
        if a.turns == 1:
            a.shared = matched
            return 0
        lost = max(0, min(a.context_cached, prompt_len) - matched)
        a.recomputed += lost
        self.recomputed_tokens += lost
        self.returning_prompt_tokens += prompt_len
        self.returning_turns += 1
        if not resumed:
            self.admitted_recomputed += lost
            self.admitted_prompt_tokens += prompt_len
        return lost

    def looks_gone(self, agent: str, gone: bool) -> None:
        """An agent with no end call looks gone (or came back): count its lifetime provisionally."""
        a = self.agents.get(agent)
        if gone and a is not None and a.turns:
            self.provisional[agent] = a.turns
        else:
            self.provisional.pop(agent, None)

    def ended_lifetimes(self) -> List[int]:
        return self.lifetimes + list(self.provisional.values())

    def forget(self, agent: str) -> None:
        """The agent ended: its ledger goes, its lifetime is kept for projections."""
        self.provisional.pop(agent, None)
        a = self.agents.pop(agent, None)
        if a is not None and a.turns:
            self.lifetimes.append(a.turns)
            del self.lifetimes[:-256]
            if (g := a.growth()) is not None:
                self.growths.append(g)
                del self.growths[:-256]
            self.finals.append(max(0, a.context_cached - a.shared))
            del self.finals[:-256]

    def ceiling(self) -> float:
        """The largest private context an ended agent reached (inf before three have ended)."""
        return float(max(self.finals)) if len(self.finals) >= 3 else float("inf")

    def typical_growth(self) -> float:
        """Median context growth per turn over live and ended agents (0 before any has two turns):
        the median, so that a few very large agents do not make every new agent look large."""
        gs = sorted([g for a in self.agents.values() if (g := a.growth()) is not None] + self.growths)
        return gs[len(gs) // 2] if gs else 0.0


def remaining_turns(lifetimes: Sequence[int], ages: Sequence[int], horizon: int) -> List[float]:
    """Expected turns still to come, E[T - t | T >= t], for an agent that has done t turns, t in
    [0, horizon].  Kaplan-Meier over the ended agents' lifetimes T, with the live agents' ages as
    censored observations (T >= age): early enders alone would make lives look short.  Beyond the
    oldest age seen, K, the survivors are given K more turns (heavy tails: the expected remaining
    life grows with age), which is also the whole estimate before any agent has ended."""
    k_max = max(1, horizon, *lifetimes, *ages)
    ended = [0] * (k_max + 2)
    at_risk = [0] * (k_max + 2)  # agents observed with T >= k, accumulated below
    for n in lifetimes:
        ended[n] += 1
        at_risk[n] += 1
    for a in ages:
        at_risk[a] += 1
    for k in range(k_max, -1, -1):
        at_risk[k] += at_risk[k + 1]
    surv = [1.0] * (k_max + 1)  # surv[k] = P(T > k)
    p = 1.0
    for k in range(1, k_max + 1):
        if at_risk[k]:
            p *= 1 - ended[k] / at_risk[k]
        surv[k] = p
    tail = [0.0] * (k_max + 2)  # tail[k] = sum of surv[k..k_max-1] + surv[k_max] * k_max
    tail[k_max] = surv[k_max] * k_max
    for k in range(k_max - 1, -1, -1):
        tail[k] = tail[k + 1] + surv[k]
    out = []
    for t in range(horizon + 1):
        alive = surv[t - 1] if t >= 1 else 1.0  # P(T >= t)
        out.append(max(1.0, tail[t] / alive) if alive > 0 else 1.0)
    return out


def projection(ledger: RecomputeLedger, agent: str, pending_prompt: int, default_growth: float,
               remaining: Sequence[float] = (), ceiling: float = float("inf")) -> Tuple[float, float, float]:
    """(now, at its end, turns left) of the KV tokens the agent holds: its private context (the shared
    prefix is counted once, outside) grown at its own mean rate (else `default_growth`) for its expected
    remaining turns (`remaining[turns]`, else as many as it has done), but not past `ceiling` (the
    largest context an ended agent reached) unless it is already there (then one more turn).  An
    agent not seen yet is priced by its queued prompt and the mean growth over a whole expected life."""
    a = ledger.agents.get(agent)
    if a is None or a.turns == 0:
        more = remaining[0] if remaining else 1.0
        return float(pending_prompt), max(1.0, pending_prompt + default_growth * more), more
    g = default_growth if a.growth() is None else a.growth()
    base = max(a.context_cached, a.prompt, pending_prompt) - a.shared
    more = remaining[a.turns] if a.turns < len(remaining) else max(1, a.turns)
    projected = base + g * more
    if projected > ceiling:  # no agent has been seen to grow that far: at most the ceiling, at least one more turn
        projected = max(ceiling, base + g)
    return float(base), max(1.0, projected), float(more)


def footprint(ledger: RecomputeLedger, agent: str, pending_prompt: int, default_growth: float,
              remaining: Sequence[float] = (), ceiling: float = float("inf")) -> float:
    """Predicted KV tokens the agent will hold at its end (`projection`)."""
    return projection(ledger, agent, pending_prompt, default_growth, remaining, ceiling)[1]


def stagger(agents: Iterable[Tuple[float, float, float]]) -> float:
    """Sum of the agents' end footprints over the peak of their summed footprints in the coming turns
    (>= 1), each agent growing linearly from now to its end, `turns left` turns ahead, then gone.
    Agents of one age peak together (1: a budget of end footprints is the pool); agents of mixed ages
    do not (the young grow while the old end), so a budget of end footprints may exceed the pool by
    this factor.  O(n log n)."""
    rows = sorted((max(1e-9, left), base, max(base, end)) for base, end, left in agents)
    if not rows:
        return 1.0
    total = sum(end for _, _, end in rows)
    peak = bases = slopes = 0.0
    for left, base, end in reversed(rows):  # k = each agent's last turn, latest first: the agents still alive
        bases += base
        slopes += (end - base) / left
        peak = max(peak, bases + slopes * left)
    return max(1.0, total / peak) if peak > 0 else 1.0

"""Thrashing, measured directly: evicted tokens and, per agent, recomputed history.  Pure.

At the end of an agent's turn the radix tree keeps its context (`context_cached`).  When the
agent's next turn is admitted, SGLang matches a prefix of it; whatever part of the previous
context did not match was evicted in between and must be prefilled again: that is the turn's
recomputed tokens.  Agents append to their history, so the previous context is a prefix of the
next prompt (when a client rewrites history, the count is bounded by the new prompt's length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass(slots=True)
class AgentLedger:
    context_cached: int = 0  # tokens of its context the tree kept at the end of its last turn
    recomputed: int = 0  # total recomputed tokens over its turns
    turns: int = 0
    shared: int = 0  # prefix matched on its first turn: shared with other agents (a system prompt)
    first_context: int = 0  # context kept at the end of its first turn

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

    def forget(self, agent: str) -> None:
        self.agents.pop(agent, None)


def footprint(ledger: RecomputeLedger, agent: str, pending_prompt: int, default_growth: float) -> float:
    """Predicted KV tokens the agent will hold: its private context (the shared prefix is counted
    once, outside) grown at its own mean rate (else `default_growth`) for as many more turns as it
    has done (agent lifetimes are heavy-tailed: the expected remaining life grows with age).
    An agent not seen yet is priced by its queued prompt and one turn of growth."""
    a = ledger.agents.get(agent)
    if a is None or a.turns == 0:
        return max(1.0, pending_prompt + default_growth)
    g = a.growth()
    base = max(a.context_cached, pending_prompt) - a.shared
    return max(1.0, base + (default_growth if g is None else g) * max(1, a.turns))

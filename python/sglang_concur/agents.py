"""The agent lifecycle, pure (no SGLang, no clock): who a request belongs to, and whether an agent
with nothing queued or in flight is in a tool or gone.

Identity (`ContextIndex`), in the tokenizer process, before a request reaches a scheduler:
  1. the request's `routing_key` (the body field, or the `X-SMG-Routing-Key` header);
  2. with `--concur-agent-id auto`, a request without one belongs to the agent whose last finished
     turn's context (that turn's prompt plus its output) its prompt continues: agents append to
     their history, so the next turn starts with the last one.  The match must reach into the
     earlier turn's output, so a prompt that only shares a system prompt, or that repeats another
     agent's first prompt (n samples of one task), starts a new agent.  Inferred ids are `~1`, `~2`...
  Limits: a client that rewrites its history between turns (drops or re-renders earlier outputs)
  is seen as a new agent each turn; agents with identical histories cannot be told apart (the one
  with nothing in flight is chosen).

In a tool or gone (`GapModel`), in the scheduler: an agent between turns and an agent that is gone
look the same.  The gaps between an agent's reply and its next request (its tool time) are
measured over the workload; an agent idle for `t` comes back with probability

    P(return | t) = (1 - h) S(t) / ((1 - h) S(t) + h),

S(t) the chance that a gap lasts longer than t (the share of the n observed gaps longer than t,
smoothed as (k + 1) / (n + 2) so that a few short gaps never make a long wait look impossible), h
the chance that the agent's last turn was its last (1 / (1 + its expected remaining turns), from the
lifetimes of ended agents: accounting.remaining_turns).  An agent holds its admission room while it
is more likely in a tool than gone (P >= 1/2), i.e. until it has been idle longer than all but 1/R of
the gaps seen, R its expected remaining turns; then its room is released, and it gets it back first
when it returns.  Nothing here is a constant of the workload: gaps and lifetimes are measured.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence, Tuple

INFERRED = "~"  # prefix of inferred agent ids: not a character a client id may contain


def is_inferred(agent_id: str) -> bool:
    return agent_id.startswith(INFERRED)


# --- identity ------------------------------------------------------------------------------
@dataclass(slots=True)
class _Context:
    key: int  # chain hash of the context's full blocks
    tail: Tuple[int, ...]  # the tokens after them
    prompt: int  # prompt length of the turn that left this context
    length: int  # context length: that prompt plus its output, less the last output token (never cached)
    last_seen: float
    inflight: int = 0


@dataclass(slots=True)
class _Pending:
    agent: str
    key: int  # chain hash of the prompt's full blocks
    tail: Tuple[int, ...]  # the prompt's tokens after them
    prompt: int


@dataclass
class ContextIndex:
    """Agents' last contexts, keyed by the chain hash of their full `block`-token blocks (a radix
    index at block granularity: O(prompt / block) hashes per lookup, O(block) tokens kept per agent)."""

    block: int = 32
    max_agents: int = 1 << 16
    contexts: Dict[str, _Context] = field(default_factory=dict)
    pending: Dict[str, _Pending] = field(default_factory=dict)  # request id -> its prompt, until it finishes
    _by_key: Dict[int, Dict[str, None]] = field(default_factory=dict)
    _count: int = 0

    def assign(self, rid: str, tokens: Sequence[int], now: float) -> str:
        """The agent of a request without a routing key: the agent whose context `tokens` continue,
        else a new one.  The request is pending until `finished`."""
        hashes = self._chain(tokens)
        agent = self._match(tokens, hashes)
        if agent is None:
            self._count += 1
            agent = f"{INFERRED}{self._count}"
        ctx = self.contexts.get(agent)
        if ctx is not None:
            ctx.inflight += 1
            ctx.last_seen = now
        k = len(hashes) - 1
        self.pending[rid] = _Pending(agent, hashes[-1], tuple(tokens[k * self.block:]), len(tokens))
        return agent

    def finished(self, rid: str, output: Sequence[int], now: float, completed: bool = True) -> None:
        """A pending request finished; `completed` False for an abort (the context is not updated)."""
        p = self.pending.pop(rid, None)
        if p is None:
            return
        ctx = self.contexts.get(p.agent)
        if ctx is not None:
            ctx.inflight = max(0, ctx.inflight - 1)
            ctx.last_seen = now
        if not completed or len(output) < 2:  # nothing of the output to continue: keep the old context
            return
        key, tail = p.key, p.tail + tuple(output[:-1])
        while len(tail) >= self.block:
            key, tail = hash((key, tail[: self.block])), tail[self.block:]
        if ctx is not None:
            self._unlink(p.agent, ctx.key)
            ctx.key, ctx.tail, ctx.prompt, ctx.length = key, tail, p.prompt, p.prompt + len(output) - 1
        else:
            if len(self.contexts) >= self.max_agents:
                self.forget(next(iter(self.contexts)))
            self.contexts[p.agent] = _Context(key, tail, p.prompt, p.prompt + len(output) - 1, now)
        self._by_key.setdefault(key, {})[p.agent] = None

    def expire(self, now: float, idle_timeout: float) -> List[str]:
        """Forget agents (and pending requests whose answer never came) idle longer than `idle_timeout`."""
        gone = [a for a, c in self.contexts.items() if c.inflight == 0 and now - c.last_seen > idle_timeout]
        for a in gone:
            self.forget(a)
        return gone

    def forget(self, agent: str) -> None:
        ctx = self.contexts.pop(agent, None)
        if ctx is not None:
            self._unlink(agent, ctx.key)

    def drop_pending(self, rids: Sequence[str]) -> None:
        for rid in rids:
            self.finished(rid, (), 0.0, completed=False)

    def _chain(self, tokens: Sequence[int]) -> List[int]:
        b, h, out = self.block, 0, [0]
        for i in range(b, len(tokens) + 1, b):
            h = hash((h, tuple(tokens[i - b:i])))
            out.append(h)
        return out

    def _match(self, tokens: Sequence[int], hashes: List[int]) -> Optional[str]:
        """The agent with the longest context that `tokens` continue (past its prompt); among equal
        contexts the first with nothing in flight."""
        b, n = self.block, len(tokens)
        for k in range(len(hashes) - 1, -1, -1):
            agents = self._by_key.get(hashes[k])
            if not agents:
                continue
            found = None
            for a in agents:
                c = self.contexts[a]
                if c.length <= c.prompt or c.length > n or tuple(tokens[k * b:c.length]) != c.tail:
                    continue
                if c.inflight == 0:
                    return a
                found = found or a
            if found is not None:
                return found
        return None

    def _unlink(self, agent: str, key: int) -> None:
        agents = self._by_key.get(key)
        if agents is not None:
            agents.pop(agent, None)
            if not agents:
                del self._by_key[key]


# --- in a tool or gone -----------------------------------------------------------------------
@dataclass
class GapModel:
    """The workload's recent gaps between an agent's reply and its next request."""

    size: int = 512
    _order: Deque[float] = field(default_factory=deque)
    _sorted: List[float] = field(default_factory=list)

    def observe(self, gap: float) -> None:
        if len(self._order) >= self.size:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._order.append(gap)
        bisect.insort(self._sorted, gap)

    def survival(self, t: float) -> Optional[float]:
        """P(a gap lasts longer than `t`): the observed share, smoothed (None before any gap)."""
        n = len(self._sorted)
        return (n - bisect.bisect_right(self._sorted, t) + 1) / (n + 2) if n else None

    def p_return(self, idle: float, hazard: float) -> float:
        """P(an agent idle for `idle` seconds comes back); `hazard` = P(its last turn was its last).
        1 before any gap is known (nothing to compare with: the idle timeout bounds it)."""
        s = self.survival(idle)
        if s is None:
            return 1.0
        stay = (1.0 - hazard) * s
        return stay / (stay + hazard) if stay + hazard > 0 else 1.0

    def mean(self) -> float:
        return sum(self._order) / len(self._order) if self._order else 0.0

    def __len__(self) -> int:
        return len(self._order)

"""Agent-level admission: which agents may have requests scheduled.  Pure: no SGLang, no clock
(the caller passes `now`), so every rule here is tested in microseconds.

An agent is WAITING from its first request until the window has room, then ACTIVE until it ends
(explicit end, or `idle_timeout` seconds with nothing queued or in flight).  The window counts
agents (cost 1 each) or, with a `cost` function, their predicted KV footprints in tokens.  When
the active agents exceed the window, an active agent whose next turn arrives with nothing of its
own in flight (a turn boundary) is PAUSED: its requests wait, nothing running is touched; the
candidates with the highest `pause_key` go first.  Room goes to paused agents first (in pause
order), then to waiting agents (in arrival order).  With costs, an agent too large for the room
left may be overtaken by later ones that fit (backfill), for at most `backfill_wait` seconds; then
room is kept for it.  One agent is always admitted when none is active.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set


class AgentState(str, enum.Enum):
    WAITING = "waiting"
    ACTIVE = "active"
    PAUSED = "paused"


@dataclass(slots=True)
class Agent:
    agent_id: str
    state: AgentState
    seq: int  # arrival order while WAITING, pause order while PAUSED, admission order if ACTIVE
    last_seen: float  # last time it had a request queued or in flight
    admissions: int = 0
    cost: float = 1.0  # window units it holds while ACTIVE (its cost when admitted or last refreshed)
    resumed: bool = False  # admitted again after a pause: its next turn may recompute what the pause cost
    blocked_since: Optional[float] = None  # first time it was next in line and did not fit


Cost = Callable[[str], float]


@dataclass(frozen=True, slots=True)
class Counts:
    active: int
    paused: int
    waiting: int


@dataclass(slots=True)
class AdmissionTable:
    idle_timeout: float
    backfill_wait: float = 30.0  # seconds a blocked head of line may be overtaken by smaller agents
    agents: Dict[str, Agent] = field(default_factory=dict)
    _seq: "itertools.count[int]" = field(default_factory=itertools.count)
    _active: Set[str] = field(default_factory=set)
    used: float = 0.0  # window units held by the active agents

    def update(self, window: float, wanting: Iterable[str], inflight: Mapping[str, int], now: float,
               cost: Optional[Cost] = None, pause_key: Optional[Callable[[Agent], float]] = None,
               pause_to: Optional[float] = None) -> Set[str]:
        """One gate decision.  `wanting`: agents with queued requests, in queue order; `inflight`:
        requests in flight per agent.  Agents are paused while the active ones hold more than
        `pause_to` (default: the window; `inf`: never pause).  Returns the ids of the ACTIVE agents
        (whose requests may run).  Cost: O(len(wanting)); agents with nothing queued are not looked at."""
        pause_to = window if pause_to is None else pause_to
        agents = self.agents
        claims: List[Agent] = []
        boundary: List[Agent] = []
        for aid in wanting:
            a = agents.get(aid)
            if a is None:
                a = agents[aid] = Agent(aid, AgentState.WAITING, next(self._seq), now)
            a.last_seen = now
            if a.state is not AgentState.ACTIVE:
                claims.append(a)
            elif not inflight.get(aid):
                boundary.append(a)
        if boundary and self.used > pause_to:  # the window shrank: pause at turn boundaries
            boundary.sort(key=pause_key or (lambda a: -a.seq), reverse=pause_key is not None)
            for a in boundary:
                if self.used <= pause_to:
                    break
                self._set(a, AgentState.PAUSED)
        if claims and self.used < window:
            claims.sort(key=lambda a: (a.state is not AgentState.PAUSED, a.seq))
            head: Optional[Agent] = None
            for a in claims:
                if self.used >= window:
                    break
                c = 1.0 if cost is None else cost(a.agent_id)
                if self._active and self.used + c > window:
                    if cost is None:
                        break  # agent slots: every claim costs the same
                    if head is not None:
                        continue
                    head = a  # next in line and too large for the room left: smaller ones may backfill
                    if a.blocked_since is None:
                        a.blocked_since = now
                    if now - a.blocked_since > self.backfill_wait:
                        break  # ...until it has waited long enough: then room is kept for it
                    continue
                a.blocked_since = None
                a.cost = c
                a.resumed = a.state is AgentState.PAUSED
                self._set(a, AgentState.ACTIVE)
                a.admissions += 1
        return self._active

    @property
    def active(self) -> Set[str]:
        return self._active

    def refresh(self, cost: Cost) -> None:
        """Re-price the active agents (footprints grow); called once per control step."""
        for aid in self._active:
            self.agents[aid].cost = cost(aid)
        self.used = sum(self.agents[aid].cost for aid in self._active)

    def sync(self, busy: Set[str], now: float) -> None:
        """Agents with requests in flight are active and not idle (also one ended while it ran:
        it holds a slot until its request finishes)."""
        for aid in busy:
            a = self.agents.get(aid)
            if a is None:
                a = self.agents[aid] = Agent(aid, AgentState.WAITING, next(self._seq), now)
                self._set(a, AgentState.ACTIVE)
            elif a.state is not AgentState.ACTIVE:
                self._set(a, AgentState.ACTIVE)
            a.last_seen = now

    def touch(self, queued: Iterable[str], now: float) -> None:
        """Agents with requests queued are not idle."""
        agents = self.agents
        for aid in queued:
            a = agents.get(aid)
            if a is not None:
                a.last_seen = now

    def expire(self, now: float) -> List[str]:
        """End the agents idle for longer than `idle_timeout`; returns their ids."""
        gone = [a.agent_id for a in self.agents.values() if now - a.last_seen > self.idle_timeout]
        for aid in gone:
            self.end(aid)
        return gone

    def end(self, agent_id: str) -> bool:
        """Explicit end of an agent: its slot frees at once.  Requests it still has in flight keep
        running; a later request starts it again as a new agent."""
        a = self.agents.pop(agent_id, None)
        if a is not None and a.state is AgentState.ACTIVE:
            self._active.discard(agent_id)
            self.used -= a.cost
        return a is not None

    def counts(self) -> Counts:
        n = len(self.agents)
        paused = sum(1 for a in self.agents.values() if a.state is AgentState.PAUSED)
        return Counts(active=len(self._active), paused=paused, waiting=n - len(self._active) - paused)

    def _set(self, a: Agent, state: AgentState) -> None:
        if state is AgentState.ACTIVE and a.state is not AgentState.ACTIVE:
            self._active.add(a.agent_id)
            self.used += a.cost
        elif state is not AgentState.ACTIVE and a.state is AgentState.ACTIVE:
            self._active.discard(a.agent_id)
            self.used -= a.cost
        a.state = state
        a.seq = next(self._seq)

"""Agent-level admission: which agents may have requests scheduled.  Pure: no SGLang, no clock
(the caller passes `now`), so every rule here is tested in microseconds.

An agent is WAITING from its first request until the window has room, then ACTIVE until it ends
(explicit end, or `idle_timeout` seconds with nothing queued or in flight).  The window counts
agents (cost 1 each) or, with a `cost` function, their predicted KV footprints in tokens; an
active agent with nothing queued or in flight (in a tool, or gone) is charged less as it looks
more gone (`refresh`), and its full price again the moment it returns.  When the active agents
exceed the window, an active agent whose next turn arrives with nothing of its own in flight (a
turn boundary) is PAUSED: its requests wait, nothing running is touched; the candidates with the
highest `pause_key` go first.  Room goes to paused agents first (in pause order), then to waiting
agents (in arrival order).  With costs, an agent too large for the room left may be overtaken by
later ones that fit (backfill), for at most `backfill_wait` seconds; then room is kept for it.  One
agent is always admitted when none is active.  An agent ended while a request of it runs is ENDING:
it holds no room, what it has queued (a request SGLang retracted) still runs, and it leaves when
nothing of it is in flight.

Every collection is insertion-ordered (dicts, lists): decisions never depend on a set's hash order,
so every TP rank, fed the same events, takes the same decisions.  `digest` folds each state change.
"""

from __future__ import annotations

import enum
import itertools
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, KeysView, List, Mapping, Optional


class AgentState(str, enum.Enum):
    WAITING = "waiting"
    ACTIVE = "active"
    PAUSED = "paused"
    ENDING = "ending"


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
    idle_since: Optional[float] = None  # when its last request finished, until its next one arrives
    held: bool = False  # held back (waiting or paused) since its last admission: counted in `holds` once


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
    active: Dict[str, None] = field(default_factory=dict)  # ACTIVE agents, in admission order
    ending: Dict[str, None] = field(default_factory=dict)  # ENDING agents: what they have queued still runs
    used: float = 0.0  # window units held by the active agents
    digest: int = 0  # crc32 over every state change, in order: equal on ranks that decided alike
    holds: int = 0  # agents held back so far: a claim refused by a decision, or a pause (once per wait)
    _seq: "itertools.count[int]" = field(default_factory=itertools.count)

    def update(self, window: float, wanting: Iterable[str], inflight: Mapping[str, int], now: float,
               cost: Optional[Cost] = None, pause_key: Optional[Callable[[Agent], float]] = None,
               pause_to: Optional[float] = None) -> KeysView[str]:
        """One gate decision.  `wanting`: agents with queued requests, in queue order (active ones
        may be left out while nothing can be paused); `inflight`: requests in flight per agent.
        Agents are paused while the active ones hold more than `pause_to` (default: the window;
        `inf`: never pause).  Returns the ACTIVE agents (whose requests may run).  Cost:
        O(len(wanting)); agents with nothing queued are not looked at."""
        pause_to = window if pause_to is None else pause_to
        agents = self.agents
        claims: List[Agent] = []
        boundary: List[Agent] = []
        for aid in wanting:
            a = agents.get(aid)
            if a is None or a.state is AgentState.ENDING and not inflight.get(aid):
                if a is not None:
                    self.ending.pop(aid, None)
                a = agents[aid] = Agent(aid, AgentState.WAITING, next(self._seq), now)
            a.last_seen = now
            if a.state is AgentState.WAITING or a.state is AgentState.PAUSED:
                claims.append(a)
            elif a.state is AgentState.ACTIVE and not inflight.get(aid):
                boundary.append(a)
        if boundary and self.used > pause_to:  # the window shrank: pause at turn boundaries
            boundary.sort(key=pause_key or (lambda a: -a.seq), reverse=pause_key is not None)
            for a in boundary:
                if self.used <= pause_to or len(self.active) <= 1:  # one agent always stays admitted
                    break
                self._set(a, AgentState.PAUSED)
        if claims and self.used < window:
            claims.sort(key=lambda a: (a.state is not AgentState.PAUSED, a.seq))
            head: Optional[Agent] = None
            for a in claims:
                if self.used >= window:
                    break
                c = 1.0 if cost is None else cost(a.agent_id)
                if self.active and self.used + c > window:
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
        for a in claims:  # the claims left out wait: counted once per wait
            if a.state is not AgentState.ACTIVE:
                self._hold(a)
        return self.active.keys()

    def must_wait(self, agent_id: str, window: float, now: float, cost: Optional[Cost] = None) -> bool:
        """A new agent arrives while earlier claims are held and nothing changed: when it cannot fit
        either, it waits (registered in arrival order) without a decision; False when a decision
        could admit it (it would fit: backfill), so the caller decides."""
        if agent_id in self.agents or not self.active:
            return False
        c = 1.0 if cost is None else cost(agent_id)
        if self.used + c <= (int(window) if cost is None else window):
            return False
        a = self.agents[agent_id] = Agent(agent_id, AgentState.WAITING, next(self._seq), now)
        self._hold(a)
        self.digest = zlib.crc32(f"{agent_id}>waiting;".encode(), self.digest)
        return True

    def came_back(self, agent_id: str, now: float, cost: Optional[Cost] = None) -> Optional[float]:
        """A request of an idle agent arrived: it is charged its full price again.  Returns the gap
        since its last turn ended (None if it was not idle)."""
        a = self.agents.get(agent_id)
        if a is None or a.idle_since is None:
            return None
        gap, a.idle_since, a.last_seen = now - a.idle_since, None, now
        if a.state is AgentState.ACTIVE:
            c = 1.0 if cost is None else cost(agent_id)
            self.used += c - a.cost
            a.cost = c
        return gap

    def refresh(self, cost: Cost) -> None:
        """Re-price the active agents (footprints grow, idle agents fade); once per control step."""
        agents, used = self.agents, 0.0
        for aid in self.active:
            a = agents[aid]
            a.cost = cost(aid)
            used += a.cost
        self.used = used

    def sync(self, busy: Iterable[str], now: float) -> None:
        """Agents with requests in flight (in running order) are active and not idle (an ENDING one
        stays ENDING: it holds no room)."""
        for aid in busy:
            a = self.agents.get(aid)
            if a is None:
                a = self.agents[aid] = Agent(aid, AgentState.WAITING, next(self._seq), now)
                self._set(a, AgentState.ACTIVE)
            elif a.state is AgentState.WAITING or a.state is AgentState.PAUSED:
                self._set(a, AgentState.ACTIVE)
            a.last_seen = now
            a.idle_since = None

    def touch(self, queued: Iterable[str], now: float) -> None:
        """Agents with requests queued are not idle (a next request queued before the last reply
        came out is no gap: it stays unmeasured)."""
        agents = self.agents
        for aid in queued:
            a = agents.get(aid)
            if a is not None:
                a.last_seen = now
                a.idle_since = None

    def turn_ended(self, agent_id: str, now: float) -> bool:
        """The agent's last request in flight finished: it is idle from `now` (in a tool, or gone).
        Returns True when an ENDING agent left for good."""
        a = self.agents.get(agent_id)
        if a is None:
            return False
        if a.state is AgentState.ENDING:
            del self.agents[agent_id]
            self.ending.pop(agent_id, None)
            return True
        a.idle_since = a.last_seen = now
        return False

    def expire(self, now: float, busy: Mapping[str, int]) -> List[str]:
        """End the agents idle for longer than `idle_timeout`, and ENDING agents with nothing in
        flight; returns the ids that left."""
        gone = [a.agent_id for a in self.agents.values()
                if now - a.last_seen > self.idle_timeout or a.state is AgentState.ENDING and not busy.get(a.agent_id)]
        for aid in gone:
            self._leave(aid)
        return gone

    def end(self, agent_id: str, inflight: int = 0) -> bool:
        """Explicit end of an agent: its room frees at once.  With requests still in flight it is
        ENDING until they finish; a later request starts it again as a new agent."""
        a = self.agents.get(agent_id)
        if a is None:
            return False
        if inflight:
            self._set(a, AgentState.ENDING)
        else:
            self._leave(agent_id)
        return True

    def counts(self) -> Counts:
        paused = waiting = 0
        for a in self.agents.values():
            paused += a.state is AgentState.PAUSED
            waiting += a.state is AgentState.WAITING
        return Counts(active=len(self.active), paused=paused, waiting=waiting)

    def _leave(self, agent_id: str) -> None:
        a = self.agents.pop(agent_id)
        self.ending.pop(agent_id, None)
        if a.state is AgentState.ACTIVE:
            del self.active[agent_id]
            self.used -= a.cost
        self.digest = zlib.crc32(f"{agent_id}>gone;".encode(), self.digest)

    def _hold(self, a: Agent) -> None:
        if not a.held:
            a.held = True
            self.holds += 1

    def _set(self, a: Agent, state: AgentState) -> None:
        if state is AgentState.PAUSED:
            self._hold(a)
        elif state is AgentState.ACTIVE:
            a.held = False
        if state is AgentState.ACTIVE and a.state is not AgentState.ACTIVE:
            self.active[a.agent_id] = None
            self.used += a.cost
        elif state is not AgentState.ACTIVE and a.state is AgentState.ACTIVE:
            del self.active[a.agent_id]
            self.used -= a.cost
        if state is AgentState.ENDING:
            self.ending[a.agent_id] = None
        elif a.state is AgentState.ENDING:
            self.ending.pop(a.agent_id, None)
        a.state = state
        a.seq = next(self._seq)
        self.digest = zlib.crc32(f"{a.agent_id}>{state.value};".encode(), self.digest)

"""The controller: window + admission table + recompute ledger, stepped by the scheduler glue.
Pure: no SGLang, no clock (times are passed in), so it runs in tests as it runs in the engine.

For `native` it also prices agents and decides when pausing is worth it:
- price = the agent's predicted footprint at its end (accounting.footprint: own growth times the
  Kaplan-Meier expected remaining turns, at most the largest context an ended agent reached),
  at most the capacity less a typical agent's price (a typical agent always fits beside the
  largest), and at least capacity / 8 until three agents have ended (a prior, replaced by data);
- a mild cut (recompute above the threshold) only stops admission: pausing throws history away;
- agents are paused, at turn boundaries, down to the budget only when recompute is severe (over
  four times the threshold) or the active agents are predicted to need twice the budget (early,
  while the histories a pause throws away are short); no cut starts pausing while the gate's drain
  exceeds the engine's work: a paused agent is held, and the held agents' lifetimes then set the
  batch's end (a pause already under way goes on until the budget grows or the active agents fit).

For every policy, an agent with nothing queued or in flight keeps its room while it is more
likely in a tool than gone (agents.GapModel); then its room is released (the end call is an
optimisation, never a requirement), and it is charged again the moment it returns.  The signals the native law
weighs (recompute, lost work, the stagger of the agents' ages) are counted here from the
events the glue reports.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterable, KeysView, List, Mapping, Optional, Tuple

from sglang_concur.accounting import RecomputeLedger, footprint, projection, remaining_turns, stagger
from sglang_concur.admission import Agent, AdmissionTable, AgentState
from sglang_concur.agents import GapModel, is_inferred
from sglang_concur.config import ConcurConfig
from sglang_concur.control import NativePolicy, Policy, Signals, slots


@dataclass(slots=True)
class IntervalStats:
    hit_tokens: int = 0  # prompt tokens matched in the radix cache (SGLang's log_hit_tokens)
    input_tokens: int = 0  # prompt tokens prefilled (SGLang's log_input_tokens: the uncached part)
    recomputed: int = 0  # ledger totals (turns of agents that stayed admitted) at the interval's start
    returning: int = 0
    lost: float = 0.0  # seconds the engine had nothing to run while the gate held requests
    idle_s: float = 0.0  # seconds the engine had nothing to run (held requests or not)
    turns: int = 0  # turns admitted

    def hit_rate(self) -> Optional[float]:
        """SGLang's cache hit rate: hit / (hit + prefilled)."""
        total = self.hit_tokens + self.input_tokens
        return self.hit_tokens / total if total else None


@dataclass(slots=True)
class Sample:
    """One control interval (or a sum of them: the signals' horizon)."""
    recomputed: int = 0  # history tokens of returning turns prefilled again
    returning: int = 0  # prompt tokens of returning turns
    lost: float = 0.0  # seconds idle while the gate held requests
    secs: float = 0.0
    idle_s: float = 0.0  # seconds the engine had nothing to run
    turns: int = 0  # turns admitted

    def add(self, o: "Sample") -> None:
        for f in Sample.__slots__:
            setattr(self, f, getattr(self, f) + getattr(o, f))

    def recompute_ratio(self) -> Optional[float]:
        return self.recomputed / self.returning if self.returning else None

    def lost_work(self) -> float:
        return min(1.0, self.lost / self.secs) if self.secs > 0 else 0.0

    def busy_per_turn(self) -> Optional[float]:
        """Engine seconds (not idle) per turn admitted."""
        return max(0.0, self.secs - self.idle_s) / self.turns if self.turns else None


@dataclass
class ConcurController:
    config: ConcurConfig
    policy: Policy
    table: AdmissionTable
    window: float
    next_control: float
    interval: IntervalStats = field(default_factory=IntervalStats)
    window_changes: Dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    last_signals: Optional[Signals] = None
    held: List[Any] = field(default_factory=list)  # requests the last gate decision held back
    ledger: RecomputeLedger = field(default_factory=RecomputeLedger)
    default_growth: float = 0.0  # median per-turn context growth over agents (prices agents not measured yet)
    pending_prompt: Dict[str, int] = field(default_factory=dict)  # first queued prompt per agent
    settle_until_turns: int = 0  # ledger.returning_turns at which the last cut has been seen
    pause_to: float = float("inf")  # native: pause agents only down to the last cut, not as footprints grow
    remaining: List[float] = field(default_factory=list)  # expected remaining turns by turns done
    ceiling: float = float("inf")  # largest private context an ended agent reached
    typical: float = 0.0  # median predicted footprint over the agents seen
    resident: Dict[str, int] = field(default_factory=dict)  # KV slots per agent, measured on the device
    resident_shared: int = 0  # KV slots shared by several agents (counted once)
    gaps: GapModel = field(default_factory=GapModel)  # reply -> next request, over the workload
    turn_start: Dict[str, float] = field(default_factory=dict)  # when each agent's running turn was admitted
    llm_times: Deque[float] = field(default_factory=lambda: deque(maxlen=512))  # admission -> reply, per turn
    now: float = 0.0  # the time of the last event (idle agents' prices are read at it)
    last_control: float = 0.0  # the time of the last control step
    recent: Deque[Sample] = field(default_factory=lambda: deque(maxlen=64))  # per interval; horizon: a turn cycle
    last_probe: float = 0.0  # when the budget last grew by the lost work (at most once per turn cycle)
    idle_seconds: float = 0.0  # engine time with nothing to run, before the current interval

    @classmethod
    def create(cls, config: ConcurConfig, now: float, capacity: float) -> "ConcurController":
        policy = config.policy(capacity)
        window = policy.initial_window() if isinstance(policy, NativePolicy) else float(config.concur_initial_window)
        return cls(config, policy, AdmissionTable(config.concur_idle_timeout), window,
                   now + config.concur_control_interval, last_control=now)

    def start_clock(self, now: float) -> None:
        """The clock's first reading (the broadcast tick): the first interval starts here."""
        self.now = self.last_control = now
        self.next_control = now + self.config.concur_control_interval

    @property
    def budgets_tokens(self) -> bool:
        return isinstance(self.policy, NativePolicy)

    # --- the gate decision (every prefill pass with something queued) ----------------------
    def admit(self, wanting: Iterable[str], inflight: Mapping[str, int], now: float) -> KeysView[str]:
        """The active agents after one gate decision over the queued agents `wanting`."""
        self.now = now
        if not self.budgets_tokens:
            return self.table.update(slots(self.window), wanting, inflight, now)
        return self.table.update(self.window, wanting, inflight, now, cost=self.cost, pause_key=self.pause_key,
                                 pause_to=self._pause_limit())

    def must_wait(self, agent: str, now: float) -> bool:
        """A new agent while others are held and nothing changed: True when it waits too (no decision)."""
        if self.budgets_tokens:
            return self.table.must_wait(agent, self.window, now, self.cost)
        return self.table.must_wait(agent, slots(self.window), now)

    def request_arrived(self, agent: str, prompt_len: int, now: float) -> None:
        """A request of `agent` joined the queue (not a retracted one coming back).  An idle agent
        came back: its gap is measured and its full price restored."""
        self.now = now
        gap = self.table.came_back(agent, now, self.cost if self.budgets_tokens else None)
        if gap is not None:
            self.gaps.observe(gap)
            self.ledger.looks_gone(agent, False)
        elif agent not in self.table.active:
            self.pending_prompt.setdefault(agent, prompt_len)  # prices a new agent before its first turn

    def _pause_limit(self) -> float:
        """Active agents are paused (at turn boundaries) while they hold more than this."""
        return self.pause_to if self.budgets_tokens else slots(self.window)

    def may_pause(self) -> bool:
        """Whether a gate decision could pause an agent now."""
        return self.table.used > self._pause_limit()

    def p_return(self, a: Agent, now: float) -> float:
        """1 for an agent with something queued or in flight; else P(it comes back) after its idle time."""
        if a.idle_since is None:
            return 1.0
        led = self.ledger.agents.get(a.agent_id)
        turns = led.turns if led else 0
        more = self.remaining[turns] if turns < len(self.remaining) else max(1.0, turns)
        return self.gaps.p_return(now - a.idle_since, 1.0 / (1.0 + more))

    def charge(self, agent: str) -> float:
        """What an active agent holds of the window now: its price, or nothing once it looks gone."""
        gone = self.p_return(self.table.agents[agent], self.now) < 0.5
        self.ledger.looks_gone(agent, gone)
        return 0.0 if gone else (self.cost(agent) if self.budgets_tokens else 1.0)

    def cost(self, agent: str) -> float:
        """Predicted footprint (accounting.footprint).  Until the projection rests on data (three
        ended agents' lifetimes and a measured growth rate), every agent is charged at least an
        eighth of the capacity: a prior, replaced by data."""
        c = footprint(self.ledger, agent, self.pending_prompt.get(agent, 0), self.default_growth, self.remaining,
                      self.ceiling)
        cap = self.policy.capacity - min(self.typical, self.policy.capacity / 2)  # room for a typical agent beside
        if self.lifetimes_known and self.default_growth > 0:
            return min(c, cap)
        return min(max(c, self.policy.capacity / 8), cap)

    @property
    def lifetimes_known(self) -> bool:
        """Projections rest on ended agents' lifetimes (else on the age-doubling prior)."""
        return len(self.ledger.ended_lifetimes()) >= 3

    def pause_key(self, a: Agent) -> float:
        """Pause first the agent whose pause frees the most tokens (its predicted footprint) for the
        least lost work (the history it has cached, which a pause lets the cache evict)."""
        held = self.resident.get(a.agent_id)
        if held is None:
            led = self.ledger.agents.get(a.agent_id)
            held = max(0, led.context_cached - led.shared) if led else 0
        return a.cost / (1 + held)

    def turn_admitted(self, agent: str, prompt_len: int, matched: int, now: float) -> None:
        """A turn of `agent` entered a prefill batch."""
        self.interval.turns += 1
        a = self.table.agents.get(agent)
        resumed = a is not None and a.resumed
        if resumed:
            a.resumed = False
        if a is not None:
            a.idle_since = None  # a turn queued before the last reply came out: never idle
        self.pending_prompt.pop(agent, None)
        self.turn_start.setdefault(agent, now)
        self.ledger.turn_admitted(agent, prompt_len, matched, resumed)

    def turn_ended(self, agent: str, now: float) -> bool:
        """The agent's last request in flight finished (its turn's reply is out): it is in a tool,
        or gone.  An agent ended while the request ran leaves now (returns True)."""
        start = self.turn_start.pop(agent, None)
        if start is not None:
            self.llm_times.append(now - start)
        if self.table.turn_ended(agent, now):
            self._forget(agent)
            return True
        return False

    def horizon(self, cycle: float) -> Sample:
        """The last turn cycle's intervals (mean LLM time + mean gap, measured; the last interval
        until both are): the time an admission takes to show its effect."""
        cycle = 0.0 if cycle == float("inf") else cycle
        h = Sample()
        for x in reversed(self.recent):
            h.add(x)
            if h.secs >= cycle:
                break
        return h

    def drain_and_work(self, h: Sample, cycle: float) -> Tuple[float, float]:
        """(drain, work) in seconds.  drain: how long the gate needs to let every held agent live,
        at the present concurrency (waves of an expected lifetime, E[turns] x cycle); work: how long
        the engine needs for the turns the known agents have left, at the busy time per turn just
        measured (recompute included).  (0, 0) with nothing held or until both are measured."""
        c, e = self.table.counts(), h.busy_per_turn()
        held = c.waiting + c.paused
        if not held or e is None or cycle == float("inf") or not self.lifetimes_known or not self.remaining:
            return 0.0, 0.0
        rem, led = self.remaining, self.ledger.agents
        left = 0.0
        for aid in self.table.agents:
            t = led[aid].turns if aid in led else 0
            left += rem[t] if t < len(rem) else max(1.0, t)
        life = rem[0] * cycle
        return held * life / max(1, c.active) + life, e * left

    def cycle(self) -> float:
        """Mean LLM time + mean gap per turn, measured (inf until both are): how long an admission
        takes to show its effect."""
        if not self.llm_times or not len(self.gaps):
            return float("inf")
        return sum(self.llm_times) / len(self.llm_times) + self.gaps.mean()

    def stagger(self) -> float:
        """How far the active agents' end footprints may exceed the pool (accounting.stagger): 1
        while they are of one age, more as their ages spread.  Reads the prices `refresh` just set
        (agents that look gone are charged nothing and left out)."""
        rows = []
        for aid in self.table.active:
            a = self.table.agents[aid]
            if a.cost > 0:
                base, _, left = projection(self.ledger, aid, self.pending_prompt.get(aid, 0), self.default_growth,
                                           self.remaining, self.ceiling)
                rows.append((base, a.cost, left))
        return stagger(rows)

    # --- the control step (every control interval) -----------------------------------------
    def control_step(self, now: float, kv_usage: float, busy: Mapping[str, int],
                     queued: Iterable[str] = ()) -> Optional[Tuple[float, float]]:
        """Advance the window; returns (old, new) when the admitted amount changed.  `busy`: requests
        in flight per agent (in running order); `queued`: agents with requests queued (neither is idle)."""
        self.now = now
        self.next_control = now + self.config.concur_control_interval
        self.table.sync(busy, now)
        queued = dict.fromkeys(queued)
        self.table.touch(queued, now)
        for aid in self.table.expire(now, busy):
            self._forget(aid)
        agents = self.table.agents
        for aid in [a for a in self.pending_prompt if a not in agents and a not in queued]:
            del self.pending_prompt[aid]  # its request was refused or aborted before any decision
        led, iv = self.ledger, self.interval
        ages = [a.turns for aid, a in led.agents.items() if a.turns and aid not in led.provisional]
        self.remaining = remaining_turns(led.ended_lifetimes(), ages, max(ages, default=0) + 1)
        if self.budgets_tokens:
            self.default_growth = led.typical_growth()
            self.ceiling = led.ceiling()
            prints = sorted(footprint(led, a, 0, self.default_growth, self.remaining, self.ceiling) for a in led.agents)
            self.typical = prints[len(prints) // 2] if prints else 0.0
        self.table.refresh(self.charge)
        self.recent.append(Sample(led.admitted_recomputed - iv.recomputed, led.admitted_prompt_tokens - iv.returning,
                                  iv.lost, now - self.last_control, iv.idle_s, iv.turns))
        self.last_control = now
        self.idle_seconds += iv.idle_s
        cycle = self.cycle()
        h = self.horizon(cycle)
        drain, work = self.drain_and_work(h, cycle) if self.budgets_tokens else (0.0, 0.0)
        held_agents = len({r.routing_key for r in self.held})
        s = Signals(kv_usage=kv_usage, hit_rate=iv.hit_rate(), recompute_ratio=h.recompute_ratio(),
                    held_agents=held_agents,
                    settling=led.returning_turns < self.settle_until_turns, lost_work=h.lost_work(),
                    used=self.table.used, stagger=self.stagger() if self.budgets_tokens else 1.0,
                    probe=now - self.last_probe >= cycle, drain=drain, work=work)
        self.last_signals = s
        self.interval = IntervalStats(recomputed=led.admitted_recomputed, returning=led.admitted_prompt_tokens)
        old = self.window_size(self.window)
        window = self.policy.next_window(self.window, s)
        if self.budgets_tokens and window > self.window + self.policy.params.step * self.policy.capacity + 1e-9:
            self.last_probe = now
        pause_allowed = self.budgets_tokens and not s.gate_bound  # a pause delays held agents: not while they set the end
        if window < self.window:  # a cut: let every active agent come back once before the next
            self.settle_until_turns = led.returning_turns + max(1, len(self.table.active))
            if pause_allowed and s.recompute_ratio is not None and s.recompute_ratio > 4 * self.policy.params.recompute_threshold:
                self.pause_to = window  # severe: pause down to the budget; a mild cut only stops admission
        if pause_allowed and self.table.used > 2 * window:  # predicted to need twice the budget:
            self.pause_to = window  # pause now, while the histories a pause throws away are short
        elif window > self.window or self.table.used <= self.pause_to:  # the cut is done with
            self.pause_to = float("inf")
        self.window = window
        new = self.window_size(self.window)
        if new == old:
            return None
        self.window_changes["up" if new > old else "down"] += 1
        return old, new

    def digest(self) -> int:
        """crc32 over every admission state change and window value so far: equal on every TP rank."""
        return zlib.crc32(repr(self.window).encode(), self.table.digest)

    def kv_tokens(self) -> Dict[str, int]:
        """KV slots measured on the device: held by active agents, by the others, shared."""
        active = sum(self.resident.get(a, 0) for a in self.table.active)
        return {"active": active, "inactive": sum(self.resident.values()) - active, "shared": self.resident_shared}

    def window_size(self, window: Optional[float] = None) -> float:
        """The admitted amount: agent slots, or budget tokens for `native`."""
        window = self.window if window is None else window
        return int(window) if self.budgets_tokens else slots(window)

    def end(self, agent_id: str, inflight: int = 0) -> bool:
        """Explicit end.  With requests in flight the agent holds no room and leaves when they finish."""
        known = self.table.end(agent_id, inflight)
        if agent_id not in self.table.agents:
            self._forget(agent_id)
        return known

    def _forget(self, agent_id: str) -> None:
        self.ledger.forget(agent_id)
        self.pending_prompt.pop(agent_id, None)
        self.turn_start.pop(agent_id, None)

    # --- what an operator sees ---------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        c, s = self.table.counts(), self.last_signals
        return {
            "policy": self.policy.name,
            "window": self.window_size(self.window),
            "window_unit": "tokens" if self.budgets_tokens else "agents",
            "window_raw": self.window,
            "window_used": self.table.used if self.budgets_tokens else c.active,
            "active_agents": c.active,
            "paused_agents": c.paused,
            "waiting_agents": c.waiting,
            "held_requests": len(self.held),
            "held_agents_total": self.table.holds,
            **{f"kv_tokens_{kind}": n for kind, n in self.kv_tokens().items()},
            "evicted_tokens": self.ledger.evicted_tokens,
            "recomputed_tokens": self.ledger.recomputed_tokens,
            "idle_seconds": self.idle_seconds + self.interval.idle_s,
            "window_changes": dict(self.window_changes),
            "lost_work": None if s is None else s.lost_work,
            "stagger": None if s is None else s.stagger,
            "drain_s": None if s is None else s.drain,
            "work_s": None if s is None else s.work,
            "decision_digest": f"{self.digest():08x}",
            "kv_usage": None if s is None else s.kv_usage,
            "hit_rate": None if s is None else s.hit_rate,
            "recompute_ratio": None if s is None else s.recompute_ratio,
            "agents": {a.agent_id: self._agent_status(a) for a in self.table.agents.values()},
            "memory": self.memory(),
            "config": self.config.as_dict(),
        }

    def memory(self) -> Dict[str, int]:
        """Entries the controller keeps: each is bounded by the agents alive (the idle timeout) or a window."""
        led = self.ledger
        return {"table_agents": len(self.table.agents), "ledger_agents": len(led.agents),
                "pending_prompts": len(self.pending_prompt), "turns_running": len(self.turn_start),
                "provisional_ends": len(led.provisional), "lifetimes": len(led.lifetimes), "gaps": len(self.gaps),
                "llm_times": len(self.llm_times)}

    def _agent_status(self, a: Agent) -> Dict[str, Any]:
        led = self.ledger.agents.get(a.agent_id)
        idle = None if a.idle_since is None else max(0.0, self.now - a.idle_since)
        return {"state": a.state.value, "identified_by": "inferred" if is_inferred(a.agent_id) else "routing_key",
                "admissions": a.admissions, "last_seen": a.last_seen, "idle_s": idle,
                "p_return": self.p_return(a, self.now), "released": a.state is AgentState.ACTIVE and a.cost == 0,
                "cost": a.cost, "turns": led.turns if led else 0, "kv_tokens": self.resident.get(a.agent_id, 0),
                "recomputed_tokens": led.recomputed if led else 0,
                "context_cached": led.context_cached if led else 0}

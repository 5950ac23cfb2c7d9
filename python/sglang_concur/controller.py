"""The controller: window + admission table + recompute ledger, stepped by the scheduler glue.
Pure: no SGLang, no clock (times are passed in), so it runs in tests as it runs in the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from sglang_concur.accounting import RecomputeLedger, footprint
from sglang_concur.admission import Agent, AdmissionTable
from sglang_concur.config import ConcurConfig
from sglang_concur.control import NativePolicy, Policy, Signals, slots


@dataclass(slots=True)
class IntervalStats:
    hit_tokens: int = 0  # prompt tokens matched in the radix cache (SGLang's log_hit_tokens)
    input_tokens: int = 0  # prompt tokens prefilled (SGLang's log_input_tokens: the uncached part)
    recomputed: int = 0  # ledger totals (turns of agents that stayed admitted) at the interval's start
    returning: int = 0

    def hit_rate(self) -> Optional[float]:
        """SGLang's cache hit rate: hit / (hit + prefilled)."""
        total = self.hit_tokens + self.input_tokens
        return self.hit_tokens / total if total else None


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
    default_growth: float = 0.0  # mean per-turn context growth over agents (native pricing)
    pending_prompt: Dict[str, int] = field(default_factory=dict)  # first queued prompt per agent
    mean_cost: float = 0.0  # mean footprint of active agents past their first turn (prices new agents)
    settle_until_turns: int = 0  # ledger.returning_turns at which the last cut has been seen

    @classmethod
    def create(cls, config: ConcurConfig, now: float, capacity: float) -> "ConcurController":
        policy = config.policy(capacity)
        window = policy.initial_window() if isinstance(policy, NativePolicy) else float(config.concur_initial_window)
        return cls(config, policy, AdmissionTable(config.concur_idle_timeout), window,
                   now + config.concur_control_interval)

    @property
    def budgets_tokens(self) -> bool:
        return isinstance(self.policy, NativePolicy)

    # --- the gate decision (every prefill pass with something queued) ----------------------
    def admit(self, wanting: Iterable[str], inflight: Mapping[str, int], now: float) -> Set[str]:
        if not self.budgets_tokens:
            return self.table.update(slots(self.window), wanting, inflight, now)
        return self.table.update(self.window, wanting, inflight, now, cost=self.cost, pause_key=self.pause_key)

    def cost(self, agent: str) -> float:
        """Predicted footprint.  An agent not seen yet is charged at least the mean of the measured
        ones, and before any is measured, an eighth of the capacity (a prior, replaced by data)."""
        c = footprint(self.ledger, agent, self.pending_prompt.get(agent, 0), self.default_growth)
        if agent in self.ledger.agents:
            return c
        return max(c, self.mean_cost or self.policy.capacity / 8)

    def pause_key(self, a: Agent) -> float:
        """Pause first the agent whose pause frees the most tokens for the least work done so far."""
        led = self.ledger.agents.get(a.agent_id)
        return a.cost / (1 + (led.turns if led else 0))

    def turn_admitted(self, agent: str, prompt_len: int, matched: int) -> None:
        """A turn of `agent` entered a prefill batch."""
        a = self.table.agents.get(agent)
        resumed = a is not None and a.resumed
        if resumed:
            a.resumed = False
        self.pending_prompt.pop(agent, None)
        self.ledger.turn_admitted(agent, prompt_len, matched, resumed)

    # --- the control step (every control interval) -----------------------------------------
    def control_step(self, now: float, kv_usage: float, busy: Set[str]) -> Optional[Tuple[float, float]]:
        """Advance the window; returns (old, new) when the admitted amount changed."""
        self.next_control = now + self.config.concur_control_interval
        self.table.sync(busy, now)
        for aid in self.table.expire(now):
            self.ledger.forget(aid)
            self.pending_prompt.pop(aid, None)
        led, iv = self.ledger, self.interval
        returning = led.admitted_prompt_tokens - iv.returning
        ratio = (led.admitted_recomputed - iv.recomputed) / returning if returning else None
        held_agents = len({r.routing_key for r in self.held})
        s = Signals(kv_usage=kv_usage, hit_rate=iv.hit_rate(), recompute_ratio=ratio, held_agents=held_agents,
                    settling=led.returning_turns < self.settle_until_turns)
        self.last_signals = s
        self.interval = IntervalStats(recomputed=led.admitted_recomputed, returning=led.admitted_prompt_tokens)
        if self.budgets_tokens:
            growths = [g for a in led.agents.values() if (g := a.growth()) is not None]
            self.default_growth = sum(growths) / len(growths) if growths else 0.0
            self.table.refresh(self.cost)
            known = [self.table.agents[a].cost for a in self.table.active if a in led.agents]
            self.mean_cost = sum(known) / len(known) if known else 0.0
        old = self.window_size(self.window)
        window = self.policy.next_window(self.window, s)
        if window < self.window:  # a cut: let every active agent come back once before the next
            self.settle_until_turns = led.returning_turns + max(1, len(self.table.active))
        self.window = window
        new = self.window_size(self.window)
        if new == old:
            return None
        self.window_changes["up" if new > old else "down"] += 1
        return old, new

    def window_size(self, window: Optional[float] = None) -> float:
        """The admitted amount: agent slots, or budget tokens for `native`."""
        window = self.window if window is None else window
        return int(window) if self.budgets_tokens else slots(window)

    def end(self, agent_id: str) -> bool:
        self.ledger.forget(agent_id)
        self.pending_prompt.pop(agent_id, None)
        return self.table.end(agent_id)

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
            "evicted_tokens": self.ledger.evicted_tokens,
            "recomputed_tokens": self.ledger.recomputed_tokens,
            "window_changes": dict(self.window_changes),
            "kv_usage": None if s is None else s.kv_usage,
            "hit_rate": None if s is None else s.hit_rate,
            "recompute_ratio": None if s is None else s.recompute_ratio,
            "agents": {a.agent_id: self._agent_status(a) for a in self.table.agents.values()},
            "config": self.config.as_dict(),
        }

    def _agent_status(self, a: Agent) -> Dict[str, Any]:
        led = self.ledger.agents.get(a.agent_id)
        return {"state": a.state.value, "admissions": a.admissions, "last_seen": a.last_seen,
                "cost": a.cost, "turns": led.turns if led else 0,
                "recomputed_tokens": led.recomputed if led else 0,
                "context_cached": led.context_cached if led else 0}

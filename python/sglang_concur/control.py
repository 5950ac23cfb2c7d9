"""The control law: how the agent window W moves.  Pure: no SGLang, no clock.

Every policy maps (current window, signals of the last control interval) to the next window.
`aimd` is the CONCUR paper's Eq. 1:

    W <- W + alpha   if U < U_low                    (probe: admit more agents)
    W <- W * beta    if U > U_high and H < H_thresh  (back off: the cache is thrashing)
    W <- W           otherwise                       (dead band)

U is the share of the KV pool held by running requests (evictable radix cache excluded) and H
the prefix-cache hit rate of the tokens prefilled in the interval.  W stays in [min, max].

`native` steers by what the engine sees directly.  Its window is a budget B of KV tokens: the
predicted footprints of the active agents must fit in it (pricing, pausing: controller.py).  It
weighs what admitting too many costs against what admitting too few costs, both measured:
recompute R (their histories evict each other), lost work I (the engine idles while the gate holds
agents back, every admitted agent being in a tool), and the batch's end: a held agent still has
its whole lifetime to live, mostly tool time when tools are long, which no engine speed shortens.
So the gate, not the engine, sets the end while the drain D (the time the gate needs to let every
held agent live: waves of an expected lifetime at the present concurrency) exceeds the work W (the
engine seconds the known agents' remaining turns need at the busy time per turn measured,
recompute included).  Then admitting more shortens the batch even though it costs recompute:

    gate = D > W
    B <- B * beta             if R > max(R_max, I) and not gate and not settling   (recompute costs more)
    B <- B + grow             if agents are held and not settling, grow the largest that applies:
         step * C, up to T         if R <= R_max / 2 and (B < C or I > R)   (footprints fit, or work is lost)
         used * I / (1-I), up to T / (1-I)  if I > R, once per turn cycle: the admitted agents kept
                                   the engine busy only 1 - I of the time, admit I / (1 - I) more
         step * C, up to T / (1 - MAX_IDLE)  if gate: the drain shrinks as concurrency grows
    B <- B                    otherwise

R and I are measured over the last turn cycle (mean LLM time + mean gap between turns), the time an
admission takes to show its effect, and so is W's busy time per turn.  Like BBR's, the probe fills
the idle time it measured at once, then waits a cycle.  Recompute lags a cut (agents whose
history was already evicted still come back to recompute it), so after a cut the budget settles
(neither cut again nor grown) until as many turns have returned as there were active agents.

The budget starts at a quarter of the capacity C (a slow start: prices rest on a prior until
agents have grown and ended) and stays within [C / 4, T / (1 - MAX_IDLE)].  T = C * stagger is
where every predicted footprint fits: footprints are projected to each agent's end, so a budget of
the whole pool is the most that fits at once while the agents are of one age (they all reach their
ends together: at the start of a batch); once their ages spread, the young grow while the old end,
and the sum of the end footprints exceeds the peak of what they hold together by the measured
factor `stagger` (accounting.stagger, >= 1).  Only lost work or the drain takes B past T, and only
recompute brings it back.

R is the share of the returning turns' prompt tokens that were history evicted since the agent's
last turn (recomputed), I the share of the interval the engine had nothing to run while the gate
held requests, R_max a dimensionless share; every bound is a multiple of the capacity measured at
start-up, a ratio or a time measured during the run, so nothing depends on the model or the workload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol


@dataclass(frozen=True, slots=True)
class Signals:
    kv_usage: float  # 0..1, KV held by running requests, evictable cache excluded
    hit_rate: Optional[float]  # 0..1 over the interval; None when nothing was prefilled
    recompute_ratio: Optional[float] = None  # recomputed / prompt tokens of returning turns; None if none
    held_agents: int = 0  # agents with requests held by the gate (waiting or paused)
    settling: bool = False  # the last cut has not been seen by every agent it affected yet
    lost_work: float = 0.0  # share of the interval the engine idled while the gate held requests
    used: float = 0.0  # the admitted amount (window units held by the active agents)
    stagger: float = 1.0  # end footprints of the active agents / their projected peak: how far the pool may be overcommitted
    probe: bool = False  # a turn cycle has passed since the last probe: lost work may be filled at once
    drain: float = 0.0  # seconds the gate needs to let every held agent live at the present concurrency
    work: float = 0.0  # seconds the engine needs for the turns the known agents have left

    @property
    def gate_bound(self) -> bool:
        """Admission, not the engine, sets the batch's end: the drain outlasts the work."""
        return self.drain > self.work


@dataclass(frozen=True, slots=True)
class AimdParams:
    alpha: float = 2.0
    beta: float = 0.5
    usage_low: float = 0.2
    usage_high: float = 0.5
    hit_threshold: float = 0.2


@dataclass(frozen=True, slots=True)
class Bounds:
    min_window: int = 1
    max_window: int = 4096

    def clamp(self, w: float) -> float:
        return min(max(w, float(self.min_window)), float(self.max_window))


class Policy(Protocol):
    name: str

    def next_window(self, window: float, s: Signals) -> float: ...


@dataclass(frozen=True, slots=True)
class StaticPolicy:
    """A fixed agent cap: the window never moves."""

    bounds: Bounds
    name: str = "static"

    def next_window(self, window: float, s: Signals) -> float:
        return self.bounds.clamp(window)


@dataclass(frozen=True, slots=True)
class AimdPolicy:
    """The paper's Eq. 1 with its defaults."""

    params: AimdParams
    bounds: Bounds
    name: str = "aimd"

    def next_window(self, window: float, s: Signals) -> float:
        p = self.params
        if s.kv_usage < p.usage_low:
            window = window + p.alpha
        elif (
            s.kv_usage > p.usage_high
            and s.hit_rate is not None
            and s.hit_rate < p.hit_threshold
        ):
            window = window * p.beta
        return self.bounds.clamp(window)


MAX_IDLE = 0.75  # lost work or the drain overcommit the pool at most 1 / (1 - MAX_IDLE) = 4 times


@dataclass(frozen=True, slots=True)
class NativeParams:
    recompute_threshold: float = 0.05
    beta: float = 0.7
    step: float = 0.05  # additive increase, as a share of capacity
    initial_share: float = 0.25  # budget bounds and start, as shares of capacity
    min_share: float = 0.25
    max_share: float = 1.0


@dataclass(frozen=True, slots=True)
class NativePolicy:
    """Token-budget AIMD on recompute (see module docstring)."""

    params: NativeParams
    capacity: float  # KV pool tokens, measured at start-up
    name: str = "native"

    def initial_window(self) -> float:
        return self.params.initial_share * self.capacity

    def next_window(self, window: float, s: Signals) -> float:
        p, c = self.params, self.capacity
        r = 0.0 if s.recompute_ratio is None else s.recompute_ratio
        i, top = s.lost_work, max(p.max_share, s.stagger) * c  # at top every predicted footprint fits
        most = top / (1 - MAX_IDLE)
        gate = s.gate_bound
        if r > max(p.recompute_threshold, i) and not gate:
            if not s.settling:
                window *= p.beta
        elif s.held_agents > 0 and not s.settling:
            grow, limit = 0.0, top
            if r <= p.recompute_threshold / 2 and (window < p.max_share * c or i > r):
                grow = p.step * c  # footprints fit, or work is lost
            if s.probe and i > r and i < 1:  # the engine idled i: admit i / (1 - i) more of the same
                grow, limit = max(grow, min(window, s.used * i / (1 - i))), top / (1 - min(i, MAX_IDLE))
            if gate:  # the held agents' lifetimes set the end: more concurrency, a shorter drain
                grow, limit = max(grow, p.step * c), most
            window = max(window, min(window + grow, limit))
        return min(max(window, p.min_share * c), most)


def slots(window: float) -> int:
    """Agents the window admits: the integer part, never below one."""
    return max(1, int(math.floor(window + 1e-9)))

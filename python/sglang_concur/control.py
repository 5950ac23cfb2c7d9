"""The control law: how the agent window W moves.  Pure: no SGLang, no clock.

Every policy maps (current window, signals of the last control interval) to the next window.
`aimd` is the CONCUR paper's Eq. 1:

    W <- W + alpha   if U < U_low                    (probe: admit more agents)
    W <- W * beta    if U > U_high and H < H_thresh  (back off: the cache is thrashing)
    W <- W           otherwise                       (dead band)

U is the share of the KV pool held by running requests (evictable radix cache excluded) and H
the prefix-cache hit rate of the tokens prefilled in the interval.  W stays in [min, max].

`native` steers by what the engine sees directly.  Its window is a budget B of KV tokens: the
predicted footprints of the active agents must fit in it (pricing, pausing: controller.py):

    B <- B * beta                      if R > R_max and not settling  (returning agents recompute history)
    B <- B + step * capacity           if agents are held, R <= R_max / 2 and not settling
    B <- B                             otherwise

Recompute lags a cut (agents whose history was already evicted still come back to recompute it),
so after a cut the budget settles (neither cut again nor grown) until as many turns have returned
as there were active agents.
The budget starts at half the capacity and moves within [capacity / 4, capacity]: footprints are
projected to each agent's end, so a budget of the whole pool is already an upper bound.

R is the share of the returning turns' prompt tokens that were history evicted since the agent's
last turn (recomputed), R_max a dimensionless share; every bound is a multiple of the capacity
measured at start-up, so nothing depends on the model.
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


@dataclass(frozen=True, slots=True)
class NativeParams:
    recompute_threshold: float = 0.05
    beta: float = 0.7
    step: float = 0.05  # additive increase, as a share of capacity
    initial_share: float = 0.5  # budget bounds and start, as shares of capacity
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
        p, r = self.params, s.recompute_ratio
        if r is not None and r > p.recompute_threshold:
            if not s.settling:
                window *= p.beta
        elif s.held_agents > 0 and not s.settling and (r is None or r <= p.recompute_threshold / 2):
            window += p.step * self.capacity
        return min(max(window, p.min_share * self.capacity), p.max_share * self.capacity)


def slots(window: float) -> int:
    """Agents the window admits: the integer part, never below one."""
    return max(1, int(math.floor(window + 1e-9)))

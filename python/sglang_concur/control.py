"""The control law: how the agent window W moves.  Pure: no SGLang, no clock.

Every policy maps (current window, signals of the last control interval) to the next window.
`aimd` is the CONCUR paper's Eq. 1:

    W <- W + alpha   if U < U_low                    (probe: admit more agents)
    W <- W * beta    if U > U_high and H < H_thresh  (back off: the cache is thrashing)
    W <- W           otherwise                       (dead band)

U is the share of the KV pool held by running requests (evictable radix cache excluded) and H
the prefix-cache hit rate of the tokens prefilled in the interval.  W stays in [min, max].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol


@dataclass(frozen=True, slots=True)
class Signals:
    kv_usage: float  # 0..1, KV held by running requests, evictable cache excluded
    hit_rate: Optional[float]  # 0..1 over the interval; None when nothing was prefilled


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


def slots(window: float) -> int:
    """Agents the window admits: the integer part, never below one."""
    return max(1, int(math.floor(window + 1e-9)))

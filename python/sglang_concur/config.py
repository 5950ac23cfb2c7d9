"""`--concur-*` flags: one dataclass, its validation, and its argparse registration.

Every field `concur_x_y` is the flag `--concur-x-y` and the `sglang.Engine(concur_x_y=...)` keyword.
No SGLang import: the flag rules are tested without starting anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional

from sglang_concur.control import AimdParams, AimdPolicy, Bounds, NativeParams, NativePolicy, Policy, StaticPolicy

POLICIES = ("static", "aimd", "native")
_AGENT_ID = re.compile(r"[A-Za-z0-9._:@/+=#-]{1,256}")


class ConcurConfigError(ValueError):
    """A bad `--concur-*` value; the message is one line naming the flag and the allowed range."""


@dataclass(frozen=True)
class ConcurConfig:
    concur_enable: bool = False
    concur_policy: str = "native"
    concur_initial_window: int = 8
    concur_min_window: int = 1
    concur_max_window: int = 4096
    concur_alpha: float = 2.0
    concur_beta: float = 0.5
    concur_usage_low: float = 0.2
    concur_usage_high: float = 0.5
    concur_hit_threshold: float = 0.2
    concur_recompute_threshold: float = 0.05
    concur_control_interval: float = 1.0
    concur_idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ConcurConfig":
        """Build from flag values (None = not given).  Refuses concur values without the enable."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given.get("concur_enable"):
            extra = sorted(k for k in given if k != "concur_enable")
            if extra:
                raise ConcurConfigError(f"{_flag(extra[0])} needs --concur-enable")
        for f in fields(cls):
            if f.name in given and f.type in ("int", "float"):
                given[f.name] = _number(f.name, given[f.name], int if f.type == "int" else float)
        return cls(**given)

    def policy(self, capacity: float) -> Policy:
        """The window policy; `capacity` is the KV pool size in tokens (used by `native`)."""
        bounds = Bounds(self.concur_min_window, self.concur_max_window)
        if self.concur_policy == "native":
            return NativePolicy(NativeParams(recompute_threshold=self.concur_recompute_threshold), float(capacity))
        if self.concur_policy == "static":
            return StaticPolicy(bounds)
        params = AimdParams(
            self.concur_alpha, self.concur_beta, self.concur_usage_low,
            self.concur_usage_high, self.concur_hit_threshold,
        )
        return AimdPolicy(params, bounds)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(ConcurConfig))

_HELP = {
    "concur_enable": "Enable CONCUR agent-level admission control (agent id = the request's routing_key).",
    "concur_policy": "Window policy: 'static' (fixed window = --concur-initial-window), 'aimd' (CONCUR Eq. 1) or "
                     "'native' (KV-token budget steered by recomputed history; window flags do not apply).",
    "concur_initial_window": "Agents that may be active at start (integer >= 1).",
    "concur_min_window": "Smallest window (integer >= 1).",
    "concur_max_window": "Largest window (integer >= --concur-min-window).",
    "concur_alpha": "AIMD additive increase per control step (> 0).",
    "concur_beta": "AIMD multiplicative decrease factor, in (0, 1).",
    "concur_usage_low": "Grow the window while KV usage of running requests is below this, in [0, 1).",
    "concur_usage_high": "Shrink only when KV usage is above this, in (0, 1], > --concur-usage-low.",
    "concur_hit_threshold": "...and the prefix hit rate of the interval is below this, in [0, 1].",
    "concur_recompute_threshold": "native: shrink the budget when more than this share of returning turns' prompt "
                                  "tokens was evicted history, in (0, 1).",
    "concur_control_interval": "Seconds between control steps (> 0).",
    "concur_idle_timeout": "Seconds an agent may hold a slot with nothing queued or in flight (> 0).",
}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Register the flags.  Defaults are None so that 'given' can be told from 'default'."""
    group = parser.add_argument_group("CONCUR agent-level admission (sglang-concur)")
    for f in fields(ConcurConfig):
        flag = _flag(f.name)
        doc = f"{_HELP[f.name]} Default: {f.default}."
        if f.type == "bool":
            group.add_argument(flag, action="store_true", default=None, help=_HELP[f.name])
        elif f.name == "concur_policy":
            group.add_argument(flag, type=str, choices=POLICIES, default=None, help=doc)
        else:
            group.add_argument(flag, type=str, default=None, metavar=f.type.upper(), help=doc)


def from_namespace(args: argparse.Namespace) -> ConcurConfig:
    return ConcurConfig.from_mapping({k: getattr(args, k, None) for k in FIELD_NAMES})


def pop_kwargs(kwargs: Dict[str, Any]) -> ConcurConfig:
    """Take the `concur_*` keywords out of an `sglang.Engine(**kwargs)` call."""
    unknown = sorted(k for k in kwargs if k.startswith("concur_") and k not in FIELD_NAMES)
    if unknown:
        raise ConcurConfigError(f"unknown keyword {unknown[0]!r}; CONCUR keywords: {', '.join(FIELD_NAMES)}")
    return ConcurConfig.from_mapping({k: kwargs.pop(k) for k in FIELD_NAMES if k in kwargs})


def check_agent_id(agent_id: Any) -> Optional[str]:
    """The agent id is the request's routing_key.  Returns an error message, or None if valid."""
    if isinstance(agent_id, str) and _AGENT_ID.fullmatch(agent_id):
        return None
    return (
        f"invalid agent id (routing_key) {agent_id!r}: expected 1-256 characters from "
        "letters, digits and . _ : @ / + = # -"
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ConcurConfigError(f"{_flag(name)} must be a number, got {value!r}")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ConcurConfigError(f"{_flag(name)} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is int and isinstance(value, float) and value != out:
        raise ConcurConfigError(f"{_flag(name)} must be an integer, got {value!r}")
    return out


def _validate(c: ConcurConfig) -> None:
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ConcurConfigError(f"{_flag(name)} must be {rule}, got {getattr(c, name)!r}")

    need(c.concur_policy in POLICIES, "concur_policy", "one of " + ", ".join(POLICIES))
    need(c.concur_min_window >= 1, "concur_min_window", "an integer >= 1")
    need(c.concur_max_window >= c.concur_min_window, "concur_max_window", f">= --concur-min-window ({c.concur_min_window})")
    need(
        c.concur_min_window <= c.concur_initial_window <= c.concur_max_window, "concur_initial_window",
        f"in [--concur-min-window, --concur-max-window] = [{c.concur_min_window}, {c.concur_max_window}]",
    )
    need(c.concur_alpha > 0, "concur_alpha", "> 0")
    need(0 < c.concur_beta < 1, "concur_beta", "in (0, 1)")
    need(0 <= c.concur_usage_low < 1, "concur_usage_low", "in [0, 1)")
    need(0 < c.concur_usage_high <= 1, "concur_usage_high", "in (0, 1]")
    need(c.concur_usage_low < c.concur_usage_high, "concur_usage_low", f"< --concur-usage-high ({c.concur_usage_high})")
    need(0 <= c.concur_hit_threshold <= 1, "concur_hit_threshold", "in [0, 1]")
    need(0 < c.concur_recompute_threshold < 1, "concur_recompute_threshold", "in (0, 1)")
    need(c.concur_control_interval > 0, "concur_control_interval", "> 0 seconds")
    need(c.concur_idle_timeout > 0, "concur_idle_timeout", "> 0 seconds")

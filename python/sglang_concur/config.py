"""`--concur-*` flags and `SGLANG_CONCUR_*` environment variables: one dataclass, its validation,
its argparse registration and its environment reading.

Every field `concur_x_y` is the flag `--concur-x-y`, the `sglang.Engine(concur_x_y=...)` keyword and
the environment variable `SGLANG_CONCUR_X_Y` (read by every process SGLang starts, so a server
built as `ServerArgs(...)` in Python, as slime and verl do, can be switched on without the CLI).
Flags and keywords override the environment.  No SGLang import: the rules are tested without
starting anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional

from sglang_concur.control import AimdParams, AimdPolicy, Bounds, NativeParams, NativePolicy, Policy, StaticPolicy

POLICIES = ("static", "aimd", "native")
AGENT_ID_MODES = ("auto", "routing-key")
ENV_PREFIX = "SGLANG_CONCUR_"
_AGENT_ID = re.compile(r"[A-Za-z0-9._:@/+=#-]{1,256}")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class ConcurConfigError(ValueError):
    """A bad `--concur-*` value; the message is one line naming the flag and the allowed range."""

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ConcurConfig:
    concur_enable: bool = False
    concur_policy: str = "native"
    concur_agent_id: str = "auto"
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
        """Build from given values (None = not given).  Refuses concur values without the enable."""
        given = {k: v for k, v in values.items() if v is not None}
        if given.get("concur_enable") is not True:
            extra = sorted(k for k in given if k != "concur_enable")
            if extra:
                raise ConcurConfigError(f"{_flag(extra[0])} needs --concur-enable", extra[0])
        for f in fields(cls):
            if f.name in given:
                given[f.name] = _coerce(f.name, f.type, given[f.name])
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
ENV_NAMES = {ENV_PREFIX + name[len("concur_"):].upper(): name for name in FIELD_NAMES}

_HELP = {
    "concur_enable": "Enable CONCUR agent-level admission control.",
    "concur_policy": "Window policy: 'static' (fixed window = --concur-initial-window), 'aimd' (CONCUR Eq. 1) or "
                     "'native' (KV-token budget steered by recomputed history and lost work; window flags do not apply).",
    "concur_agent_id": "How a request's agent is found: 'routing-key' (the body's routing_key or the X-SMG-Routing-Key "
                       "header; requests without one are not gated) or 'auto' (the same, and a request without one "
                       "belongs to the agent whose earlier turn its prompt continues, else to a new agent).",
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
    "concur_control_interval": "Seconds between control steps, in [0.01, 60].",
    "concur_idle_timeout": "Seconds an agent's state is kept with nothing queued or in flight (an upper bound: an "
                           "agent that looks gone releases its admission room much earlier), in [1, 86400].",
}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Register the flags.  Defaults are None so that 'given' can be told from 'default'."""
    group = parser.add_argument_group("CONCUR agent-level admission (sglang-concur)")
    for f in fields(ConcurConfig):
        flag = _flag(f.name)
        doc = f"{_HELP[f.name]} Default: {f.default}. Environment: {ENV_PREFIX}{f.name[7:].upper()}."
        if f.type == "bool":
            group.add_argument(flag, action="store_true", default=None, help=doc)
        elif f.name == "concur_policy":
            group.add_argument(flag, type=str, choices=POLICIES, default=None, help=doc)
        elif f.name == "concur_agent_id":
            group.add_argument(flag, type=str, choices=AGENT_ID_MODES, default=None, help=doc)
        else:
            group.add_argument(flag, type=str, default=None, metavar=f.type.upper(), help=doc)


def given_in_namespace(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k in FIELD_NAMES if (v := getattr(args, k, None)) is not None}


def pop_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Take the `concur_*` keywords out of an `sglang.Engine(**kwargs)` call (the given values)."""
    unknown = sorted(k for k in kwargs if k.startswith("concur_") and k not in FIELD_NAMES)
    if unknown:
        raise ConcurConfigError(f"unknown keyword {unknown[0]!r}; CONCUR keywords: {', '.join(FIELD_NAMES)}")
    return {k: kwargs.pop(k) for k in FIELD_NAMES if k in kwargs}


def from_env(environ: Mapping[str, str]) -> Dict[str, Any]:
    """The `SGLANG_CONCUR_*` values of `environ` as given values (strings; booleans parsed).  An unknown
    `SGLANG_CONCUR_*` name is refused (a typo would otherwise be silently ignored)."""
    given: Dict[str, Any] = {}
    for key in sorted(k for k in environ if k.startswith(ENV_PREFIX)):
        name = ENV_NAMES.get(key)
        if name is None:
            raise ConcurConfigError(f"unknown environment variable {key}; known: {', '.join(ENV_NAMES)}")
        value = environ[key].strip()
        if name == "concur_enable":
            if value.lower() not in _TRUE + _FALSE:
                raise ConcurConfigError(f"{key} must be one of 1, 0, true, false, yes, no, on, off, got {value!r}", name)
            given[name] = value.lower() in _TRUE
        elif value:
            given[name] = value
    return given


def resolve(given: Mapping[str, Any], environ: Mapping[str, str]) -> ConcurConfig:
    """The configuration: the environment's values overridden by the given flags / keywords.
    `SGLANG_CONCUR_ENABLE=0` switches the environment's other values off.  Errors name the flag,
    and the environment variable when the value came from there."""
    env = from_env(environ)
    if env.get("concur_enable") is False:
        env = {"concur_enable": False}
    values = {**env, **{k: v for k, v in given.items() if v is not None}}
    try:
        return ConcurConfig.from_mapping(values)
    except ConcurConfigError as e:
        if e.field is not None and e.field in env and e.field not in given:
            raise ConcurConfigError(f"{e} (from {ENV_PREFIX}{e.field[7:].upper()})", e.field) from None
        raise


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


def _coerce(name: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConcurConfigError(f"{_flag(name)} must be True or False, got {value!r}", name)
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConcurConfigError(f"{_flag(name)} must be a string, got {value!r}", name)
        return value
    number = int if kind == "int" else float
    if isinstance(value, bool):
        raise ConcurConfigError(f"{_flag(name)} must be a number, got {value!r}", name)
    try:
        out = number(value)
    except (TypeError, ValueError, OverflowError):
        what = "an integer" if number is int else "a number"
        raise ConcurConfigError(f"{_flag(name)} must be {what}, got {value!r}", name) from None
    if number is int and isinstance(value, float) and value != out:
        raise ConcurConfigError(f"{_flag(name)} must be an integer, got {value!r}", name)
    if number is float and not math.isfinite(out):
        raise ConcurConfigError(f"{_flag(name)} must be a finite number, got {value!r}", name)
    return out


def _validate(c: ConcurConfig) -> None:
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ConcurConfigError(f"{_flag(name)} must be {rule}, got {getattr(c, name)!r}", name)

    for f in fields(c):
        if f.type == "float":
            need(math.isfinite(getattr(c, f.name)), f.name, "a finite number")
    need(isinstance(c.concur_enable, bool), "concur_enable", "True or False")
    need(c.concur_policy in POLICIES, "concur_policy", "one of " + ", ".join(POLICIES))
    need(c.concur_agent_id in AGENT_ID_MODES, "concur_agent_id", "one of " + ", ".join(AGENT_ID_MODES))
    need(c.concur_min_window >= 1, "concur_min_window", "an integer >= 1")
    need(c.concur_max_window >= c.concur_min_window, "concur_max_window", f">= --concur-min-window ({c.concur_min_window})")
    need(
        c.concur_min_window <= c.concur_initial_window <= c.concur_max_window, "concur_initial_window",
        f"in [--concur-min-window, --concur-max-window] = [{c.concur_min_window}, {c.concur_max_window}]",
    )
    need(0 < c.concur_alpha <= 1e6, "concur_alpha", "in (0, 1e6]")
    need(0 < c.concur_beta < 1, "concur_beta", "in (0, 1)")
    need(0 <= c.concur_usage_low < 1, "concur_usage_low", "in [0, 1)")
    need(0 < c.concur_usage_high <= 1, "concur_usage_high", "in (0, 1]")
    need(c.concur_usage_low < c.concur_usage_high, "concur_usage_low", f"< --concur-usage-high ({c.concur_usage_high})")
    need(0 <= c.concur_hit_threshold <= 1, "concur_hit_threshold", "in [0, 1]")
    need(0 < c.concur_recompute_threshold < 1, "concur_recompute_threshold", "in (0, 1)")
    need(0.01 <= c.concur_control_interval <= 60, "concur_control_interval", "in [0.01, 60] seconds")
    need(1 <= c.concur_idle_timeout <= 86400, "concur_idle_timeout", "in [1, 86400] seconds")

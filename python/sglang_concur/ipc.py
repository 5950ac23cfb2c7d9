"""The IPC messages the controller adds.

- `ConcurControlReq` / `ConcurControlReqOutput`: tokenizer manager -> every scheduler, and back
  (status, end agent), registered with SGLang's msgpack IPC (`hook_custom_types`) and its fan-out
  communicators (`_COMMUNICATOR_SPECS`), so it travels like SGLang's own control requests, DP
  included.
- `ConcurTick`: the controller's clock.  The rank that polls the tokenizer (pp 0, attention-tp 0)
  adds one to the requests it broadcasts, at most every few milliseconds, the way SGLang sends its
  own timeout aborts; every TP rank and every pipeline stage then reads the same time at the same
  step, so time-based decisions (control steps, idle agents) are identical on all of them.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from sglang.srt.managers.io_struct import BaseReq


class ConcurControlReq(BaseReq, kw_only=True):
    op: str  # "status" | "end"
    agent_id: Optional[str] = None


class ConcurControlReqOutput(BaseReq, kw_only=True):
    result: Dict[str, Any]


class ConcurTick(BaseReq, kw_only=True):
    now: float  # time.monotonic() on the polling rank


def register() -> None:
    from sglang.srt.managers import io_struct, tokenizer_control_mixin

    io_struct.hook_custom_types(ConcurControlReq, ConcurControlReqOutput, ConcurTick)
    specs = tokenizer_control_mixin._COMMUNICATOR_SPECS
    if not any(s[0] == "concur_control" for s in specs):
        specs.append(("concur_control", ConcurControlReqOutput))

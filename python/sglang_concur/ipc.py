"""The one IPC message the controller adds: tokenizer manager -> every scheduler, and back.

Registered with SGLang's msgpack IPC (`hook_custom_types`) and its fan-out communicators
(`_COMMUNICATOR_SPECS`), so it travels like SGLang's own control requests, DP included.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from sglang.srt.managers.io_struct import BaseReq


class ConcurControlReq(BaseReq, kw_only=True):
    op: str  # "status" | "end"
    agent_id: Optional[str] = None


class ConcurControlReqOutput(BaseReq, kw_only=True):
    result: Dict[str, Any]


def register() -> None:
    from sglang.srt.managers import io_struct, tokenizer_control_mixin

    io_struct.hook_custom_types(ConcurControlReq, ConcurControlReqOutput)
    specs = tokenizer_control_mixin._COMMUNICATOR_SPECS
    if not any(s[0] == "concur_control" for s in specs):
        specs.append(("concur_control", ConcurControlReqOutput))

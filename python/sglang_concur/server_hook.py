"""Glue in SGLang's main process: configuration, `sglang.Engine` keywords and methods, HTTP routes,
and the front door every request passes before it reaches a scheduler.

Hook points:
- `ServerArgs.add_cli_args` / `ServerArgs.from_cli_args`: the `--concur-*` flags.
- `Engine.server_args_class` / `Engine.generate` / `Engine.async_generate`: `concur_*` keywords and a
  `routing_key=` keyword (one agent id, or one per prompt of a batch).
- `ServerArgs.check_server_args`: every launch path (CLI server, `http_server.launch_server` with a
  `ServerArgs` built in Python as slime does, `sglang.Engine`, verl's direct call to
  `Engine._launch_subprocesses`) checks its arguments here, before any process starts: the
  configuration is resolved (flags and keywords over `SGLANG_CONCUR_*`) and a bad value stops
  start-up.  The result rides on the ServerArgs record as bookkeeping (`_concur_config`), which
  SGLang pickles into every scheduler process.
- `TokenizerManager.__init__`: the front door of this server (below) and the `/concur/*` routes.
- `http_server.launch_server`: a bad value stops start-up with one line.
- `TokenizerManager.generate_request`: the agent id from the body or the `X-SMG-Routing-Key` header
  (any endpoint, native `/generate` included), validated.
- `GenerateReqInput.__getitem__`: every part of a batch (and of `n>1`) keeps its routing key.
- `TokenizerManager._dispatch_to_scheduler` / `_handle_batch_output`: agent inference for requests
  without an id (`agents.ContextIndex`) and, with `--dp-size > 1`, every request of an agent to one
  DP rank (a stable hash of its id).
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import time
from typing import Any, Dict, List, Optional

from sglang_concur.agents import ContextIndex
from sglang_concur.config import (
    ConcurConfig, ConcurConfigError, add_cli_args, check_agent_id, given_in_namespace, pop_kwargs, resolve,
)

_engine_routing_key: contextvars.ContextVar[Any] = contextvars.ContextVar("concur_routing_key", default=None)


def config_of(server_args: Any) -> ConcurConfig:
    """The configuration this server runs with: resolved once at launch, else from the environment."""
    cfg = getattr(server_args, "_concur_config", None)
    if cfg is None:
        cfg = resolve({}, os.environ)
        server_args._concur_config = cfg
    return cfg


def _attach(server_args: Any, given: Dict[str, Any]) -> Any:
    server_args._concur_config = resolve(given, os.environ)
    return server_args


# --- hook: ServerArgs.add_cli_args (AFTER) -----------------------------------------------
def add_cli_args_after(result, parser):
    add_cli_args(parser)
    return result


# --- hook: ServerArgs.from_cli_args (AROUND) ---------------------------------------------
def from_cli_args_around(original, cls, args):
    given = given_in_namespace(args)
    server_args = original(cls, args)
    try:
        return _attach(server_args, given)
    except ConcurConfigError as e:
        raise SystemExit(f"sglang-concur: error: {e}") from None


# --- extension point: Engine.server_args_class --------------------------------------------
def engine_server_args(**kwargs):
    """What `sglang.Engine(**kwargs)` builds its ServerArgs with: the `concur_*` keywords are taken
    off first.  (`Engine.__init__` calls `load_plugins()` and then this, so it holds for the very
    first Engine of a process, which a hook on `__init__` itself would miss.)"""
    from sglang.srt.server_args import ServerArgs

    given = pop_kwargs(kwargs)
    resolve(given, os.environ)  # refuse bad values before anything starts
    return _attach(ServerArgs(**kwargs), given)


# --- hook: ServerArgs.check_server_args (AFTER): every launch path, before any process starts ---
def check_server_args_after(result, server_args):
    config_of(server_args)  # resolved once; a bad flag or environment value raises ConcurConfigError
    return result


# --- hook: TokenizerManager.__init__ (AFTER): the front door of this server -------------------
def tokenizer_manager_init_after(result, tm, *args, **kwargs):
    global _enabled_here
    server_args = tm.server_args
    cfg = config_of(server_args)
    if cfg.concur_enable:
        tm._concur_front = FrontDoor(cfg, int(getattr(server_args, "dp_size", 1) or 1))
        _enabled_here = True
        add_routes()
    return result


# --- hook: http_server.launch_server (AROUND) --------------------------------------------
def launch_server_around(original, server_args, *args, **kwargs):
    try:
        config_of(server_args)
    except ConcurConfigError as e:
        raise SystemExit(f"sglang-concur: error: {e}") from None
    return original(server_args, *args, **kwargs)


# --- hook: Engine.generate / Engine.async_generate (AROUND) ------------------------------
def engine_generate_around(original, self, *args, routing_key: Any = None, **kwargs):
    token = _engine_routing_key.set(routing_key)
    try:
        return original(self, *args, **kwargs)
    finally:
        _engine_routing_key.reset(token)


async def engine_async_generate_around(original, self, *args, routing_key: Any = None, **kwargs):
    token = _engine_routing_key.set(routing_key)
    try:
        return await original(self, *args, **kwargs)
    finally:
        _engine_routing_key.reset(token)


# --- the front door: identity, validation, inference, DP placement --------------------------
class FrontDoor:
    """The controller's part of the tokenizer process (one per launched server)."""

    def __init__(self, config: ConcurConfig, dp_size: int) -> None:
        self.config = config
        self.dp_size = dp_size
        self.index = ContextIndex() if config.concur_agent_id == "auto" else None
        self._next_expiry = 0.0

    def accept(self, obj: Any, request: Any) -> None:
        """The agent id of an incoming GenerateReqInput: the body's routing_key, else the
        X-SMG-Routing-Key header; validated (one key, or one per prompt of a batch)."""
        key = obj.routing_key
        if key is None and request is not None and (header := request.headers.get("x-smg-routing-key")):
            key = obj.routing_key = header
        if isinstance(key, (list, tuple)):
            n = _batch_size(obj)
            if len(key) != n:
                raise ValueError(f"routing_key has {len(key)} agent ids for a batch of {n} prompts")
            for k in key:
                if (err := check_agent_id(k)) is not None:
                    raise ValueError(err)
            if n == 1 and _is_single(obj):
                obj.routing_key = key[0]
        elif key is not None and (err := check_agent_id(key)) is not None:
            raise ValueError(err)

    def dispatch(self, tokenized: Any) -> None:
        """Before a tokenized generate request leaves for the schedulers: infer its agent when it
        has no id (`auto`), and pin the agent to one DP rank."""
        if self.index is not None and tokenized.routing_key is None and tokenized.input_ids is not None \
                and getattr(tokenized.sampling_params, "max_new_tokens", None) != 0 and not _is_health_check(tokenized):
            now = time.monotonic()
            tokenized.routing_key = self.index.assign(tokenized.rid, tokenized.input_ids, now)
            if now >= self._next_expiry:
                self._next_expiry = now + 1.0
                self.index.expire(now, self.config.concur_idle_timeout)
        if self.dp_size > 1 and tokenized.routing_key is not None and tokenized.routed_dp_rank is None:
            tokenized.routed_dp_rank = dp_rank(tokenized.routing_key, self.dp_size)

    def watched(self, rids: List[str]) -> List[str]:
        index = self.index
        return [] if index is None or not index.pending else [r for r in rids if r in index.pending]

    def finished(self, rid: str, output_ids: List[int], completed: bool) -> None:
        self.index.finished(rid, output_ids, time.monotonic(), completed)


_enabled_here = False  # a server or Engine with the controller on was launched in this process


def dp_rank(agent_id: str, dp_size: int) -> int:
    """The DP rank that serves `agent_id`: a stable hash (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(agent_id.encode(), digest_size=8).digest(), "little") % dp_size


def _is_health_check(tokenized: Any) -> bool:
    from sglang.srt.managers.utils import is_health_check_generate_req

    return is_health_check_generate_req(tokenized)


def _batch_size(obj: Any) -> int:
    for field in (obj.text, obj.input_ids):
        if isinstance(field, list) and field and (field is obj.text or isinstance(field[0], list)):
            return len(field)
    return 1


def _is_single(obj: Any) -> bool:
    return not isinstance(obj.text, list) and not (isinstance(obj.input_ids, list) and obj.input_ids
                                                    and isinstance(obj.input_ids[0], list))


# --- hook: TokenizerManager.generate_request (AROUND) ------------------------------------
def generate_request_around(original, self, obj, request=None, *args, **kwargs):
    key = _engine_routing_key.get()
    if key is not None and getattr(obj, "routing_key", None) is None:
        obj.routing_key = key
    front = getattr(self, "_concur_front", None)
    if front is not None and hasattr(obj, "routing_key") and hasattr(obj, "sampling_params"):
        front.accept(obj, request)
    return original(self, obj, request, *args, **kwargs)


# --- hook: GenerateReqInput.__getitem__ (AFTER): a batch's parts keep their routing keys ------
def getitem_after(result, self, i):
    key = getattr(self, "routing_key", None)
    if _enabled_here and key is not None and getattr(result, "routing_key", None) is None:
        result.routing_key = key[i] if isinstance(key, (list, tuple)) else key
    return result


# --- hooks: TokenizerManager._dispatch_to_scheduler / _handle_batch_output (AROUND) ----------
def dispatch_around(original, self, obj):
    front = getattr(self, "_concur_front", None)
    if front is not None:
        from sglang.srt.managers.io_struct import BatchTokenizedGenerateReqInput, TokenizedGenerateReqInput

        if isinstance(obj, TokenizedGenerateReqInput):
            front.dispatch(obj)
        elif isinstance(obj, BatchTokenizedGenerateReqInput):
            for t in obj.batch:
                front.dispatch(t)
    return original(self, obj)


async def handle_batch_output_around(original, self, recv_obj):
    front = getattr(self, "_concur_front", None)
    watched = front.watched(getattr(recv_obj, "rids", None) or []) if front is not None else []
    if not watched:
        return await original(self, recv_obj)
    reasons = dict(zip(recv_obj.rids, recv_obj.finished_reasons))
    states = {rid: self.rid_to_state.get(rid) for rid in watched if reasons.get(rid) is not None}
    out = await original(self, recv_obj)
    for rid, state in states.items():
        reason = reasons[rid] or {}
        completed = reason.get("type") != "abort" and state is not None
        front.finished(rid, list(state.output_ids) if completed else [], completed)
    return out


# --- Engine methods ----------------------------------------------------------------------
def _control(tokenizer_manager, op: str, agent_id: Optional[str] = None) -> List[Dict[str, Any]]:
    from sglang_concur.ipc import ConcurControlReq

    async def call():
        tokenizer_manager.auto_create_handle_loop()
        outs = await tokenizer_manager.concur_control_communicator(ConcurControlReq(op=op, agent_id=agent_id))
        return [o.result for o in outs]

    return call()


def _require_enabled(engine) -> None:
    if not config_of(engine.server_args).concur_enable:
        raise RuntimeError("sglang-concur is not enabled on this Engine (pass concur_enable=True)")


async def engine_async_concur_status(self) -> Dict[str, Any]:
    """The controller's state: window, agents and their state.  One dict per DP rank under 'ranks'."""
    _require_enabled(self)
    return {"ranks": await _control(self.tokenizer_manager, "status")}


async def engine_async_concur_end_agent(self, agent_id: str) -> bool:
    """End an agent: its window slot frees at once.  Returns whether it was known."""
    _require_enabled(self)
    if (err := check_agent_id(agent_id)) is not None:
        raise ValueError(err)
    return any(o.get("ended") for o in await _control(self.tokenizer_manager, "end", agent_id))


def engine_concur_status(self) -> Dict[str, Any]:
    return self.loop.run_until_complete(engine_async_concur_status(self))


def engine_concur_end_agent(self, agent_id: str) -> bool:
    return self.loop.run_until_complete(engine_async_concur_end_agent(self, agent_id))


engine_concur_status.__doc__ = engine_async_concur_status.__doc__
engine_concur_end_agent.__doc__ = engine_async_concur_end_agent.__doc__


def add_routes() -> None:
    from fastapi.responses import ORJSONResponse
    from sglang.srt.entrypoints import http_server

    app = http_server.app
    if any(getattr(r, "path", None) == "/concur/status" for r in app.routes):
        return

    def tm():
        return http_server._global_state.tokenizer_manager

    @app.get("/concur/status")
    async def concur_status():
        out: Dict[str, Any] = {"ranks": await _control(tm(), "status")}
        front = getattr(tm(), "_concur_front", None)
        if front is not None and front.index is not None:
            out["inference"] = {"contexts": len(front.index.contexts), "pending": len(front.index.pending)}
        return ORJSONResponse(out)

    @app.post("/concur/agents/{agent_id:path}/end")
    async def concur_end_agent(agent_id: str):
        if (err := check_agent_id(agent_id)) is not None:
            return ORJSONResponse({"error": {"message": err, "type": "invalid_request_error"}}, status_code=400)
        outs = await _control(tm(), "end", agent_id)
        return ORJSONResponse({"agent_id": agent_id, "ended": any(o.get("ended") for o in outs)})

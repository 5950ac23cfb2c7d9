"""Glue in SGLang's main process: flags, `sglang.Engine` keywords and methods, HTTP routes.

Hook points:
- `ServerArgs.add_cli_args` / `ServerArgs.from_cli_args`: the `--concur-*` flags.  The parsed
  `ConcurConfig` rides on the ServerArgs record as bookkeeping (`_concur_config`), which SGLang
  pickles into every scheduler process.
- `Engine.server_args_class` / `Engine.generate` / `Engine.async_generate`: `concur_*` keywords and a
  `routing_key=` keyword (the agent id).
- `http_server.launch_server`: the `/concur/*` routes, only with --concur-enable.
- `TokenizerManager.generate_request`: refuses malformed agent ids, only with --concur-enable.
"""

from __future__ import annotations

import contextvars
from typing import Any, Dict, List, Optional

from sglang_concur.config import ConcurConfig, ConcurConfigError, add_cli_args, check_agent_id, from_namespace, pop_kwargs

_enabled = False  # set in this process once a server or Engine starts with --concur-enable
_engine_routing_key: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("concur_routing_key", default=None)


def _attach(server_args: Any, config: ConcurConfig) -> Any:
    global _enabled
    if config.concur_enable:
        server_args._concur_config = config
        _enabled = True
    return server_args


# --- hook: ServerArgs.add_cli_args (AFTER) -----------------------------------------------
def add_cli_args_after(result, parser):
    add_cli_args(parser)
    return result


# --- hook: ServerArgs.from_cli_args (AROUND) ---------------------------------------------
def from_cli_args_around(original, cls, args):
    try:
        config = from_namespace(args)
    except ConcurConfigError as e:
        raise SystemExit(f"sglang-concur: error: {e}") from None
    return _attach(original(cls, args), config)


# --- extension point: Engine.server_args_class --------------------------------------------
def engine_server_args(**kwargs):
    """What `sglang.Engine(**kwargs)` builds its ServerArgs with: the `concur_*` keywords are taken
    off first.  (`Engine.__init__` calls `load_plugins()` and then this, so it holds for the very
    first Engine of a process, which a hook on `__init__` itself would miss.)"""
    from sglang.srt.server_args import ServerArgs

    config = pop_kwargs(kwargs)
    return _attach(ServerArgs(**kwargs), config)


# --- hook: Engine.generate / Engine.async_generate (AROUND) ------------------------------
def engine_generate_around(original, self, *args, routing_key: Optional[str] = None, **kwargs):
    token = _engine_routing_key.set(routing_key)
    try:
        return original(self, *args, **kwargs)
    finally:
        _engine_routing_key.reset(token)


async def engine_async_generate_around(original, self, *args, routing_key: Optional[str] = None, **kwargs):
    token = _engine_routing_key.set(routing_key)
    try:
        return await original(self, *args, **kwargs)
    finally:
        _engine_routing_key.reset(token)


# --- hook: TokenizerManager.generate_request (AROUND) ------------------------------------
def generate_request_around(original, self, obj, request=None, *args, **kwargs):
    key = _engine_routing_key.get()
    if key is not None and getattr(obj, "routing_key", None) is None:
        obj.routing_key = key
    if _enabled:
        rk = getattr(obj, "routing_key", None)
        if rk is not None and (err := check_agent_id(rk)) is not None:
            raise ValueError(err)
    return original(self, obj, request, *args, **kwargs)


# --- Engine methods ----------------------------------------------------------------------
def _control(tokenizer_manager, op: str, agent_id: Optional[str] = None) -> List[Dict[str, Any]]:
    from sglang_concur.ipc import ConcurControlReq

    async def call():
        tokenizer_manager.auto_create_handle_loop()
        outs = await tokenizer_manager.concur_control_communicator(ConcurControlReq(op=op, agent_id=agent_id))
        return [o.result for o in outs]

    return call()


def _require_enabled(engine) -> None:
    cfg = getattr(engine.server_args, "_concur_config", None)
    if cfg is None or not cfg.concur_enable:
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


# --- hook: http_server.launch_server (AROUND) --------------------------------------------
def launch_server_around(original, server_args, *args, **kwargs):
    cfg = getattr(server_args, "_concur_config", None)
    if cfg is not None and cfg.concur_enable:
        add_routes()
    return original(server_args, *args, **kwargs)


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
        return ORJSONResponse({"ranks": await _control(tm(), "status")})

    @app.post("/concur/agents/{agent_id:path}/end")
    async def concur_end_agent(agent_id: str):
        if (err := check_agent_id(agent_id)) is not None:
            return ORJSONResponse({"error": {"message": err, "type": "invalid_request_error"}}, status_code=400)
        outs = await _control(tm(), "end", agent_id)
        return ORJSONResponse({"agent_id": agent_id, "ended": any(o.get("ended") for o in outs)})

"""sglang-concur: CONCUR agent-level admission control inside SGLang's scheduler.

Loaded by SGLang from the `sglang.srt.plugins` entry point in every process; nothing changes in
SGLang's behaviour until a server or Engine is started with --concur-enable / concur_enable=True /
SGLANG_CONCUR_ENABLE=1.
"""

__version__ = "0.1.0"


def plugin() -> None:
    """Entry point: register the hooks (SGLang applies them right after)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_concur import ipc, scheduler_hook, server_hook as h

    ipc.register()
    sa, eng = "sglang.srt.server_args.ServerArgs", "sglang.srt.entrypoints.engine.Engine"
    tm = "sglang.srt.managers.tokenizer_manager.TokenizerManager"
    for target, hook, kind in [
        (f"{sa}.add_cli_args", h.add_cli_args_after, HookType.AFTER),
        (f"{sa}.from_cli_args", h.from_cli_args_around, HookType.AROUND),
        (f"{eng}.generate", h.engine_generate_around, HookType.AROUND),
        (f"{eng}.async_generate", h.engine_async_generate_around, HookType.AROUND),
        (f"{sa}.check_server_args", h.check_server_args_after, HookType.AFTER),
        ("sglang.srt.entrypoints.http_server.launch_server", h.launch_server_around, HookType.AROUND),
        (f"{tm}.__init__", h.tokenizer_manager_init_after, HookType.AFTER),
        (f"{tm}.generate_request", h.generate_request_around, HookType.AROUND),
        (f"{tm}._dispatch_to_scheduler", h.dispatch_around, HookType.AROUND),
        (f"{tm}._handle_batch_output", h.handle_batch_output_around, HookType.AROUND),
        ("sglang.srt.managers.io_struct.GenerateReqInput.__getitem__", h.getitem_after, HookType.AFTER),
        ("sglang.srt.managers.scheduler.Scheduler.__init__", _scheduler_init_after, HookType.AFTER),
    ]:
        HookRegistry.register(target, hook, kind)
    _add_engine_methods()


def _scheduler_init_after(result, scheduler, *args, **kwargs):
    from sglang_concur.scheduler_hook import attach

    attach(scheduler)
    return result


def _add_engine_methods() -> None:
    from sglang.srt.entrypoints.engine import Engine

    from sglang_concur import server_hook as h

    Engine.server_args_class = staticmethod(h.engine_server_args)
    Engine.concur_status = h.engine_concur_status
    Engine.concur_end_agent = h.engine_concur_end_agent
    Engine.async_concur_status = h.engine_async_concur_status
    Engine.async_concur_end_agent = h.engine_async_concur_end_agent

"""Switching the controller on without the CLI, the way slime starts SGLang: a `ServerArgs` built in
Python and `http_server.launch_server` in a spawned process, configured only by `SGLANG_CONCUR_*`
environment variables.  A real server on CPU; a bad environment value stops start-up with the
message its flag would give."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import requests

from helpers import Background, end_agent, status, wait_for
from sglang_concur import cpu
from sglang_concur.bench.server import ServerProcess, free_port

LAUNCHER = textwrap.dedent("""
    import multiprocessing, sys
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.entrypoints.http_server import launch_server   # as slime imports it

    if __name__ == "__main__":
        multiprocessing.set_start_method("spawn", force=True)
        model, port = sys.argv[1], int(sys.argv[2])
        args = ServerArgs(model_path=model, host="127.0.0.1", port=port, max_total_tokens=4096,
                          device="cpu", attention_backend="torch_native", sampling_backend="pytorch",
                          grammar_backend="none", disable_cuda_graph=True, skip_server_warmup=True,
                          disable_overlap_schedule=True)
        p = multiprocessing.Process(target=launch_server, args=(args,))
        p.start()
        p.join()
        sys.exit(p.exitcode)
""")


def launcher(tmp_path_factory, model: str, env: dict) -> ServerProcess:
    script = tmp_path_factory.mktemp("slime") / "launch.py"
    script.write_text(LAUNCHER)
    port = free_port()
    srv = ServerProcess([], port, str(script.with_suffix(".log")), env=cpu.env({**os.environ, **env}),
                        cmd=[sys.executable, str(script), model, str(port)])
    return srv


@pytest.fixture(scope="module")
def url(tiny_model, tmp_path_factory):
    env = {"SGLANG_CONCUR_ENABLE": "1", "SGLANG_CONCUR_POLICY": "static", "SGLANG_CONCUR_INITIAL_WINDOW": "1",
           "SGLANG_CONCUR_CONTROL_INTERVAL": "0.2"}
    with launcher(tmp_path_factory, tiny_model, env) as srv:
        yield srv.url


def test_environment_switch_turns_the_controller_on_and_gates_agents(url):
    st = status(url)
    assert st["policy"] == "static" and st["window"] == 1 and st["config"]["concur_control_interval"] == 0.2
    body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2}}
    hdr = lambda agent: {"X-SMG-Routing-Key": agent}  # noqa: E731 - as slime's agent adapters send it
    assert requests.post(url + "/generate", json=body, headers=hdr("slime-a"), timeout=60).ok
    second = Background(lambda: requests.post(url + "/generate", json=body, headers=hdr("slime-b"), timeout=120))
    wait_for(lambda: status(url)["held_requests"] == 1, what="slime-b held (window 1)")
    assert not second.done
    assert end_agent(url, "slime-a").json()["ended"] is True
    assert second.result().ok
    end_agent(url, "slime-b")


def test_bad_environment_value_stops_start_up_with_the_flags_message(tiny_model, tmp_path_factory):
    srv = launcher(tmp_path_factory, tiny_model, {"SGLANG_CONCUR_ENABLE": "1", "SGLANG_CONCUR_BETA": "2"})
    r = subprocess.run(srv.cmd, env=srv.env, capture_output=True, text=True, timeout=240)
    assert r.returncode != 0
    last = [l for l in r.stderr.strip().splitlines() if l.strip()][-1]
    assert last.endswith("--concur-beta must be in (0, 1), got 2.0 (from SGLANG_CONCUR_BETA)"), r.stderr[-2000:]

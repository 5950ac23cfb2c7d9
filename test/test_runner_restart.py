"""The runner survives a server restart mid-run: turns that fail during the outage are retried,
every turn ends completed or counted as failed, and the run finishes."""

from __future__ import annotations

import threading
import time

import requests

from sglang_concur.bench.runner import RunConfig, run_trace
from sglang_concur.bench.server import cpu_server, free_port
from sglang_concur.bench.trace import AgentTrace, Turn

FLAGS = ["--concur-enable", "--concur-control-interval", "0.2"]


def test_server_restart_mid_run(tiny_model):
    port = free_port()
    turns = tuple(Turn(append_tokens=10, output_tokens=3, tool_latency_s=0.5) for _ in range(8))
    agents = [AgentTrace(f"rs-{i}", "p0", 32, 8, turns) for i in range(3)]
    first = cpu_server(tiny_model, FLAGS, port=port, max_total_tokens=4096).start()
    out: dict = {}
    cfg = RunConfig(label="restart", url=first.url, progress=False, max_retries=8, retry_backoff_s=1.0,
                    retry_backoff_max_s=8.0, request_timeout_s=60, sample_interval_s=0.5)
    runner = threading.Thread(target=lambda: out.update(run_trace(agents, cfg)), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the agents are a couple of turns in
            agents_now = requests.get(first.url + "/concur/status", timeout=10).json()["ranks"][0]["agents"]
            if agents_now and min(a["turns"] for a in agents_now.values()) >= 2:
                break
            time.sleep(0.1)
        first.stop()
        second = cpu_server(tiny_model, FLAGS, port=port, max_total_tokens=4096).start()
    except BaseException:
        first.stop()
        raise
    try:
        runner.join(timeout=240)
        assert not runner.is_alive(), "runner hung"
    finally:
        second.stop()
    assert out["turns_completed"] + out["failed_turns"] == out["turns_planned"] == 24
    assert out["failed_attempts"] >= 1 and out["errors"]  # the outage was seen and reported
    assert out["turns_completed"] >= 20  # retries carried most turns over the restart

"""Plugin installed but --concur-enable not given: SGLang behaves exactly as upstream.
Two real servers, started side by side: one with the plugin loaded, one with it filtered out
(SGLANG_PLUGINS names another plugin, so SGLang loads nothing of ours)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import requests

from helpers import generate
from sglang_concur.bench.server import cpu_server

PROMPTS = [[1, 2, 3, 4, 5], [100, 200, 300], list(range(10, 90)), [7] * 33, [400, 17, 250, 3, 9, 11]]


@pytest.fixture(scope="module")
def urls(tiny_model):
    with_plugin = cpu_server(tiny_model, ["--enable-metrics"], max_total_tokens=4096)
    upstream = cpu_server(tiny_model, ["--enable-metrics"], max_total_tokens=4096)
    upstream.env["SGLANG_PLUGINS"] = "not-sglang-concur"
    # start both before waiting on either: two start-ups overlap
    import threading

    errors = []
    threads = [threading.Thread(target=lambda s=s: _start(s, errors)) for s in (with_plugin, upstream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield with_plugin.url, upstream.url
    finally:
        with_plugin.stop()
        upstream.stop()


def _start(server, errors):
    try:
        server.start()
    except Exception as e:  # noqa: BLE001
        errors.append(e)


def test_plugin_is_installed_in_this_environment():
    assert any(ep.value == "sglang_concur:plugin" for ep in entry_points(group="sglang.srt.plugins"))


def test_greedy_outputs_token_identical(urls):
    ours, upstream = urls
    for p in PROMPTS:
        a = generate(ours, p, max_new_tokens=16, agent="agent-1").json()
        b = generate(upstream, p, max_new_tokens=16, agent="agent-1").json()
        assert a["output_ids"] == b["output_ids"] and len(a["output_ids"]) == 16
    text = {"text": "The quick brown fox", "sampling_params": {"max_new_tokens": 12, "temperature": 0}}
    a = requests.post(ours + "/generate", json=text, timeout=60).json()
    b = requests.post(upstream + "/generate", json=text, timeout=60).json()
    assert a["text"] == b["text"] and a["output_ids"] == b["output_ids"]


def test_no_concur_endpoint_or_metric(urls):
    for url in urls:
        assert requests.get(url + "/concur/status", timeout=30).status_code == 404
        assert requests.post(url + "/concur/agents/a/end", timeout=30).status_code == 404
        metrics = requests.get(url + "/metrics", timeout=30).text
        names = {l.split("{")[0].split(" ")[0] for l in metrics.splitlines() if l and not l.startswith("#")}
        assert "sglang:num_running_reqs" in names and not any("concur" in n for n in names)


def test_routing_key_not_validated_when_off(urls):
    ours, _ = urls
    assert generate(ours, [1, 2, 3], max_new_tokens=2, agent="any key at all; upstream accepts it").ok

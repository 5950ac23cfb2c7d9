"""Trace format, loader errors, and the seeded generator."""

from __future__ import annotations

import json

import pytest

from sglang_concur.bench.trace import AgentTrace, TraceError, Turn, dump_trace, generate_trace, load_trace, summary

GOOD = {"agent_id": "a0", "prefix_id": "p0", "prefix_tokens": 100, "task_tokens": 20,
        "turns": [{"append_tokens": 30, "output_tokens": 5, "tool_latency_s": 0.5}]}


def write(tmp_path, lines) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return str(path)


def with_(**kv):
    return {**GOOD, **kv}


def turn_with(**kv):
    return with_(turns=[{**GOOD["turns"][0], **kv}])


def test_round_trip(tmp_path):
    agents = generate_trace(20, seed=3, scale=0.1)
    path = str(tmp_path / "trace.jsonl")
    dump_trace(agents, path)
    assert load_trace(path) == agents
    assert isinstance(agents[0], AgentTrace) and isinstance(agents[0].turns[0], Turn)


def test_load_accepts_int_latency_and_blank_lines(tmp_path):
    a = load_trace(write(tmp_path, ["", turn_with(tool_latency_s=2), ""]))
    assert a[0].turns[0].tool_latency_s == 2.0


@pytest.mark.parametrize("line, field", [
    ("{not json", "bad JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({k: v for k, v in GOOD.items() if k != "prefix_tokens"}, "'prefix_tokens'"),
    (with_(agent_id=7), "'agent_id'"),
    (with_(agent_id=""), "'agent_id'"),
    (with_(task_tokens=1.5), "'task_tokens'"),
    (with_(task_tokens=True), "'task_tokens'"),
    (with_(prefix_tokens=-1), "'prefix_tokens'"),
    (with_(turns=[]), "'turns'"),
    (with_(turns="x"), "'turns'"),
    (with_(turns=[5]), "turns[0]"),
    (turn_with(output_tokens=-3), "'output_tokens'"),
    (turn_with(output_tokens=0), "'output_tokens'"),
    (turn_with(tool_latency_s="1"), "'tool_latency_s'"),
    (turn_with(tool_latency_s=float("nan")), "'tool_latency_s'"),
    ({k: v for k, v in GOOD.items() if k != "turns"} | {"turns": [{"append_tokens": 1, "output_tokens": 1}]},
     "'tool_latency_s'"),
])
def test_malformed_line_names_line_and_field(tmp_path, line, field):
    path = write(tmp_path, [with_(agent_id="first"), line])
    with pytest.raises(TraceError) as e:
        load_trace(path)
    assert f"{path}:2" in str(e.value) and field in str(e.value)


def test_duplicate_agent_id(tmp_path):
    path = write(tmp_path, [GOOD, with_(agent_id="b"), GOOD])
    with pytest.raises(TraceError, match=r":3: field 'agent_id': duplicate 'a0' \(first on line 1\)"):
        load_trace(path)


def test_empty_file(tmp_path):
    with pytest.raises(TraceError, match="no agents"):
        load_trace(write(tmp_path, [""]))


def test_seeded_determinism():
    assert generate_trace(30, seed=1) == generate_trace(30, seed=1)
    assert generate_trace(30, seed=1) != generate_trace(30, seed=2)
    # scale changes token counts, not the shape: same turns and latencies
    a, b = generate_trace(30, seed=1), generate_trace(30, seed=1, scale=0.1)
    assert [len(x.turns) for x in a] == [len(x.turns) for x in b]
    assert [t.tool_latency_s for x in a for t in x.turns] == [t.tool_latency_s for x in b for t in x.turns]


def test_unknown_parameter():
    with pytest.raises(TypeError, match="unknown trace parameter"):
        generate_trace(2, 0, turns_medain=3)


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_distribution_summary(scale):
    s = summary(generate_trace(1500, seed=0, scale=scale))
    assert s["agents"] == 1500 and s["prefix_ids"] == 3
    assert 10 <= s["turns_per_agent"]["median"] <= 14
    assert s["turns_per_agent"]["p90"] >= 2 * s["turns_per_agent"]["median"]  # heavy tail
    assert s["turns_per_agent"]["max"] <= 100
    assert 0.85 * 800 * scale <= s["append_tokens"]["median"] <= 1.15 * 800 * scale
    assert s["append_tokens"]["p90"] >= 2500 * scale
    assert 50 * scale - 0.5 <= s["output_tokens"]["min"] and s["output_tokens"]["max"] <= 450 * scale + 0.5
    assert 2000 * scale - 0.5 <= s["prefix_tokens"]["min"] and s["prefix_tokens"]["max"] <= 5000 * scale + 0.5
    assert s["tool_latency_s"]["median"] < 1.0 and s["tool_latency_s"]["max"] >= 10.0


def test_time_scale_turns_scale_and_max_context():
    base = generate_trace(200, seed=0)
    fast = generate_trace(200, seed=0, time_scale=0.1)
    assert summary(fast)["tool_latency_s"]["median"] == pytest.approx(summary(base)["tool_latency_s"]["median"] * 0.1, rel=0.01)
    assert summary(generate_trace(500, seed=0, turns_scale=0.3))["turns_per_agent"]["median"] <= 5
    capped = generate_trace(200, seed=0, max_context_tokens=20000)
    assert all(a.context_tokens() <= 20000 or len(a.turns) == 1 for a in capped)


def test_long_agents():
    agents = generate_trace(40, seed=0, long_fraction=0.25, long_factor=10)
    long = [a for a in agents if a.agent_id.endswith("-long")]
    assert len(long) == 10
    med = lambda xs: sorted(xs)[len(xs) // 2]
    app = lambda a: med([t.append_tokens for t in a.turns])
    assert med([app(a) for a in long]) > 4 * med([app(a) for a in agents if a not in long])


def test_cli_generate_trace(tmp_path, capsys):
    from sglang_concur.bench.__main__ import main

    path = str(tmp_path / "g.jsonl")
    assert main(["generate-trace", "--preset", "cpu-smoke", "--agents", "5", "--seed", "2", "-o", path]) == 0
    agents = load_trace(path)
    assert len(agents) == 5 and all(a.context_tokens() <= 2400 for a in agents)
    assert "wrote 5 agents" in capsys.readouterr().out


def test_sweep_rejects_unknown_run_names_before_doing_anything(tmp_path):
    from sglang_concur.bench.__main__ import main

    with pytest.raises(SystemExit, match=r"--runs: unknown run\(s\) \['concur-fast'\].*concur-native"):
        main(["sweep", "--preset", "cpu", "--runs", "sglang-cap4,concur-fast", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_sweep_runs_plain_sglang_under_another_client_only_when_named():
    """Plain SGLang and its caps are the baseline under the default client; under `--clients openai`
    they run as `sglang@openai` only when --runs names them (each costs a full run)."""
    from sglang_concur.bench.__main__ import PRESETS, all_runs, sweep_runs

    p, clients = PRESETS["cpu-mixed"], ["routing-key-end", "openai"]
    by_default = {r.label: r.client for g in sweep_runs(p, clients, None, []) for r in g}
    assert by_default["sglang"] == by_default["sglang-cap4"] == "routing-key-end"
    assert by_default["concur-native@openai"] == "openai" and "sglang@openai" not in by_default
    assert {"sglang@openai", "sglang-cap4@openai"} <= {r.label for g in all_runs(p, clients, []) for r in g}
    named = [[(r.label, r.client, r.agent_cap) for r in g]
             for g in sweep_runs(p, clients, {"sglang@openai", "sglang-cap4@openai", "concur-native"}, [])]
    assert named == [[("sglang@openai", "openai", None), ("sglang-cap4@openai", "openai", 4)],
                     [("concur-native", "routing-key-end", None)]]


def test_plot_of_a_directory_without_run_results_says_so(tmp_path):
    from sglang_concur.bench.__main__ import main

    (tmp_path / "sweep.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"plot: no run results \(\*\.json with a timeline\) in"):
        main(["plot", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"plot: no such directory"):
        main(["plot", str(tmp_path / "missing")])


def test_plot_redraws_a_time_scale_series(tmp_path, capsys):
    """`bench plot` on a --time-scales sweep redraws every point's plots and time-scales.png, with a
    table per point (from the committed cpu-tools series)."""
    import pathlib, shutil
    from sglang_concur.bench.__main__ import main

    src = pathlib.Path(__file__).resolve().parents[1] / "benchmark/results/cpu-tools-time-scales"
    for sub in ("time-scale-0.5", "time-scale-2"):
        (tmp_path / sub).mkdir()
        for f in (src / sub).glob("*.json"):
            shutil.copy(f, tmp_path / sub)
    assert main(["plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tool waits x0.5" in out and "tool waits x2" in out and "| concur-native |" in out
    assert (tmp_path / "time-scales.png").stat().st_size > 0
    assert all((tmp_path / s / "completion.png").exists() for s in ("time-scale-0.5", "time-scale-2"))


@pytest.mark.parametrize("argv, message", [
    (["compare", "--agents", "0"], "--agents: must be an integer >= 1, got '0'"),
    (["compare", "--max-total-tokens", "0"], "--max-total-tokens: must be an integer >= 1, got '0'"),
    (["compare", "--long-fraction", "2"], "--long-fraction"),
    (["compare", "--trace", "/nonexistent/trace.jsonl"], "No such file or directory: '/nonexistent/trace.jsonl'"),
    (["sweep", "--time-scales", "1,x"], "--time-scales"),
    (["sweep", "--clients", "routing-key,telepathy"], "--clients"),
])
def test_bench_cli_bad_input_is_one_line_before_any_server_starts(tmp_path, argv, message):
    """The benchmark CLI as a user runs it: exit status 2 or 1, one line on stderr, no traceback."""
    import subprocess, sys

    p = subprocess.run([sys.executable, "-m", "sglang_concur.bench", *argv, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode in (1, 2), p
    assert "Traceback" not in p.stderr and message in err[-1], p.stderr
    assert list(tmp_path.iterdir()) == []  # nothing ran

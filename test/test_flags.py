"""Every --concur-* rule is refused at start-up with one line naming the flag and the allowed range:
through SGLang's real argument parsing (plugin hooks applied), the real CLI, and sglang.Engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sglang_concur import cpu
from sglang_concur.config import FIELD_NAMES, ConcurConfig, ConcurConfigError

RULES = [  # (flags, expected message)
    (["--concur-enable", "--concur-initial-window", "-1"], "--concur-initial-window must be in [--concur-min-window, --concur-max-window] = [1, 4096], got -1"),
    (["--concur-enable", "--concur-min-window", "0"], "--concur-min-window must be an integer >= 1, got 0"),
    (["--concur-enable", "--concur-min-window", "4", "--concur-max-window", "2"], "--concur-max-window must be >= --concur-min-window (4), got 2"),
    (["--concur-enable", "--concur-initial-window", "2.5"], "--concur-initial-window must be an integer, got '2.5'"),
    (["--concur-enable", "--concur-alpha", "0"], "--concur-alpha must be in (0, 1e6], got 0.0"),
    (["--concur-enable", "--concur-alpha", "inf"], "--concur-alpha must be a finite number, got 'inf'"),
    (["--concur-enable", "--concur-beta", "1.5"], "--concur-beta must be in (0, 1), got 1.5"),
    (["--concur-enable", "--concur-beta", "0"], "--concur-beta must be in (0, 1), got 0.0"),
    (["--concur-enable", "--concur-usage-low", "0.6"], "--concur-usage-low must be < --concur-usage-high (0.5), got 0.6"),
    (["--concur-enable", "--concur-usage-high", "1.2"], "--concur-usage-high must be in (0, 1], got 1.2"),
    (["--concur-enable", "--concur-hit-threshold", "-0.1"], "--concur-hit-threshold must be in [0, 1], got -0.1"),
    (["--concur-enable", "--concur-control-interval", "0"], "--concur-control-interval must be in [0.01, 60] seconds, got 0.0"),
    (["--concur-enable", "--concur-control-interval", "0.001"], "--concur-control-interval must be in [0.01, 60] seconds, got 0.001"),
    (["--concur-enable", "--concur-control-interval", "inf"], "--concur-control-interval must be a finite number, got 'inf'"),
    (["--concur-enable", "--concur-control-interval", "nan"], "--concur-control-interval must be a finite number, got 'nan'"),
    (["--concur-enable", "--concur-idle-timeout", "-5"], "--concur-idle-timeout must be in [1, 86400] seconds, got -5.0"),
    (["--concur-enable", "--concur-idle-timeout", "inf"], "--concur-idle-timeout must be a finite number, got 'inf'"),
    (["--concur-enable", "--concur-beta", "abc"], "--concur-beta must be a number, got 'abc'"),
    (["--concur-initial-window", "4"], "--concur-initial-window needs --concur-enable"),
    (["--concur-policy", "static"], "--concur-policy needs --concur-enable"),
]


@pytest.fixture(scope="module")
def prepare():
    cpu.apply()
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()
    return prepare_server_args


@pytest.mark.parametrize("flags,message", RULES, ids=[m.split(" ")[0] + "/" + str(i) for i, (_, m) in enumerate(RULES)])
def test_rule_refused_by_sglang_argument_parsing(prepare, tiny_model, flags, message):
    with pytest.raises(SystemExit) as e:
        prepare(["--model-path", tiny_model, *flags])
    assert str(e.value) == f"sglang-concur: error: {message}"


ENV_RULES = [  # (environment, expected message): the flag's message, naming the variable
    ({"SGLANG_CONCUR_ENABLE": "1", "SGLANG_CONCUR_BETA": "2"}, "--concur-beta must be in (0, 1), got 2.0 (from SGLANG_CONCUR_BETA)"),
    ({"SGLANG_CONCUR_ENABLE": "1", "SGLANG_CONCUR_CONTROL_INTERVAL": "inf"},
     "--concur-control-interval must be a finite number, got 'inf' (from SGLANG_CONCUR_CONTROL_INTERVAL)"),
    ({"SGLANG_CONCUR_ENABLE": "1", "SGLANG_CONCUR_POLICY": "pid"},
     "--concur-policy must be one of static, aimd, native, got 'pid' (from SGLANG_CONCUR_POLICY)"),
    ({"SGLANG_CONCUR_ENABLE": "maybe"}, "SGLANG_CONCUR_ENABLE must be one of 1, 0, true, false, yes, no, on, off, got 'maybe'"),
    ({"SGLANG_CONCUR_POLICY": "static"}, "--concur-policy needs --concur-enable (from SGLANG_CONCUR_POLICY)"),
    ({"SGLANG_CONCUR_WINDW": "3"}, "unknown environment variable SGLANG_CONCUR_WINDW; known: "),
]


@pytest.mark.parametrize("env,message", ENV_RULES, ids=[m.split(" ")[0] + f"/{i}" for i, (_, m) in enumerate(ENV_RULES)])
def test_environment_rule_refused_by_sglang_argument_parsing(prepare, tiny_model, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        prepare(["--model-path", tiny_model])
    assert str(e.value).startswith(f"sglang-concur: error: {message}")


def test_environment_enables_and_flags_override_it(prepare, tiny_model, monkeypatch):
    monkeypatch.setenv("SGLANG_CONCUR_ENABLE", "1")
    monkeypatch.setenv("SGLANG_CONCUR_POLICY", "static")
    monkeypatch.setenv("SGLANG_CONCUR_INITIAL_WINDOW", "5")
    sa = prepare(["--model-path", tiny_model, "--concur-initial-window", "3"])
    assert sa._concur_config == ConcurConfig(concur_enable=True, concur_policy="static", concur_initial_window=3)
    monkeypatch.setenv("SGLANG_CONCUR_ENABLE", "0")  # off: the other variables are ignored
    assert prepare(["--model-path", tiny_model])._concur_config.concur_enable is False


def test_unknown_policy_refused_by_argparse(prepare, tiny_model, capsys):
    with pytest.raises(SystemExit):
        prepare(["--model-path", tiny_model, "--concur-enable", "--concur-policy", "pid"])
    assert "--concur-policy: invalid choice: 'pid'" in capsys.readouterr().err


def test_valid_flags_ride_on_server_args(prepare, tiny_model):
    sa = prepare(["--model-path", tiny_model, "--concur-enable", "--concur-policy", "static", "--concur-initial-window", "3"])
    assert sa._concur_config == ConcurConfig(concur_enable=True, concur_policy="static", concur_initial_window=3)
    plain = prepare(["--model-path", tiny_model])
    assert plain._concur_config.concur_enable is False


def test_every_flag_in_help(prepare):
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    help_text = parser.format_help()
    for name in FIELD_NAMES:
        assert "--" + name.replace("_", "-") in help_text


def test_cli_exits_with_one_line(tiny_model):
    r = subprocess.run([sys.executable, "-m", "sglang.launch_server", "--model-path", tiny_model,
                        "--concur-enable", "--concur-beta", "2"], env=cpu.env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == "sglang-concur: error: --concur-beta must be in (0, 1), got 2.0"


@pytest.mark.parametrize("kwargs,message", [
    (dict(concur_enable=True, concur_beta=2.0), "--concur-beta must be in (0, 1), got 2.0"),
    (dict(concur_enable=True, concur_policy="nope"), "--concur-policy must be one of static, aimd, native, got 'nope'"),
    (dict(concur_alpha=1.0), "--concur-alpha needs --concur-enable"),
    (dict(concur_enable=True, concur_windw=3), "unknown keyword 'concur_windw'"),
    (dict(concur_enable="false"), "--concur-enable must be True or False, got 'false'"),
    (dict(concur_enable=True, concur_idle_timeout=float("inf")), "--concur-idle-timeout must be a finite number, got inf"),
])
def test_engine_keywords_refused_before_launch(prepare, tiny_model, kwargs, message):
    import sglang

    with pytest.raises(ConcurConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sglang.Engine(model_path=tiny_model, **cpu.ENGINE_KWARGS, **kwargs)

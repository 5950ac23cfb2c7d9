"""Start and stop a real `python -m sglang.launch_server` for benchmarks and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from sglang_concur import cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A launched server.  Use as a context manager; `url` is its base address."""

    args: List[str]
    port: int
    log_path: str
    proc: Optional[subprocess.Popen] = None
    env: Dict[str, str] = field(default_factory=dict)
    cmd: Optional[List[str]] = None  # a launcher of one's own (default: python -m sglang.launch_server ARGS)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> "ServerProcess":
        cmd = self.cmd or [sys.executable, "-m", "sglang.launch_server", *self.args, "--host", "127.0.0.1",
                           "--port", str(self.port)]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env or None,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout:.0f}s; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cpu_server(model: str, extra: Sequence[str] = (), log_path: Optional[str] = None,
               port: Optional[int] = None, max_total_tokens: Optional[int] = 16384) -> ServerProcess:
    """A real SGLang server on this CPU with the flags that work there (see `sglang_concur.cpu`)."""
    port = port or free_port()
    args = ["--model-path", model, *cpu.SERVER_ARGS, "--max-total-tokens", str(max_total_tokens or 16384), *extra]
    return ServerProcess(args, port, log_path or f"/tmp/sglang-concur-server-{port}.log", env=cpu.env())


def gpu_server(model: str, extra: Sequence[str] = (), log_path: Optional[str] = None,
               port: Optional[int] = None, max_total_tokens: Optional[int] = None) -> ServerProcess:
    """A real SGLang server on the GPU with upstream defaults (CUDA graphs, overlap scheduler).
    `model` may be a directory holding only a config.json: weights are random (`--load-format dummy`)
    and requests carry token ids (`--skip-tokenizer-init`)."""
    import os

    port = port or free_port()
    args = ["--model-path", model]
    if not any(os.path.exists(os.path.join(model, f)) for f in ("model.safetensors", "model.safetensors.index.json")):
        args += ["--load-format", "dummy", "--skip-tokenizer-init"]
    if max_total_tokens:
        args += ["--max-total-tokens", str(max_total_tokens)]
    return ServerProcess([*args, *extra], port, log_path or f"/tmp/sglang-concur-server-{port}.log")

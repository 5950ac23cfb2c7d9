"""Small HTTP helpers for tests against a real server."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional

import requests


def generate(url: str, input_ids: List[int], max_new_tokens: int = 8, agent: Optional[str] = None,
             timeout: float = 120, **extra) -> requests.Response:
    body: Dict[str, Any] = {"input_ids": input_ids, "sampling_params": {"max_new_tokens": max_new_tokens,
                            "temperature": 0, "ignore_eos": True}, **extra}
    if agent is not None:
        body["routing_key"] = agent
    return requests.post(url + "/generate", json=body, timeout=timeout)


def status(url: str) -> Dict[str, Any]:
    r = requests.get(url + "/concur/status", timeout=30)
    r.raise_for_status()
    return r.json()["ranks"][0]


def end_agent(url: str, agent: str) -> requests.Response:
    return requests.post(f"{url}/concur/agents/{agent}/end", timeout=30)


def wait_for(cond: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll until `cond()` is truthy (state observed from the server, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Background:
    """Run a call in a thread; `.result(timeout)` joins it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.finished_at: Optional[float] = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as e:  # noqa: BLE001 - surfaced by result()
                self.error = e
            self.finished_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self, timeout: float = 120) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.value

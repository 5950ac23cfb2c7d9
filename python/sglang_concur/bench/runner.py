"""Closed-loop agent driver: replays an agent trace against SGLang and measures the batch.

Each agent sends its whole history every turn (prefix + task + earlier replies and observations),
waits for the reply, sleeps the tool latency, appends observation tokens and goes again.  The
client mode says how it talks, as the frameworks that drive agents do (see CLIENTS); the target is
an HTTP server or an in-process `sglang.Engine` (routing key and end call).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sglang_concur.bench.trace import AgentTrace, summary

TARGETS = ("http", "engine")
CLIENTS = {  # how a client names its agents and ends them
    "routing-key-end": "native /generate with routing_key in the body, POST /concur/agents/{id}/end after the last turn",
    "routing-key": "native /generate with routing_key in the body, no end call",
    "header": "native /generate, the id only in the X-SMG-Routing-Key header, a fresh rid per turn, no end call (slime)",
    "anonymous": "native /generate with input_ids, no id, a fresh rid per turn, no end call (verl, AReaL)",
    "openai": "/v1/chat/completions through the openai package, the id in the X-SMG-Routing-Key header, no end call",
}


@dataclass(frozen=True)
class RunConfig:
    label: str = "run"
    target: str = "http"  # http | engine
    client: str = "routing-key-end"  # one of CLIENTS (http target)
    url: Optional[str] = None  # server base address (http)
    agent_cap: Optional[int] = None  # client-side cap on agents in flight (whole agents), None = no cap
    client_cap: Optional[int] = None  # a framework's own trajectory cap (like slime's semaphore); min with agent_cap
    tokenizer: Optional[str] = None  # tokenizer path for the openai client (turns token counts into text)
    arrival_rate: Optional[float] = None  # Poisson agent arrivals per second; None = all at t=0
    arrival_seed: int = 0
    max_retries: int = 4  # extra attempts per turn after a failure
    retry_backoff_s: float = 1.0  # first backoff; doubles, capped at retry_backoff_max_s
    retry_backoff_max_s: float = 10.0
    request_timeout_s: float = 900.0
    token_lo: int = 10  # synthetic token ids are drawn from [token_lo, token_hi)
    token_hi: int = 500
    sample_interval_s: float = 1.0
    progress: bool = True
    model: str = "default"  # `model` field for the openai client

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.client not in CLIENTS:
            raise ValueError(f"client must be one of {', '.join(CLIENTS)}, got {self.client!r}")
        if self.target != "engine" and not self.url:
            raise ValueError(f"target {self.target!r} needs url")
        if self.client == "openai" and not self.tokenizer:
            raise ValueError("client 'openai' needs tokenizer (a model directory)")
        for name in ("agent_cap", "client_cap"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.token_lo < self.token_hi:
            raise ValueError("need 0 <= token_lo < token_hi")


@dataclass
class TurnRecord:
    agent_id: str
    turn: int
    t_start: float
    t_end: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    recomputed_tokens: int
    attempts: int


@dataclass
class AgentRecord:
    agent_id: str
    start_s: float = 0.0
    end_s: float = 0.0
    turns_done: int = 0
    failed: bool = False
    error: Optional[str] = None


class TurnFailed(Exception):
    def __init__(self, msg: str, retryable: bool = True) -> None:
        super().__init__(msg)
        self.retryable = retryable


# --- deterministic token ids -------------------------------------------------------------
def token_ids(key: str, n: int, lo: int = 10, hi: int = 500) -> List[int]:
    """`n` pseudo-random ids in [lo, hi), a pure function of `key`."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).integers(lo, hi, size=n).tolist()


# --- targets -----------------------------------------------------------------------------
@dataclass
class Reply:
    segment: Any  # what the agent appends to its history: output ids, or the reply's text (openai)
    output_tokens: int
    prompt_tokens: int
    cached_tokens: int


Segments = List[Tuple[str, Any]]  # (role, ids) history: system prefix, user task, assistant/user turns


def flat(segments: Segments) -> List[int]:
    out: List[int] = []
    for _, part in segments:
        out += part
    return out


class _Target:
    has_concur = False

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def generate(self, agent_id: str, history: Segments, n: int) -> Reply:
        raise NotImplementedError

    async def end_agent(self, agent_id: str) -> None: ...
    async def probe(self) -> Dict[str, Any]:
        """kv_usage / window / active_agents, None where unknown."""
        return {}


class _HttpTarget(_Target):
    """Native `/generate` with token ids; the client mode decides how the agent is named."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.url = cfg, cfg.url.rstrip("/")
        self.has_metrics = False

    async def start(self) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=self.cfg.request_timeout_s))
        self.has_concur = (await self._get("/concur/status")) is not None
        self.has_metrics = (await self._get("/metrics", text=True)) is not None

    async def close(self) -> None:
        await self.session.close()

    async def _get(self, path: str, text: bool = False) -> Any:
        try:
            async with self.session.get(self.url + path, timeout=self.aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return None
                return await r.text() if text else await r.json()
        except (self.aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def _post(self, path: str, body: Dict[str, Any], headers: Optional[Dict[str, str]] = None) -> Any:
        try:
            async with self.session.post(self.url + path, json=body, headers=headers) as r:
                if r.status != 200:
                    text = (await r.text())[:300]
                    raise TurnFailed(f"HTTP {r.status} from {path}: {text}", retryable=r.status >= 500 or r.status in (408, 429))
                return await r.json()
        except self.aiohttp.ClientError as e:
            raise TurnFailed(f"{type(e).__name__}: {e}") from None
        except asyncio.TimeoutError:
            raise TurnFailed(f"timeout after {self.cfg.request_timeout_s}s on {path}") from None

    async def generate(self, agent_id: str, history: Segments, n: int) -> Reply:
        body: Dict[str, Any] = {"input_ids": flat(history),
                                "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}}
        headers = None
        client = self.cfg.client
        if client in ("routing-key-end", "routing-key"):
            body["routing_key"] = agent_id
        else:
            body["rid"] = uuid.uuid4().hex  # a fresh request id per turn, as slime, verl and AReaL send
            if client == "header":
                headers = {"X-SMG-Routing-Key": agent_id}
        d = await self._post("/generate", body, headers)
        m = d["meta_info"]
        out = list(d["output_ids"])
        return Reply(out, len(out), int(m["prompt_tokens"]), int(m.get("cached_tokens") or 0))

    async def end_agent(self, agent_id: str) -> None:
        if self.has_concur and self.cfg.client == "routing-key-end":
            try:
                await self._post(f"/concur/agents/{agent_id}/end", {})
            except TurnFailed:
                pass  # the server notices the agent is gone anyway

    async def probe(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.has_metrics and (text := await self._get("/metrics", text=True)):
            out = {"kv_usage": _metric(text, "sglang:token_usage", mean=True),
                   "window": _metric(text, "sglang:concur_window"),
                   "active_agents": _metric(text, "sglang:concur_active_agents"),
                   "running_requests": _metric(text, "sglang:num_running_reqs"),
                   "lost_work": _metric(text, "sglang:concur_lost_work", mean=True)}
        if self.has_concur and out.get("window") is None and (st := await self._get("/concur/status")):
            r0 = st["ranks"][0]
            out.update(window=r0.get("window"), active_agents=r0.get("active_agents"), lost_work=r0.get("lost_work"))
            if out.get("kv_usage") is None:
                out["kv_usage"] = r0.get("kv_usage")
        return out


class _OpenAIChatTarget(_HttpTarget):
    """`/v1/chat/completions` through the `openai` package, the agent id in the X-SMG-Routing-Key
    header: token ids become text with the model's tokenizer (the server re-tokenizes it)."""

    async def start(self) -> None:
        await super().start()
        import openai
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(self.cfg.tokenizer)
        self.openai = openai
        self.client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0,
                                         timeout=self.cfg.request_timeout_s)
        self.words = self._words()

    def _words(self) -> List[int]:
        """Tokens that are one space-led word and tokenize back to themselves, so that a text of them
        is re-tokenized by the server into as many tokens as the trace says (a random id may be a
        stray byte: it decodes to U+FFFD, three tokens again)."""
        special = set(self.tok.all_special_ids)
        words = [i for i in range(len(self.tok)) if i not in special
                 and re.fullmatch(r" [A-Za-z]+", w := self.tok.decode([i])) and self.tok.encode(w, add_special_tokens=False) == [i]]
        if not words:
            raise ValueError(f"client 'openai': tokenizer {self.cfg.tokenizer} has no space-led word tokens")
        return words

    async def close(self) -> None:
        await self.client.close()
        await super().close()

    def _text(self, part: Any) -> str:
        if isinstance(part, str):
            return part
        return self.tok.decode([self.words[t % len(self.words)] for t in part])

    async def generate(self, agent_id: str, history: Segments, n: int) -> Reply:
        messages = [{"role": role, "content": self._text(part)} for role, part in history]
        try:
            r = await self.client.chat.completions.create(
                model=self.cfg.model, messages=messages, max_tokens=n, temperature=0,
                extra_body={"ignore_eos": True}, extra_headers={"X-SMG-Routing-Key": agent_id})
        except self.openai.APIStatusError as e:
            raise TurnFailed(f"HTTP {e.status_code} from /v1/chat/completions: {str(e)[:300]}",
                             retryable=e.status_code >= 500 or e.status_code in (408, 429)) from None
        except (self.openai.APIConnectionError, self.openai.APITimeoutError) as e:
            raise TurnFailed(f"{type(e).__name__}: {e}") from None
        u = r.usage
        details = getattr(u, "prompt_tokens_details", None)
        cached = int(getattr(details, "cached_tokens", 0) or 0)  # needs --enable-cache-report
        return Reply(r.choices[0].message.content or "", int(u.completion_tokens), int(u.prompt_tokens), cached)


class _EngineTarget(_Target):
    """An in-process `sglang.Engine`; run the driver on `engine.loop`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        cfg = getattr(engine.server_args, "_concur_config", None)
        self.has_concur = bool(cfg is not None and cfg.concur_enable)

    async def generate(self, agent_id: str, history: Segments, n: int) -> Reply:
        try:
            d = await self.engine.async_generate(
                input_ids=flat(history), routing_key=agent_id,
                sampling_params={"max_new_tokens": n, "temperature": 0, "ignore_eos": True})
        except (ValueError, RuntimeError) as e:
            raise TurnFailed(f"{type(e).__name__}: {e}", retryable=False) from None
        m = d["meta_info"]
        out = list(d["output_ids"])
        return Reply(out, len(out), int(m["prompt_tokens"]), int(m.get("cached_tokens") or 0))

    async def end_agent(self, agent_id: str) -> None:
        if self.has_concur:
            await self.engine.async_concur_end_agent(agent_id)

    async def probe(self) -> Dict[str, Any]:
        if not self.has_concur:
            return {}
        r0 = (await self.engine.async_concur_status())["ranks"][0]
        return {"kv_usage": r0.get("kv_usage"), "window": r0.get("window"), "active_agents": r0.get("active_agents")}


def _metric(text: str, name: str, mean: bool = False) -> Optional[float]:
    """Sum (or mean) of a Prometheus series over its label sets (one per rank), None when absent."""
    vals = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([-+0-9.eEinfa]+)$", text, re.M)]
    return (sum(vals) / (len(vals) if mean else 1)) if vals else None


# --- driver ------------------------------------------------------------------------------
@dataclass
class _Run:
    cfg: RunConfig
    target: _Target
    t0: float = 0.0
    turns: List[TurnRecord] = field(default_factory=list)
    agents: Dict[str, AgentRecord] = field(default_factory=dict)
    failed_attempts: int = 0
    failed_turns: int = 0
    errors: Dict[str, int] = field(default_factory=dict)
    timeline: List[Dict[str, Any]] = field(default_factory=list)
    bar: Any = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note_error(self, msg: str) -> None:
        key = msg.split(":")[0][:80]
        self.errors[key] = self.errors.get(key, 0) + 1

    async def turn(self, agent_id: str, history: Segments, n: int) -> Tuple[Reply, int]:
        delay = self.cfg.retry_backoff_s
        for attempt in range(1, self.cfg.max_retries + 2):
            try:
                return await self.target.generate(agent_id, history, n), attempt
            except TurnFailed as e:
                self.failed_attempts += 1
                self.note_error(str(e))
                if not e.retryable or attempt > self.cfg.max_retries:
                    raise
            await asyncio.sleep(delay)
            delay = min(self.cfg.retry_backoff_max_s, delay * 2)
        raise AssertionError("unreachable")

    async def agent(self, a: AgentTrace, delay: float, cap: Optional[asyncio.Semaphore]) -> None:
        await asyncio.sleep(delay)
        rec = self.agents[a.agent_id]
        if cap is not None:
            await cap.acquire()
        lo, hi = self.cfg.token_lo, self.cfg.token_hi
        try:
            rec.start_s = self.now()
            hist: Segments = [("system", token_ids("prefix/" + a.prefix_id, a.prefix_tokens, lo, hi)),
                              ("user", token_ids("task/" + a.agent_id, a.task_tokens, lo, hi))]
            prev_ctx: Optional[int] = None
            for k, t in enumerate(a.turns):
                t_start = self.now()
                try:
                    reply, attempts = await self.turn(a.agent_id, hist, t.output_tokens)
                except TurnFailed as e:
                    self.failed_turns += 1
                    rec.failed, rec.error = True, f"turn {k}: {e}"
                    if self.bar is not None:
                        self.bar.update(len(a.turns) - k)
                    return
                prompt, cached, n_out = reply.prompt_tokens, reply.cached_tokens, reply.output_tokens
                recomputed = 0 if prev_ctx is None else max(0, min(prev_ctx, prompt) - cached)
                self.turns.append(TurnRecord(a.agent_id, k, t_start, self.now(), prompt, cached, n_out, recomputed, attempts))
                prev_ctx = prompt + n_out - 1  # the last sampled token never has KV of its own
                rec.turns_done += 1
                if self.bar is not None:
                    self.bar.update(1)
                if k == len(a.turns) - 1:
                    break
                hist = hist + [("assistant", reply.segment)]
                if t.tool_latency_s > 0:
                    await asyncio.sleep(t.tool_latency_s)
                hist.append(("user", token_ids(f"obs/{a.agent_id}/{k}", t.append_tokens, lo, hi)))
        finally:
            rec.end_s = self.now()
            if cap is not None:
                cap.release()
            try:
                await self.target.end_agent(a.agent_id)
            except Exception as e:  # noqa: BLE001 - ending is best effort; the idle timeout frees the slot
                self.note_error(f"end_agent: {type(e).__name__}: {e}")

    async def sampler(self) -> None:
        dt, last = self.cfg.sample_interval_s, 0
        while True:
            await asyncio.sleep(dt)
            t = self.now()
            recent = [r for r in self.turns[last:]]
            last = len(self.turns)
            prompt = sum(r.prompt_tokens for r in recent)
            try:
                probe = await self.target.probe()
            except Exception:  # noqa: BLE001 - a dead server reads as unknown
                probe = {}
            self.timeline.append({
                "t": round(t, 3),
                "output_tokens_per_s": sum(r.output_tokens for r in recent) / dt,
                "hit_rate": (sum(r.cached_tokens for r in recent) / prompt) if prompt else None,
                "kv_usage": probe.get("kv_usage"), "window": probe.get("window"),
                "active_agents": probe.get("active_agents"), "lost_work": probe.get("lost_work"),
                "turns_done": len(self.turns),
            })

    def results(self, agents: Sequence[AgentTrace], elapsed: float) -> Dict[str, Any]:
        prompt = sum(r.prompt_tokens for r in self.turns)
        cached = sum(r.cached_tokens for r in self.turns)
        output = sum(r.output_tokens for r in self.turns)
        per_agent = {a.agent_id: dataclasses.asdict(self.agents[a.agent_id]) | {
            "completion_s": round(self.agents[a.agent_id].end_s - self.agents[a.agent_id].start_s, 3)} for a in agents}
        comp = [v["completion_s"] for v in per_agent.values() if not v["failed"]]
        return {
            "label": self.cfg.label,
            "config": dataclasses.asdict(self.cfg),
            "trace_summary": summary(agents),
            "agents": len(agents),
            "turns_planned": sum(len(a.turns) for a in agents),
            "turns_completed": len(self.turns),
            "completion_time_s": round(elapsed, 3),
            "output_tokens": output,
            "output_tokens_per_s": output / elapsed if elapsed > 0 else 0.0,
            "total_tokens_per_s": (prompt + output) / elapsed if elapsed > 0 else 0.0,
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "hit_rate": cached / prompt if prompt else 0.0,
            "recomputed_tokens": sum(r.recomputed_tokens for r in self.turns),
            "failed_attempts": self.failed_attempts,
            "failed_turns": self.failed_turns,
            "failed_agents": sum(1 for r in self.agents.values() if r.failed),
            "errors": dict(self.errors),
            "server_concur": self.target.has_concur,
            "agent_completion_s": {"median": float(np.median(comp)) if comp else None,
                                   "p90": float(np.percentile(comp, 90)) if comp else None},
            "per_agent": per_agent,
            "timeline": self.timeline,
            "turns": [dataclasses.asdict(r) for r in self.turns],
        }


async def run_trace_async(agents: Sequence[AgentTrace], cfg: RunConfig, engine: Any = None) -> Dict[str, Any]:
    """Drive every agent to completion (or failure) and return the results dict."""
    if len({a.agent_id for a in agents}) != len(agents):
        raise ValueError("duplicate agent_id in trace")
    if cfg.target == "engine":
        target: _Target = _EngineTarget(engine)
    else:
        target = _OpenAIChatTarget(cfg) if cfg.client == "openai" else _HttpTarget(cfg)
    run = _Run(cfg, target, agents={a.agent_id: AgentRecord(a.agent_id) for a in agents})
    await target.start()
    rng = random.Random(cfg.arrival_seed)
    delays, t = [], 0.0
    for _ in agents:
        delays.append(t)
        if cfg.arrival_rate:
            t += rng.expovariate(cfg.arrival_rate)
    caps = [c for c in (cfg.agent_cap, cfg.client_cap) if c]
    cap = asyncio.Semaphore(min(caps)) if caps else None
    if cfg.progress:
        from tqdm.auto import tqdm

        run.bar = tqdm(total=sum(len(a.turns) for a in agents), desc=cfg.label, unit="turn", smoothing=0.1)
    run.t0 = time.monotonic()
    sampler = asyncio.create_task(run.sampler())
    try:
        await asyncio.gather(*(run.agent(a, d, cap) for a, d in zip(agents, delays)))
        elapsed = run.now()
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        if run.bar is not None:
            run.bar.close()
        await target.close()
    return run.results(agents, elapsed)


def run_trace(agents: Sequence[AgentTrace], cfg: RunConfig, engine: Any = None) -> Dict[str, Any]:
    """Blocking wrapper; with an Engine the driver runs on the engine's own event loop."""
    if cfg.target == "engine":
        if engine is None:
            raise ValueError("target 'engine' needs engine=sglang.Engine(...)")
        return engine.loop.run_until_complete(run_trace_async(agents, cfg, engine))
    return asyncio.run(run_trace_async(agents, cfg))


def brief(results: Dict[str, Any]) -> Dict[str, Any]:
    """The headline numbers of a results dict."""
    keys = ("label", "completion_time_s", "output_tokens_per_s", "total_tokens_per_s", "hit_rate",
            "recomputed_tokens", "failed_turns", "failed_agents", "turns_completed", "turns_planned")
    return {k: results[k] for k in keys}


def write_results(results: Dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1)

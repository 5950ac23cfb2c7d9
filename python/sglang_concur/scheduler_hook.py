"""The controller inside SGLang's scheduler process: glue between `Scheduler` and the pure parts.

Hook points (all installed per instance, only when --concur-enable):
- `Scheduler.get_new_batch_prefill`: the gate.  Requests of agents that are not active stay in
  `waiting_queue` (so SGLang's queue metrics, limits and aborts still see them) but are hidden from
  this one prefill pass.  Running requests are never touched.
- `tree_cache.on_release`, `tree_cache.update_eviction_metrics`: the recompute ledger;
- `tree_cache.checkpoint` and the KV allocator's `free`/`clear`: the device owner map
  (`owner_map.SlotOwnerMap`), read once per control step for per-agent KV footprints;
- the request dispatcher: `ConcurControlReq` (status, end agent).
Every decision reads only state that is identical on every TP rank (waiting queue, running batch,
KV pool counts) and a clock broadcast from TP rank 0.
"""

from __future__ import annotations

import logging
import time
from itertools import compress
from operator import attrgetter, not_
from typing import Any, Callable, Dict, List, Optional, Set

from sglang_concur.config import ConcurConfig
from sglang_concur.controller import ConcurController
from sglang_concur.ipc import ConcurControlReq, ConcurControlReqOutput
from sglang_concur.owner_map import SlotOwnerMap

logger = logging.getLogger("sglang_concur")
_ROUTING_KEY = attrgetter("routing_key")
_NO_AGENT = frozenset([None])


class SchedulerGate:
    """Attached to one `Scheduler`; named after the hook it wraps."""

    def __init__(self, scheduler: Any, config: ConcurConfig) -> None:
        self.scheduler = scheduler
        self.clock = _make_clock(scheduler)
        self.controller = ConcurController.create(config, self.clock(), scheduler.max_total_num_tokens)
        self.metrics = _make_metrics(scheduler)
        self.inflight: Dict[str, int] = {}  # requests in flight per agent: +1 at admission, -1 at release
        self._epoch = 0  # bumped by every event that can change an admission decision
        self._allowed: Set[Optional[str]] = set(_NO_AGENT)  # active agents, and None (requests without an agent)
        self._memo: Optional[tuple] = None  # (queue list, its length, its tail, held at its head, epoch) after a step
        self._original_prefill = scheduler.get_new_batch_prefill
        scheduler.get_new_batch_prefill = self.get_new_batch_prefill
        tree = scheduler.tree_cache
        self._original_on_release, tree.on_release = tree.on_release, self.on_release
        self._original_eviction, tree.update_eviction_metrics = tree.update_eviction_metrics, self.update_eviction_metrics
        self.owners = SlotOwnerMap.for_scheduler(scheduler)
        if self.owners is not None:
            self._original_checkpoint, tree.checkpoint = tree.checkpoint, self.checkpoint
        from sglang.utils import TypeBasedDispatcher

        scheduler._request_dispatcher += TypeBasedDispatcher([(ConcurControlReq, self.handle_control)])
        logger.info("concur enabled, %s", ", ".join(f"{k}={v}" for k, v in config.as_dict().items()))

    # --- hook: Scheduler.get_new_batch_prefill -------------------------------------------
    def get_new_batch_prefill(self, running_batch):
        """Cost per step: when the queue is the one left by the last step (or only grew by
        requests of active agents) and no event happened since, the last split is reused: O(new
        requests).  Otherwise the admission decision reruns (Python, O(queued agents)) and the
        queue is split with C-level passes (routing keys, set tests)."""
        s, ctl = self.scheduler, self.controller
        now = self.clock()
        queue = s.waiting_queue
        if now >= ctl.next_control:
            self._control_step(now, self._busy(running_batch), queue)
        held: List[Any] = []
        eligible = queue
        if queue:
            n_held = self._unchanged_split(queue)
            if n_held is not None:
                if n_held:
                    held, eligible = queue[:n_held], queue[n_held:]
            else:
                keys = list(map(_ROUTING_KEY, queue))
                wanting = dict.fromkeys(keys)
                wanting.pop(None, None)
                if wanting:
                    self._decide(queue, wanting, now)
                    allowed = self._allowed
                    if not allowed.issuperset(wanting):
                        mask = list(map(allowed.__contains__, keys))
                        eligible = list(compress(queue, mask))
                        held = list(compress(queue, map(not_, mask)))
        ctl.held = held  # counted at the control step, not here
        if not held:
            plan = self._original_prefill(running_batch)
        else:  # hide the held requests from this one pass; they keep their place ahead of later arrivals
            s.waiting_queue = eligible
            try:
                plan = self._original_prefill(running_batch)
            finally:
                s.waiting_queue = held + s.waiting_queue
        q = s.waiting_queue
        self._memo = (q, len(q), q[-1] if q else None, len(held), self._epoch)
        batch = plan.batch_to_run
        stats = getattr(batch, "prefill_stats", None) if batch is not None else None
        if stats is not None:
            ctl.interval.hit_tokens += stats.log_hit_tokens
            ctl.interval.input_tokens += stats.log_input_tokens
            if self.owners is not None:
                self.owners.admitted(batch.reqs)
            inflight = self.inflight
            for r in batch.reqs:
                key = r.routing_key
                if key is None or getattr(r, "_concur_inflight", False):
                    continue
                r._concur_inflight = True
                inflight[key] = inflight.get(key, 0) + 1
                self._epoch += 1
                if not getattr(r, "_concur_admitted", False):  # retracted requests come back: count once
                    r._concur_admitted = True
                    ctl.turn_admitted(key, len(r.origin_input_ids), r.prefix_len)
        elif held and batch is None and running_batch.is_empty():
            self._nap()
        return plan

    def _unchanged_split(self, queue: List[Any]) -> Optional[int]:
        """Held requests at the head of `queue` when the last split still holds, else None.  SGLang
        appends arrivals at the end and removes requests anywhere (which changes the length or the
        tail), or replaces the list; our own split puts held requests first."""
        memo = self._memo
        if memo is None or queue is not memo[0] or self._epoch != memo[4]:
            return None
        n, tail = memo[1], memo[2]
        if len(queue) < n or (n and queue[n - 1] is not tail):
            return None
        if len(queue) > n:  # arrivals: fine when each is of an active agent (or none) and none may be paused
            if self.controller.may_pause():
                return None
            allowed = self._allowed
            for r in queue[n:]:
                if r.routing_key is not None and r.routing_key not in allowed:
                    return None
        return memo[3]

    def _decide(self, queue: List[Any], wanting: Dict[str, None], now: float) -> None:
        """The admission decision for the queued agents `wanting` (in queue order)."""
        ctl = self.controller
        if ctl.budgets_tokens:  # price new agents by their queued prompt
            pending = ctl.pending_prompt
            for r in queue:
                if r.routing_key is not None and r.routing_key not in pending:
                    pending[r.routing_key] = len(r.origin_input_ids)
        self._allowed = ctl.admit(wanting, self.inflight, now) | _NO_AGENT

    def _busy(self, running_batch) -> Set[str]:
        """Exact agents in flight, from the running batch; also resyncs the event-kept counts."""
        reqs = list(running_batch.reqs)
        if self.scheduler.chunked_req is not None:
            reqs.append(self.scheduler.chunked_req)
        inflight: Dict[str, int] = {}
        for r in reqs:
            if r.routing_key is not None:
                r._concur_inflight = True
                inflight[r.routing_key] = inflight.get(r.routing_key, 0) + 1
        self.inflight = inflight
        return set(inflight)

    # --- hooks: tree_cache.on_release / tree_cache.update_eviction_metrics (this instance) -----
    def on_release(self, req, *, checkpointed: bool) -> None:
        if getattr(req, "_concur_inflight", False):
            req._concur_inflight = False
            self._epoch += 1
            n = self.inflight.get(req.routing_key, 0) - 1
            if n > 0:
                self.inflight[req.routing_key] = n
            else:
                self.inflight.pop(req.routing_key, None)
        if checkpointed and req.routing_key is not None:
            self.controller.ledger.turn_finished(req.routing_key, req.owned_kv_len())
        return self._original_on_release(req, checkpointed=checkpointed)

    def checkpoint(self, req, *, up_to: int, **kwargs):
        self.owners.checkpointed(req, up_to)  # before the insert frees the duplicates
        return self._original_checkpoint(req, up_to=up_to, **kwargs)

    def update_eviction_metrics(self, num_evicted: int, start_time: float) -> None:
        self.controller.ledger.evicted(num_evicted)
        return self._original_eviction(num_evicted, start_time)

    def _control_step(self, now: float, busy: Set[str], queue: List[Any]) -> None:
        s, ctl = self.scheduler, self.controller
        self._epoch += 1
        usage = s.pool_stats_observer.get_pool_stats().get_max_pool_usage()
        queued = set(map(_ROUTING_KEY, queue))
        queued.discard(None)
        if self.owners is not None:
            self.owners.retain(ctl.table.agents.keys())
            measured = self.owners.read()
            if measured is not None:
                ctl.resident, ctl.resident_shared = measured
        changed = ctl.control_step(now, usage, busy, queued)
        if changed is not None:
            c, sig = ctl.table.counts(), ctl.last_signals
            hit = "none" if sig.hit_rate is None else f"{sig.hit_rate:.3f}"
            logger.info(
                f"concur window change, old={changed[0]}, new={changed[1]}, policy={ctl.policy.name}, "
                f"kv_usage={sig.kv_usage:.3f}, hit_rate={hit}, active={c.active}, paused={c.paused}, "
                f"waiting={c.waiting}"
            )
        if self.metrics is not None:
            self.metrics.observe(ctl, changed)

    def _nap(self) -> None:
        """Everything queued is held and nothing runs: wait briefly for input instead of spinning."""
        sleeper = getattr(self.scheduler, "idle_sleeper", None)
        if sleeper is not None:
            sleeper.poller.poll(5)
        else:
            time.sleep(0.002)

    # --- hook: request dispatcher --------------------------------------------------------
    def handle_control(self, req: ConcurControlReq) -> ConcurControlReqOutput:
        ctl = self.controller
        if req.op == "end":
            ended = ctl.end(req.agent_id)
            self._epoch += 1
            result = {"agent_id": req.agent_id, "ended": ended}
        elif req.op == "status":
            result = ctl.status()
        else:
            result = {"error": f"unknown op {req.op!r}"}
        return ConcurControlReqOutput(result=result)


def _make_clock(scheduler: Any) -> Callable[[], float]:
    """Monotonic seconds, identical on every TP rank (rank 0's clock, broadcast) when TP > 1."""
    group = getattr(scheduler, "tp_cpu_group", None)
    tp_size = getattr(scheduler, "tp_size", 1)
    if group is None or tp_size <= 1:
        return time.monotonic
    import torch
    import torch.distributed as dist

    buf = torch.zeros(1, dtype=torch.float64)
    src = dist.get_global_rank(group, 0)

    def clock() -> float:
        buf[0] = time.monotonic()
        dist.broadcast(buf, src=src, group=group)
        return float(buf[0])

    return clock


class _Metrics:
    def __init__(self, labels: Dict[str, str]) -> None:
        from prometheus_client import Counter, Gauge

        names = list(labels)
        self.labels = labels

        def gauge(name: str, doc: str):
            return Gauge(name, doc, labelnames=names, multiprocess_mode="mostrecent")

        self.window = gauge("sglang:concur_window", "CONCUR agent window (agents that may be active).")
        self.active = gauge("sglang:concur_active_agents", "Agents holding a window slot.")
        self.paused = gauge("sglang:concur_paused_agents", "Agents paused at a turn boundary.")
        self.waiting = gauge("sglang:concur_waiting_agents", "New agents waiting for a slot.")
        self.held = gauge("sglang:concur_held_requests", "Queued requests held back by the gate.")
        self.kv_usage = gauge("sglang:concur_kv_usage", "KV usage of running requests at the last control step.")
        self.hit_rate = gauge("sglang:concur_hit_rate", "Prefix hit rate over the last control interval.")
        self.changes = Counter("sglang:concur_window_changes", "Window changes.", labelnames=names + ["direction"])
        self.evicted = Counter("sglang:concur_evicted_tokens", "Tokens evicted from the radix cache.", labelnames=names)
        self.recomputed = Counter("sglang:concur_recomputed_tokens",
                                  "History tokens of returning agent turns that had to be prefilled again.", labelnames=names)
        self.kv_tokens = Gauge("sglang:concur_kv_tokens", "KV slots held, measured on the device: by active agents, "
                               "by the others (paused, waiting, idle), shared by several agents (counted once).",
                               labelnames=names + ["kind"], multiprocess_mode="mostrecent")
        self._reported = (0, 0)

    def observe(self, ctl: ConcurController, changed: Optional[tuple]) -> None:
        c, lab = ctl.table.counts(), self.labels
        self.window.labels(**lab).set(ctl.window_size())
        self.active.labels(**lab).set(c.active)
        self.paused.labels(**lab).set(c.paused)
        self.waiting.labels(**lab).set(c.waiting)
        self.held.labels(**lab).set(len(ctl.held))
        sig = ctl.last_signals
        self.kv_usage.labels(**lab).set(sig.kv_usage)
        if sig.hit_rate is not None:
            self.hit_rate.labels(**lab).set(sig.hit_rate)
        for kind, n in ctl.kv_tokens().items():
            self.kv_tokens.labels(**lab, kind=kind).set(n)
        ev, rc = ctl.ledger.evicted_tokens, ctl.ledger.recomputed_tokens
        self.evicted.labels(**lab).inc(ev - self._reported[0])
        self.recomputed.labels(**lab).inc(rc - self._reported[1])
        self._reported = (ev, rc)
        if changed is not None:
            self.changes.labels(**lab, direction="up" if changed[1] > changed[0] else "down").inc()


def _make_metrics(scheduler: Any) -> Optional[_Metrics]:
    collector = getattr(scheduler, "metrics_collector", None)
    if collector is None:
        return None
    return _Metrics(dict(getattr(collector, "labels", {}) or {}))


def attach(scheduler: Any) -> None:
    """After `Scheduler.__init__`: attach the gate when the server was started with --concur-enable."""
    config = getattr(scheduler.server_args, "_concur_config", None)
    if config is not None and config.concur_enable:
        scheduler.concur_gate = SchedulerGate(scheduler, config)

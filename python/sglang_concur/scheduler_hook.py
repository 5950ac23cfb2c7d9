"""The controller inside SGLang's scheduler process: glue between `Scheduler` and the pure parts.

Hook points (all installed per instance, only when the controller is on):
- `Scheduler.get_new_batch_prefill`: the gate.  Requests of agents that are not active stay in
  `waiting_queue` (so SGLang's queue metrics and aborts still see them) but are hidden from this
  one prefill pass.  Running requests are never touched.  Requests whose grammar became ready join
  the queue here first, so they pass the gate too.
- `Scheduler._add_request_to_queue` / `Scheduler._abort_on_queued_limit`: a retracted request
  keeps its agent in flight and is never dropped for a full queue; held requests do not count
  against `--max-queued-requests` for an admitted agent's turn.
- `Scheduler._poll_timeout_aborts`: the clock (`ipc.ConcurTick`) rides the polling rank's
  broadcast, so every TP rank and pipeline stage sees the same time at the same step.
- `tree_cache.on_release`, `tree_cache.update_eviction_metrics`: turn ends and the recompute ledger;
- `tree_cache.checkpoint` and the KV allocator's `free`/`clear`: the device owner map
  (`owner_map.SlotOwnerMap`), read once per control step for per-agent KV footprints;
- the request dispatcher: `ConcurControlReq` (status, end agent) and `ConcurTick`.
Every decision reads only state that is identical on every TP rank at the same step: the waiting
queue and running batch, KV pool counts, the broadcast clock, and device reads consumed at the
control step after the one that launched them.
"""

from __future__ import annotations

import logging
import time
from itertools import compress, filterfalse
from operator import attrgetter, not_
from typing import Any, Dict, List, Optional, Tuple

from sglang_concur.config import ConcurConfig
from sglang_concur.controller import ConcurController
from sglang_concur.ipc import ConcurControlReq, ConcurControlReqOutput, ConcurTick
from sglang_concur.owner_map import SlotOwnerMap

logger = logging.getLogger("sglang_concur")
_ROUTING_KEY = attrgetter("routing_key")
_NO_AGENT = frozenset([None])
_EMPTY: List[Any] = []
TICK_S = 0.005  # clock resolution: the polling rank sends the time at most this often


class SchedulerGate:
    """Attached to one `Scheduler`; its methods are named after the hooks they replace."""

    def __init__(self, scheduler: Any, config: ConcurConfig) -> None:
        s = self.scheduler = scheduler
        self.now = 0.0  # the broadcast clock (ConcurTick); 0 until the first tick
        self._last_tick = float("-inf")
        self.controller = ConcurController.create(config, self.now, s.max_total_num_tokens)
        self.metrics = _make_metrics(s)
        self.inflight: Dict[str, int] = {}  # requests in flight per agent: +1 at admission, -1 at release
        self._epoch = 0  # bumped by every event that can change an admission decision
        self._allowed = set(_NO_AGENT)  # active agents, and None (requests without an agent)
        self._held_agents: Any = set()  # agents whose requests the last decision held
        self._memo: Optional[tuple] = None  # (queue list, its length, its tail, held at its head, epoch) after a step
        self._idle_held = False  # the last pass left the engine idle while requests were held
        self._last_pass = 0.0
        self._idle = False  # the last pass left the engine with nothing to run
        self._original_prefill, s.get_new_batch_prefill = s.get_new_batch_prefill, self.get_new_batch_prefill
        self._original_add, s._add_request_to_queue = s._add_request_to_queue, self.add_request_to_queue
        self._original_queue_limit, s._abort_on_queued_limit = s._abort_on_queued_limit, self.abort_on_queued_limit
        self._original_poll, s._poll_timeout_aborts = s._poll_timeout_aborts, self.poll_timeout_aborts
        tree = s.tree_cache
        self._original_on_release, tree.on_release = tree.on_release, self.on_release
        self._original_eviction, tree.update_eviction_metrics = tree.update_eviction_metrics, self.update_eviction_metrics
        self.owners = SlotOwnerMap.for_scheduler(s)
        if self.owners is not None:
            self._original_checkpoint, tree.checkpoint = tree.checkpoint, self.checkpoint
        from sglang.utils import TypeBasedDispatcher

        s._request_dispatcher += TypeBasedDispatcher([(ConcurControlReq, self.handle_control), (ConcurTick, self.tick)])
        logger.info("concur enabled, %s", ", ".join(f"{k}={v}" for k, v in config.as_dict().items()))

    # --- hook: Scheduler._poll_timeout_aborts (the polling rank only) ----------------------
    def poll_timeout_aborts(self) -> List[Any]:
        out = self._original_poll()
        t = time.monotonic()
        if t - self._last_tick >= TICK_S:
            self._last_tick = t
            out.append(ConcurTick(now=t))
        return out

    def tick(self, req: ConcurTick) -> None:
        if not self.now:  # the first tick: the controller was made before the clock ran
            self.controller.start_clock(req.now)
        self.now = req.now

    # --- hook: Scheduler.get_new_batch_prefill -------------------------------------------
    def get_new_batch_prefill(self, running_batch):
        """Cost per step: when the queue is the one left by the last step (or only grew by
        requests of active agents) and no event happened since, the last split is reused: O(new
        requests).  Otherwise the admission decision reruns (Python, O(queued agents)) and the
        queue is split with C-level passes (routing keys, set tests)."""
        s, ctl, now = self.scheduler, self.controller, self.now
        if self._idle:
            ctl.interval.idle_s += now - self._last_pass
        if self._idle_held:
            ctl.interval.lost += now - self._last_pass
        self._last_pass = now
        grammar = s.grammar_manager
        drained = grammar.has_waiting_grammars()
        if drained:  # ready grammar requests join the queue before the split, so they pass the gate
            for req in grammar.get_ready_grammar_requests():
                s._add_request_to_queue(req)
        queue = s.waiting_queue
        if now >= ctl.next_control:
            self._control_step(now, running_batch, queue)
        held, eligible = self._split(queue, now) if queue else (_EMPTY, queue)
        ctl.held = held  # counted at the control step, not here
        if drained:  # SGLang's own pass must not poll (and all-gather) the grammar queue a second time
            grammar.has_waiting_grammars = _nothing
        try:
            if not held:
                plan = self._original_prefill(running_batch)
            else:  # hide the held requests from this one pass; they keep their place ahead of later arrivals
                s.waiting_queue = eligible
                try:
                    plan = self._original_prefill(running_batch)
                finally:
                    s.waiting_queue = held + s.waiting_queue
        finally:
            if drained:
                del grammar.has_waiting_grammars
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
                if not getattr(r, "_concur_admitted", False):  # retracted requests come back: count once
                    r._concur_admitted = True
                    ctl.turn_admitted(key, len(r.origin_input_ids), r.prefix_len, now)
        if ctl.may_pause():  # turn boundaries moved: the next pass decides again
            self._epoch += 1
        q = s.waiting_queue
        self._memo = (q, len(q), q[-1] if q else None, len(held), self._epoch)
        self._idle = batch is None and plan.running_batch.is_empty()
        self._idle_held = bool(held) and self._idle
        if self._idle_held:
            self._nap()
        return plan

    def _split(self, queue: List[Any], now: float) -> Tuple[List[Any], List[Any]]:
        """(held, eligible) requests of `queue`.  Incremental: when the queue is the list the last
        pass left (held requests at its head), possibly with arrivals appended, and no decision
        changed since, only the arrivals are looked at; otherwise the admission decision reruns."""
        memo = self._memo
        if memo is not None and queue is memo[0] and self._epoch == memo[4]:
            n, tail, n_held = memo[1], memo[2], memo[3]
            if len(queue) >= n and (not n or queue[n - 1] is tail):
                if len(queue) == n:
                    return (queue[:n_held], queue[n_held:]) if n_held else (_EMPTY, queue)
                arrivals = self._classify(queue[n:])
                if arrivals is not None:
                    held_new, eligible_new = arrivals
                    if not n_held and not held_new:
                        return _EMPTY, queue
                    return queue[:n_held] + held_new, queue[n_held:n] + eligible_new
        return self._decide(queue, now)

    def _classify(self, arrivals: List[Any]) -> Optional[Tuple[List[Any], List[Any]]]:
        """Arrivals under an unchanged decision: requests of active agents (or none) run, those of
        agents already held wait; a new claim (or a possible pause) needs a decision: None."""
        ctl = self.controller
        if ctl.may_pause():
            return None
        allowed, held_agents = self._allowed, self._held_agents
        held: List[Any] = []
        eligible: List[Any] = []
        for r in arrivals:
            key = r.routing_key
            if key in allowed:
                eligible.append(r)
            elif key in held_agents:
                held.append(r)
            elif held_agents and ctl.must_wait(key, self.now):  # a new agent behind held ones, too large to fit
                held_agents.add(key)
                held.append(r)
            else:
                return None
        return held, eligible

    def _decide(self, queue: List[Any], now: float) -> Tuple[List[Any], List[Any]]:
        """The admission decision over the queued agents (in queue order): only claims (agents not
        active) are looked at, unless an active agent may be paused at its turn boundary."""
        ctl = self.controller
        keys = list(map(_ROUTING_KEY, queue))
        wanting = dict.fromkeys(keys)
        wanting.pop(None, None)
        if not wanting:
            self._allowed, self._held_agents = set(_NO_AGENT), set()
            return _EMPTY, queue
        active = ctl.table.active
        deciding = wanting if ctl.may_pause() else list(filterfalse(active.__contains__, wanting))
        if deciding:
            ctl.admit(deciding, self.inflight, now)
        allowed = self._allowed = set(active)
        allowed.update(ctl.table.ending)  # what an ending agent still has queued (a retracted request) runs
        allowed.add(None)
        if allowed.issuperset(wanting):
            self._held_agents = set()
            return _EMPTY, queue
        self._held_agents = wanting.keys() - allowed
        mask = list(map(allowed.__contains__, keys))
        return list(compress(queue, map(not_, mask))), list(compress(queue, mask))

    def _busy(self, running_batch, queue: List[Any]) -> Dict[str, int]:
        """Exact requests in flight per agent, in running order: the running batch, the chunked
        request, and retracted requests back in the queue.  Resyncs the event-kept counts; an
        agent that dropped out (its request was aborted) has ended its turn."""
        reqs = list(running_batch.reqs)
        if self.scheduler.chunked_req is not None:
            reqs.append(self.scheduler.chunked_req)
        reqs += [r for r in queue if getattr(r, "_concur_inflight", False)]
        inflight: Dict[str, int] = {}
        for r in reqs:
            if r.routing_key is not None:
                r._concur_inflight = True
                inflight[r.routing_key] = inflight.get(r.routing_key, 0) + 1
        for key in self.inflight:
            if key not in inflight and self.controller.turn_ended(key, self.now):
                self._epoch += 1
        self.inflight = inflight
        return inflight

    # --- hooks: Scheduler._add_request_to_queue / _abort_on_queued_limit ------------------
    def add_request_to_queue(self, req, is_retracted: bool = False):
        key = req.routing_key
        if is_retracted and getattr(req, "_concur_inflight", False):
            req._concur_retracted = True  # still in flight for its agent: not a turn boundary
        elif key is not None and key not in self.inflight:
            ctl = self.controller
            ctl.request_arrived(key, len(req.origin_input_ids), self.now)
            if ctl.may_pause():
                self._epoch += 1
        return self._original_add(req, is_retracted=is_retracted)

    def abort_on_queued_limit(self, req) -> bool:
        s = self.scheduler
        limit = s.max_queued_requests
        if limit is not None and len(s.waiting_queue) + 1 > limit:
            if getattr(req, "_concur_retracted", False):
                return False  # never drop a request that already ran
            allowed = self._allowed
            if req.routing_key in allowed:  # an admitted agent's turn (or no agent): held ones do not count
                held = sum(1 for r in s.waiting_queue if r.routing_key not in allowed)
                if len(s.waiting_queue) - held + 1 <= limit:
                    return False
        return self._original_queue_limit(req)

    # --- hooks: tree_cache.on_release / tree_cache.update_eviction_metrics (this instance) -----
    def on_release(self, req, *, checkpointed: bool) -> None:
        key = req.routing_key
        if checkpointed and key is not None:
            self.controller.ledger.turn_finished(key, req.owned_kv_len())
        if getattr(req, "_concur_inflight", False) and req.finished():  # (a retracted request is not finished)
            req._concur_inflight = False
            n = self.inflight.get(key, 0) - 1
            if n > 0:
                self.inflight[key] = n
            else:
                self.inflight.pop(key, None)
                if self.controller.turn_ended(key, self.now):  # an ending agent left: decide again
                    self._epoch += 1
        return self._original_on_release(req, checkpointed=checkpointed)

    def checkpoint(self, req, *, up_to: int, **kwargs):
        self.owners.checkpointed(req, up_to)  # before the insert frees the duplicates
        return self._original_checkpoint(req, up_to=up_to, **kwargs)

    def update_eviction_metrics(self, num_evicted: int, start_time: float) -> None:
        self.controller.ledger.evicted(num_evicted)
        return self._original_eviction(num_evicted, start_time)

    def _control_step(self, now: float, running_batch, queue: List[Any]) -> None:
        s, ctl = self.scheduler, self.controller
        self._epoch += 1
        usage = s.pool_stats_observer.get_pool_stats().get_max_pool_usage()
        busy = self._busy(running_batch, queue)
        queued = dict.fromkeys(map(_ROUTING_KEY, queue))
        queued.pop(None, None)
        if self.owners is not None:
            self.owners.retain(ctl.table.agents)
            measured = self.owners.read()
            if measured is not None:
                ctl.resident, ctl.resident_shared = measured
        changed = ctl.control_step(now, usage, busy, queued)
        if changed is not None:
            c, sig = ctl.table.counts(), ctl.last_signals
            hit = "none" if sig.hit_rate is None else f"{sig.hit_rate:.3f}"
            logger.info(
                f"concur window change, old={changed[0]}, new={changed[1]}, policy={ctl.policy.name}, "
                f"kv_usage={sig.kv_usage:.3f}, hit_rate={hit}, lost_work={sig.lost_work:.3f}, "
                f"drain_s={sig.drain:.1f}, work_s={sig.work:.1f}, active={c.active}, "
                f"paused={c.paused}, waiting={c.waiting}, digest={ctl.digest():08x}"
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
            ended = ctl.end(req.agent_id, self.inflight.get(req.agent_id, 0))
            self._epoch += 1
            if self.metrics is not None and ctl.last_signals is not None:  # an idle server steps no control
                self.metrics.observe(ctl, None)
            result = {"agent_id": req.agent_id, "ended": ended}
        elif req.op == "status":
            result = ctl.status()
            result["decision_digests"] = self._gather_digests(result["decision_digest"])
            result["memory"]["inflight_agents"] = len(self.inflight)
            if self.owners is not None:
                result["memory"]["owner_map_agents"] = len(self.owners.index)
        else:
            result = {"error": f"unknown op {req.op!r}"}
        return ConcurControlReqOutput(result=result)

    def _gather_digests(self, mine: str) -> List[str]:
        """Every TP rank's decision digest at this same step (all ranks handle this request together)."""
        s = self.scheduler
        if getattr(s, "tp_size", 1) <= 1:
            return [mine]
        import torch.distributed as dist

        out: List[Any] = [None] * dist.get_world_size(group=s.tp_cpu_group)
        dist.all_gather_object(out, mine, group=s.tp_cpu_group)
        return out


def _nothing() -> bool:
    return False


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
        self.lost_work = gauge("sglang:concur_lost_work", "Share of the last control interval the engine idled "
                                                          "while the gate held requests.")
        self.drain = gauge("sglang:concur_drain_seconds", "native: seconds the gate needs to let every held agent "
                                                          "live at the present concurrency.")
        self.work = gauge("sglang:concur_work_seconds", "native: engine seconds the known agents' remaining turns need.")
        self.holds = Counter("sglang:concur_held_agents", "Agents held back by the gate (waiting or paused), "
                             "once per wait.", labelnames=names)
        self.changes = Counter("sglang:concur_window_changes", "Window changes.", labelnames=names + ["direction"])
        self.evicted = Counter("sglang:concur_evicted_tokens", "Tokens evicted from the radix cache.", labelnames=names)
        self.recomputed = Counter("sglang:concur_recomputed_tokens",
                                  "History tokens of returning agent turns that had to be prefilled again.", labelnames=names)
        self.kv_tokens = Gauge("sglang:concur_kv_tokens", "KV slots held, measured on the device: by active agents, "
                               "by the others (paused, waiting, idle), shared by several agents (counted once).",
                               labelnames=names + ["kind"], multiprocess_mode="mostrecent")
        self._reported = (0, 0, 0)

    def observe(self, ctl: ConcurController, changed: Optional[tuple]) -> None:
        c, lab = ctl.table.counts(), self.labels
        self.window.labels(**lab).set(ctl.window_size())
        self.active.labels(**lab).set(c.active)
        self.paused.labels(**lab).set(c.paused)
        self.waiting.labels(**lab).set(c.waiting)
        self.held.labels(**lab).set(len(ctl.held))
        sig = ctl.last_signals
        self.kv_usage.labels(**lab).set(sig.kv_usage)
        self.lost_work.labels(**lab).set(sig.lost_work)
        self.drain.labels(**lab).set(sig.drain)
        self.work.labels(**lab).set(sig.work)
        if sig.hit_rate is not None:
            self.hit_rate.labels(**lab).set(sig.hit_rate)
        for kind, n in ctl.kv_tokens().items():
            self.kv_tokens.labels(**lab, kind=kind).set(n)
        ev, rc, ho = ctl.ledger.evicted_tokens, ctl.ledger.recomputed_tokens, ctl.table.holds
        self.evicted.labels(**lab).inc(ev - self._reported[0])
        self.recomputed.labels(**lab).inc(rc - self._reported[1])
        self.holds.labels(**lab).inc(ho - self._reported[2])
        self._reported = (ev, rc, ho)
        if changed is not None:
            self.changes.labels(**lab, direction="up" if changed[1] > changed[0] else "down").inc()


def _make_metrics(scheduler: Any) -> Optional[_Metrics]:
    collector = getattr(scheduler, "metrics_collector", None)
    if collector is None:
        return None
    return _Metrics(dict(getattr(collector, "labels", {}) or {}))


def attach(scheduler: Any) -> None:
    """After `Scheduler.__init__`: attach the gate when the controller is on (the configuration
    resolved in the launching process rides on ServerArgs; else this process's environment)."""
    from sglang_concur.server_hook import config_of

    config = config_of(scheduler.server_args)
    if config.concur_enable:
        scheduler.concur_gate = SchedulerGate(scheduler, config)

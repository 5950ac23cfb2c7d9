"""The controller's interval signals and window bookkeeping (pure)."""

from sglang_concur.config import ConcurConfig
from sglang_concur.controller import ConcurController, IntervalStats, Sample


def test_hit_rate_is_hits_over_all_prompt_tokens_like_sglang():
    assert IntervalStats(hit_tokens=300, input_tokens=100).hit_rate() == 0.75
    assert IntervalStats(hit_tokens=0, input_tokens=0).hit_rate() is None
    assert IntervalStats(hit_tokens=50, input_tokens=0).hit_rate() == 1.0


def test_aimd_control_step_backs_off_on_thrash_and_reports_the_change():
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="aimd", concur_initial_window=8), now=0.0, capacity=1000)
    c.interval.hit_tokens, c.interval.input_tokens = 10, 990  # hit rate 0.01
    assert c.control_step(1.0, kv_usage=0.9, busy=set()) == (8, 4)
    assert c.last_signals.hit_rate == 0.01 and c.window_changes == {"up": 0, "down": 1}
    c.interval.hit_tokens, c.interval.input_tokens = 900, 100  # healthy: hold
    assert c.control_step(2.0, kv_usage=0.9, busy=set()) is None and c.window == 4


def test_native_recompute_ratio_from_the_ledger_interval():
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=10_000)
    assert c.window_size() == 2_500 and c.status()["window_unit"] == "tokens"  # a slow start
    c.window = 5_000
    led = c.ledger
    led.turn_admitted("a", 100, 0)
    led.turn_finished("a", 150)
    led.turn_admitted("a", 200, 0)  # 150 of history recomputed out of a 200-token returning prompt
    assert c.control_step(1.0, kv_usage=0.5, busy={"a": 1}) == (5_000, 3_500)
    assert c.last_signals.recompute_ratio == 0.75
    assert c.control_step(2.0, kv_usage=0.5, busy={"a": 1}) is None  # no returning turn in this interval
    assert c.last_signals.recompute_ratio is None and c.last_signals.settling
    led.turn_finished("a", 250)
    led.turn_admitted("a", 300, 0)  # a came back once since the cut: settled, and still recomputing
    assert c.control_step(3.0, kv_usage=0.5, busy={"a": 1}) == (3_500, 2_500)


def test_signals_are_read_over_one_turn_cycle():
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=10_000)
    # per interval: recomputed, returning prompt tokens, lost s, s, idle s, turns admitted
    c.recent.extend([Sample(900, 1000, 1.0, 1.0, 1.0, 0), Sample(100, 1000, 0.5, 1.0, 0.5, 3), Sample(0, 0, 0.0, 1.0, 0.0, 2)])
    h = c.horizon(2.0)  # the last two intervals
    assert (h.recompute_ratio(), h.lost_work(), h.busy_per_turn()) == (0.1, 0.25, 1.5 / 5)
    h = c.horizon(float("inf"))  # no cycle measured: the last interval
    assert (h.recompute_ratio(), h.lost_work(), h.busy_per_turn()) == (None, 0.0, 0.5)



def test_recompute_of_a_resumed_agent_is_not_congestion():
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=10_000)
    c.table.update(5_000, ["a", "b"], {}, 0.0, cost=lambda _: 1000.0)
    for x in ("a", "b"):
        c.turn_admitted(x, 100, 0, 0.0)
        c.ledger.turn_finished(x, 150)
    c.table.update(1_500, ["a", "b"], {}, 0.5, cost=lambda _: 1000.0)  # budget fell: b is paused at its boundary
    assert c.table.agents["b"].state.value == "paused" and c.table.agents["a"].state.value == "active"
    c.table.update(5_000, ["b"], {"a": 1}, 0.6, cost=lambda _: 1000.0)  # and resumed
    c.turn_admitted("b", 200, 0, 0.7)  # its history was evicted while paused: 150 recomputed
    assert c.ledger.recomputed_tokens == 150 and c.ledger.admitted_recomputed == 0
    assert c.control_step(1.0, kv_usage=0.5, busy={"a": 1, "b": 1}) is None and c.last_signals.recompute_ratio is None


def native_with_agents(n_agents: int, context: int, capacity: int = 10_000) -> ConcurController:
    """A native controller whose agents each hold `context` private tokens after two turns."""
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=capacity)
    c.window = capacity / 2
    ids = [f"a{i}" for i in range(n_agents)]
    c.admit(ids, {}, 0.0)
    for a in ids:
        c.turn_admitted(a, 100, 0, 0.0)
        c.ledger.turn_finished(a, context // 2)
        c.turn_admitted(a, context // 2 + 10, context // 2, 0.0)
        c.ledger.turn_finished(a, context)
    return c


def test_native_mild_cut_stops_admission_without_pausing():
    c = native_with_agents(3, 1000)
    c.window = 10_000
    c.control_step(0.5, kv_usage=0.5, busy={})  # the interval starts here
    c.ledger.turn_admitted("a0", 1100, 900)  # 100 of 1100 recomputed: 9% (> 5%, < 20%)
    c.control_step(1.0, kv_usage=0.5, busy={})
    assert c.window < 10_000 and c.pause_to == float("inf")
    assert c.admit(["a1", "a2", "new"], {}, 1.1) >= {"a1", "a2"}  # turn boundaries: nobody paused


def test_native_pauses_when_predicted_to_need_twice_the_budget():
    c = native_with_agents(6, 4000, capacity=10_000)  # priced far beyond the 5000-token budget
    c.control_step(1.0, kv_usage=0.5, busy={})
    assert c.table.used > 2 * c.window and c.pause_to == c.window
    active = c.admit([f"a{i}" for i in range(6)], {}, 1.1)  # all at a turn boundary
    counts = c.table.counts()
    assert c.table.used <= c.window and counts.active == len(active) == 1
    assert counts.paused == 3 and counts.waiting == 2  # four had been admitted at the prior price


def test_native_does_not_pause_while_the_gate_sets_the_end():
    """The same overrun as above, but agents wait and each lives far longer (long tools) than the
    engine needs for all the work: a pause would delay exactly the agents the drain is waiting for."""
    c = native_with_agents(6, 4000, capacity=10_000)
    c.ledger.lifetimes = [20, 20, 20]  # agents live 20 turns
    c.llm_times.append(2.0)
    c.gaps.observe(10.0)  # a turn cycle of 12 s, mostly tool time
    c.control_step(1.0, kv_usage=0.5, busy={})  # 12 turns in 1 s of engine time
    s = c.last_signals
    assert c.table.counts().waiting == 2 and s.drain > s.work > 0
    assert c.table.used > 2 * c.window and c.pause_to == float("inf")
    c.admit([f"a{i}" for i in range(6)], {}, 1.1)
    assert c.table.counts().paused == 0


def static_controller(window: int = 2, idle_timeout: float = 600.0) -> ConcurController:
    cfg = ConcurConfig(concur_enable=True, concur_policy="static", concur_initial_window=window,
                       concur_idle_timeout=idle_timeout)
    return ConcurController.create(cfg, now=0.0, capacity=10_000)


def turn(c: ConcurController, agent: str, start: float, end: float) -> None:
    """One turn of `agent`: queued at `start`, admitted, its reply out at `end`."""
    c.request_arrived(agent, 100, start)
    c.admit([agent], {}, start)
    c.turn_admitted(agent, 100, 0, start)
    c.ledger.turn_finished(agent, 100)
    c.turn_ended(agent, end)


def test_an_agent_that_stops_without_an_end_call_releases_its_room_within_a_few_of_the_observed_gaps():
    c = static_controller(window=2)
    for k in range(4):  # a and b alternate 1 s of LLM and 2 s of tool
        for agent in ("a", "b"):
            turn(c, agent, 3.0 * k, 3.0 * k + 1.0)
    assert len(c.gaps) == 6 and c.gaps.mean() == 2.0
    assert c.cycle() == 3.0  # 1 s LLM + 2 s tool
    c.control_step(10.5, kv_usage=0.5, busy={})
    assert c.table.used == 2.0  # 0.5 s idle: both are in a tool
    c.request_arrived("new", 100, 10.5)
    assert set(c.admit(["new"], {}, 10.5)) == {"a", "b"}  # no room
    c.control_step(13.5, kv_usage=0.5, busy={})  # 3.5 s idle: longer than any gap seen: both look gone
    assert c.table.used == 0.0 and set(c.ledger.provisional) == {"a", "b"}
    assert set(c.admit(["new"], {}, 13.5)) == {"a", "b", "new"}
    st = c.status()["agents"]
    assert st["a"]["p_return"] < 0.5 and st["a"]["released"] and st["a"]["state"] == "active" and st["a"]["idle_s"] == 3.5
    # a was only in a long tool: it comes back at full price, ahead of any new agent, and counts as alive
    c.request_arrived("a", 100, 14.0)
    assert c.table.used == 2.0 and "a" not in c.ledger.provisional and c.gaps._order[-1] == 4.0


def test_native_prices_a_new_agent_by_its_queued_prompt_and_a_full_table_makes_it_wait():
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=10_000)
    c.request_arrived("a", 3_000, 0.0)
    assert c.pending_prompt["a"] == 3_000 and c.cost("a") >= 3_000
    c.admit(["a"], {}, 0.0)
    c.window = c.table.used + 10  # no room for another
    c.request_arrived("b", 2_000, 1.0)
    assert c.must_wait("b", 1.0) and c.table.agents["b"].state.value == "waiting"
    c.turn_admitted("a", 3_000, 0, 1.0)
    assert "a" not in c.pending_prompt


def test_end_while_a_request_runs_forgets_the_agent_when_it_finishes():
    c = static_controller(window=1)
    c.request_arrived("a", 100, 0.0)
    c.admit(["a"], {}, 0.0)
    c.turn_admitted("a", 100, 0, 0.0)
    assert c.end("a", inflight=1) is True and c.table.agents["a"].state.value == "ending"
    c.control_step(1.0, kv_usage=0.5, busy={"a": 1})  # still running: not brought back
    assert c.table.agents["a"].state.value == "ending" and "a" not in c.table.active
    c.ledger.turn_finished("a", 120)
    c.turn_ended("a", 2.0)
    assert "a" not in c.table.agents and "a" not in c.ledger.agents and c.ledger.lifetimes[-1] == 1
    c.control_step(3.0, kv_usage=0.5, busy={})
    assert not c.table.agents and not c.turn_start and not c.pending_prompt


def test_the_first_interval_starts_at_the_first_clock_reading():
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=10_000)
    c.start_clock(5_000.0)  # a monotonic clock, long after 0
    c.control_step(5_001.0, kv_usage=0.0, busy={})
    assert c.recent[-1].secs == 1.0 and c.next_control == 5_002.0


def test_drain_and_work_weigh_the_gate_against_the_engine():
    """drain: waves of an expected lifetime until every held agent has lived; work: the engine
    seconds the known agents' remaining turns need at the measured busy time per turn."""
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=10_000)
    c.table.update(2_000, ["a0", "a1", "w0", "w1", "w2", "w3"], {}, 0.0, cost=lambda _: 1000.0)
    assert c.table.counts().active == 2 and c.table.counts().waiting == 4
    c.turn_admitted("a0", 100, 0, 0.0)
    c.turn_admitted("a1", 100, 0, 0.0)
    c.turn_admitted("a1", 200, 100, 1.0)  # a0 has done one turn, a1 two
    busy = Sample(secs=10.0, idle_s=4.0, turns=12)  # 0.5 engine seconds per turn
    assert c.drain_and_work(busy, 4.0) == (0.0, 0.0)  # no agent has ended: lifetimes unknown
    c.ledger.lifetimes = [4, 4, 4]
    c.remaining = [4.0, 3.0, 2.0, 1.0]  # E[turns left] after t turns (Kaplan-Meier in control_step)
    drain, work = c.drain_and_work(busy, 4.0)  # a turn cycle of 4 s: a lifetime of 16 s
    assert drain == 4 * 16.0 / 2 + 16.0  # four held agents through two slots, then the last one's life
    assert work == 0.5 * (3.0 + 2.0 + 4 * 4.0)
    assert c.drain_and_work(Sample(secs=10.0, idle_s=10.0), 4.0) == (0.0, 0.0)  # no turn measured
    c.table.update(6_000, ["w0", "w1", "w2", "w3"], {}, 2.0, cost=lambda _: 1000.0)  # nobody held
    assert c.drain_and_work(busy, 4.0) == (0.0, 0.0)

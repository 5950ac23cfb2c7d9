"""The controller's interval signals and window bookkeeping (pure)."""

from sglang_concur.config import ConcurConfig
from sglang_concur.controller import ConcurController, IntervalStats


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
    assert c.window_size() == 5_000 and c.status()["window_unit"] == "tokens"
    led = c.ledger
    led.turn_admitted("a", 100, 0)
    led.turn_finished("a", 150)
    led.turn_admitted("a", 200, 0)  # 150 of history recomputed out of a 200-token returning prompt
    assert c.control_step(1.0, kv_usage=0.5, busy={"a"}) == (5_000, 3_500)
    assert c.last_signals.recompute_ratio == 0.75
    assert c.control_step(2.0, kv_usage=0.5, busy={"a"}) is None  # no returning turn in this interval
    assert c.last_signals.recompute_ratio is None and c.last_signals.settling
    led.turn_finished("a", 250)
    led.turn_admitted("a", 300, 0)  # a came back once since the cut: settled, and still recomputing
    assert c.control_step(3.0, kv_usage=0.5, busy={"a"}) == (3_500, 2_500)


def test_recompute_of_a_resumed_agent_is_not_congestion():
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=10_000)
    c.table.update(5_000, ["a"], {}, 0.0, cost=lambda _: 1000.0)
    c.turn_admitted("a", 100, 0, 0.0)
    c.ledger.turn_finished("a", 150)
    c.table.update(500, ["a"], {}, 0.5, cost=lambda _: 1000.0)  # budget fell: a is paused at its turn boundary
    c.table.update(5_000, ["a"], {}, 0.6, cost=lambda _: 1000.0)  # and resumed
    c.turn_admitted("a", 200, 0, 0.7)  # its history was evicted while paused: 150 recomputed
    assert c.ledger.recomputed_tokens == 150 and c.ledger.admitted_recomputed == 0
    assert c.control_step(1.0, kv_usage=0.5, busy={"a"}) is None and c.last_signals.recompute_ratio is None


def native_with_agents(n_agents: int, context: int, capacity: int = 10_000) -> ConcurController:
    """A native controller whose agents each hold `context` private tokens after two turns."""
    c = ConcurController.create(ConcurConfig(concur_enable=True, concur_policy="native"), now=0.0, capacity=capacity)
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
    c.control_step(0.5, kv_usage=0.5, busy=set())  # the interval starts here
    c.window = 10_000
    c.ledger.turn_admitted("a0", 1100, 900)  # 100 of 1100 recomputed: 9% (> 5%, < 20%)
    c.control_step(1.0, kv_usage=0.5, busy=set())
    assert c.window < 10_000 and c.pause_to == float("inf")
    assert c.admit(["a1", "a2", "new"], {}, 1.1) >= {"a1", "a2"}  # turn boundaries: nobody paused


def test_native_pauses_when_predicted_to_need_twice_the_budget():
    c = native_with_agents(6, 4000, capacity=10_000)  # priced far beyond the 5000-token budget
    c.control_step(1.0, kv_usage=0.5, busy=set())
    assert c.table.used > 2 * c.window and c.pause_to == c.window
    active = c.admit([f"a{i}" for i in range(6)], {}, 1.1)  # all at a turn boundary
    counts = c.table.counts()
    assert c.table.used <= c.window and counts.active == len(active) == 1
    assert counts.paused == 3 and counts.waiting == 2  # four had been admitted at the prior price

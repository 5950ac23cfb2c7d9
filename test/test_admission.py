"""Agent admission rules: window, arrival order, pause at turn boundaries, resume first, idle expiry."""

from sglang_concur.admission import AdmissionTable, AgentState


def states(t):
    return {a: x.state.value for a, x in t.agents.items()}


def test_new_agents_start_in_arrival_order_up_to_the_window():
    t = AdmissionTable(idle_timeout=60)
    assert t.update(2, ["a", "b", "c"], {}, 0.0) == {"a", "b"}
    assert states(t)["c"] == "waiting"
    # arrival order is kept even when the queue order changes later
    t.update(2, ["d", "c"], {"a": 1, "b": 1}, 1.0)
    t.end("a")
    assert t.update(2, ["d", "c"], {"b": 1}, 2.0) == {"b", "c"}
    assert states(t)["d"] == "waiting"


def test_active_agent_next_turn_never_held_while_window_not_shrinking():
    t = AdmissionTable(idle_timeout=60)
    t.update(2, ["a", "b"], {}, 0.0)
    for now in range(1, 10):  # a and b alternate between tool calls and turns; c keeps waiting
        active = t.update(2, ["c", "a", "b"], {}, float(now))
        assert {"a", "b"} <= active and "c" not in active


def test_shrink_pauses_only_at_turn_boundary_and_paused_resume_first():
    t = AdmissionTable(idle_timeout=60)
    t.update(3, ["a", "b", "c"], {}, 0.0)
    t.update(3, ["x"], {"a": 1, "b": 1, "c": 1}, 0.5)  # x waits
    # window shrinks to 1: a, b and c are running (busy): nobody is interrupted
    assert t.update(1, [], {"a": 1, "b": 1, "c": 1}, 1.0) == {"a", "b", "c"}
    # a's next turn arrives while a still has a request in flight: not a boundary, stays
    assert "a" in t.update(1, ["a"], {"a": 1, "b": 1}, 2.0)
    # b and c come back for their next turn with nothing in flight: paused (over by 2), the
    # youngest admitted first (c, then b)
    active = t.update(1, ["b", "c"], {"a": 2}, 3.0)
    assert active == {"a"} and states(t) == {"a": "active", "b": "paused", "c": "paused", "x": "waiting"}
    # window grows back to 2: the first paused agent resumes before the new agent x
    assert t.update(2, ["x", "b", "c"], {"a": 1}, 4.0) == {"a", "c"}
    assert t.update(3, ["x", "b"], {"a": 1, "c": 1}, 5.0) == {"a", "b", "c"}
    assert t.update(4, ["x"], {"a": 1, "b": 1, "c": 1}, 6.0) == {"a", "b", "c", "x"}


def test_end_frees_slot_and_unknown_end_is_false():
    t = AdmissionTable(idle_timeout=60)
    t.update(1, ["a", "b"], {}, 0.0)
    assert t.end("a") is True and t.end("a") is False and t.end("zzz") is False
    assert t.update(1, ["b"], {}, 1.0) == {"b"}


def test_idle_timeout_ends_only_agents_with_nothing_in_flight():
    t = AdmissionTable(idle_timeout=10)
    t.update(2, ["a", "b"], {}, 0.0)
    t.sync({"a": 1}, 8.0)  # a has a long request in flight
    assert t.expire(12.0, {"a": 1}) == ["b"]
    assert set(t.agents) == {"a"}
    assert t.expire(30.0, {}) == ["a"]


def test_busy_agent_unknown_to_the_table_holds_a_slot():
    t = AdmissionTable(idle_timeout=60)
    t.update(1, ["a"], {}, 0.0)
    t.end("a")  # ended (unknown to the table now); then a request of it is seen running
    t.sync({"a": 1}, 1.0)
    assert t.update(1, ["b"], {"a": 1}, 1.0) == {"a"}
    assert states(t)["b"] == "waiting"


def test_end_while_in_flight_holds_no_room_and_leaves_when_the_request_finishes():
    t = AdmissionTable(idle_timeout=60)
    t.update(1, ["a", "b"], {}, 0.0)
    assert t.end("a", inflight=1) is True
    assert states(t)["a"] == "ending" and "a" not in t.active and t.used == 0
    assert t.update(1, ["b"], {"a": 1}, 1.0) == {"b"}  # its room went to b at once
    t.sync({"a": 1, "b": 1}, 2.0)  # still running: not brought back as active
    assert states(t)["a"] == "ending"
    assert t.turn_ended("a", 3.0) is True and "a" not in t.agents  # its last request finished: gone
    assert t.update(2, ["a"], {"b": 1}, 4.0) == {"a", "b"}  # a later request starts a new agent
    assert t.agents["a"].admissions == 1


def test_idle_agent_is_charged_by_refresh_and_full_price_when_it_comes_back():
    t = AdmissionTable(idle_timeout=60)
    t.update(2, ["a", "b"], {}, 0.0)
    assert t.turn_ended("a", 1.0) is False and t.agents["a"].idle_since == 1.0
    t.refresh(lambda aid: 0.25 if t.agents[aid].idle_since is not None else 1.0)
    assert t.used == 1.25
    assert t.update(2, ["c"], {}, 2.0) == {"a", "b"}  # 1.25 + 1 > 2: no room yet
    assert t.came_back("a", 5.0) == 4.0 and t.used == 2.0 and t.agents["a"].idle_since is None
    assert t.came_back("a", 6.0) is None  # not idle


def test_must_wait_registers_a_new_agent_that_cannot_fit_without_a_decision():
    t = AdmissionTable(idle_timeout=60)
    t.update(1, ["a", "b"], {}, 0.0)
    assert t.must_wait("c", 1, 1.0) is True and states(t)["c"] == "waiting"
    assert t.agents["b"].seq < t.agents["c"].seq  # behind b in arrival order
    assert t.must_wait("b", 1, 1.0) is False  # known agents go through a decision
    sizes = {"a": 600.0, "d": 300.0, "e": 500.0}
    u = AdmissionTable(idle_timeout=60)
    u.update(1000, ["a"], {}, 0.0, cost=sizes.get)
    assert u.must_wait("d", 1000, 1.0, cost=sizes.get) is False  # it would fit (backfill): decide
    assert u.must_wait("e", 1000, 1.0, cost=sizes.get) is True


def test_digest_follows_the_sequence_of_decisions():
    def run(order):
        t = AdmissionTable(idle_timeout=60)
        t.update(2, order, {}, 0.0)
        t.update(1, order, {}, 1.0)
        return t.digest
    assert run(["a", "b", "c"]) == run(["a", "b", "c"])
    assert run(["a", "b", "c"]) != run(["b", "a", "c"])


def test_counts():
    t = AdmissionTable(idle_timeout=60)
    t.update(3, ["a", "b", "c", "d"], {}, 0.0)
    t.update(1, ["a", "b"], {}, 1.0)
    c = t.counts()
    assert (c.active, c.paused, c.waiting) == (1, 2, 1)
    assert t.agents["d"].state is AgentState.WAITING


def test_shrink_pauses_youngest_first_only_as_many_as_needed():
    t = AdmissionTable(idle_timeout=60)
    t.update(3, ["a", "b", "c"], {}, 0.0)
    assert t.update(2, ["a", "b", "c"], {}, 1.0) == {"a", "b"}
    assert states(t)["c"] == "paused"


def test_token_budget_admits_by_footprint_head_of_line():
    t = AdmissionTable(idle_timeout=60)
    cost = {"small1": 100.0, "big": 900.0, "small2": 100.0, "small3": 100.0}.__getitem__
    # budget 1000: small1 + big fit; small2 would overflow and waits, small3 is not let past it
    assert t.update(1000, ["small1", "big", "small2", "small3"], {}, 0.0, cost=cost) == {"small1", "big"}
    assert t.used == 1000
    t.end("big")
    assert t.update(1000, ["small2", "small3"], {}, 1.0, cost=cost) == {"small1", "small2", "small3"}
    assert t.used == 300


def test_token_budget_always_admits_one_agent_and_refresh_reprices():
    t = AdmissionTable(idle_timeout=60)
    sizes = {"huge": 5000.0, "b": 10.0}
    assert t.update(1000, ["huge", "b"], {}, 0.0, cost=sizes.__getitem__) == {"huge"}
    sizes["huge"] = 800.0
    t.refresh(sizes.__getitem__)
    assert t.used == 800 and t.update(1000, ["b"], {}, 1.0, cost=sizes.__getitem__) == {"huge", "b"}


def test_pause_key_picks_most_pressure_for_least_lost_work():
    t = AdmissionTable(idle_timeout=60)
    sizes = {"a": 300.0, "b": 500.0, "c": 200.0}
    t.update(1000, ["a", "b", "c"], {}, 0.0, cost=sizes.__getitem__)
    t.update(500, ["a", "b", "c"], {}, 1.0, cost=sizes.__getitem__, pause_key=lambda a: a.cost)
    assert states(t) == {"a": "active", "b": "paused", "c": "active"} and t.used == 500


def test_token_costs_backfill_past_a_large_head_for_a_bounded_time():
    sizes = {"big0": 6000.0, "big1": 6000.0, "s1": 1000.0, "s2": 1000.0, "s3": 1000.0}
    t = AdmissionTable(idle_timeout=60, backfill_wait=30)
    assert t.update(8000, ["big0"], {}, 0.0, cost=sizes.get) == {"big0"}
    # big1 is next in line but does not fit beside big0: the small agents behind it may run
    assert t.update(8000, ["big1", "s1", "s2"], {"big0": 1}, 1.0, cost=sizes.get) == {"big0", "s1", "s2"}
    assert states(t)["big1"] == "waiting" and t.agents["big1"].blocked_since == 1.0
    t.end("s1")
    # after waiting backfill_wait, big1 is no longer overtaken: the room freed is kept for it
    assert t.update(8000, ["big1", "s3"], {"big0": 1, "s2": 1}, 40.0, cost=sizes.get) == {"big0", "s2"}
    t.end("big0")
    assert t.update(8000, ["big1", "s3"], {"s2": 1}, 41.0, cost=sizes.get) == {"big1", "s2", "s3"}
    assert t.agents["big1"].blocked_since is None


def test_holds_count_each_agent_held_back_once_per_wait():
    t = AdmissionTable(idle_timeout=60)
    t.update(1, ["a", "b"], {}, 0.0)
    assert t.holds == 1  # b refused
    t.update(1, ["b"], {"a": 1}, 1.0)
    assert t.holds == 1  # still the same wait
    assert t.must_wait("c", 1, 1.5) and t.holds == 2  # a new agent behind b, held without a decision
    t.end("a")
    assert t.update(1, ["b", "c"], {}, 2.0) == {"b"} and t.holds == 2
    t.update(1, ["x"], {"b": 1}, 2.5)
    assert t.holds == 3
    t.end("b")
    t.update(1, ["c"], {}, 3.0)
    assert t.update(0.5, ["c"], {}, 4.0) == {"c"}  # one agent always stays admitted: no pause
    t.update(2, ["x"], {}, 5.0)  # c and x admitted
    assert t.update(1, ["c"], {"x": 1}, 6.0) == {"x"} and t.holds == 4  # c paused at its turn: a new wait

"""The control law (Eq. 1) driven through scripted signal sequences: pure, microseconds."""

from sglang_concur.control import AimdParams, AimdPolicy, Bounds, NativeParams, NativePolicy, Signals, StaticPolicy, slots

P = AimdPolicy(AimdParams(), Bounds(1, 64))


def run(policy, w, seq):
    out = []
    for usage, hit in seq:
        w = policy.next_window(w, Signals(usage, hit))
        out.append(w)
    return out


def test_additive_increase_below_usage_low():
    assert run(P, 4.0, [(0.1, 0.9), (0.0, None), (0.19, 0.0)]) == [6.0, 8.0, 10.0]


def test_dead_band_holds():
    # between U_low and U_high, and above U_high while the hit rate is healthy (or unknown)
    assert run(P, 8.0, [(0.2, 0.0), (0.35, 0.1), (0.5, 0.0), (0.9, 0.2), (0.9, 0.95), (0.9, None)]) == [8.0] * 6


def test_decrease_only_when_usage_high_and_hit_rate_low():
    assert run(P, 16.0, [(0.51, 0.19), (0.8, 0.0), (0.99, 0.1)]) == [8.0, 4.0, 2.0]


def test_bounds_clamp_both_ways():
    assert run(P, 2.0, [(0.9, 0.0), (0.9, 0.0), (0.9, 0.0)]) == [1.0, 1.0, 1.0]
    assert run(P, 60.0, [(0.0, 1.0), (0.0, 1.0), (0.0, 1.0)]) == [62.0, 64.0, 64.0]


def test_thrash_then_recover_sequence():
    seq = [(0.1, 0.9)] * 3 + [(0.9, 0.05)] * 2 + [(0.4, 0.5)] * 2 + [(0.1, 0.9)]
    assert run(P, 8.0, seq) == [10.0, 12.0, 14.0, 7.0, 3.5, 3.5, 3.5, 5.5]
    assert [slots(w) for w in [3.5, 1.0, 0.2, 7.99999999999]] == [3, 1, 1, 8]


def test_custom_constants():
    p = AimdPolicy(AimdParams(alpha=1, beta=0.75, usage_low=0.1, usage_high=0.3, hit_threshold=0.5), Bounds(2, 10))
    assert run(p, 8.0, [(0.05, None), (0.31, 0.49), (0.31, 0.5), (0.2, 0.0)]) == [9.0, 6.75, 6.75, 6.75]


def test_static_never_moves():
    s = StaticPolicy(Bounds(1, 64))
    assert run(s, 3.0, [(0.0, 1.0), (1.0, 0.0), (0.3, None)]) == [3.0, 3.0, 3.0]


def test_native_budget_shrinks_on_recompute_grows_when_agents_held_and_is_bounded_by_capacity():
    n = NativePolicy(NativeParams(), capacity=10_000)
    assert n.initial_window() == 2_500  # a slow start: prices rest on a prior at first
    sig = lambda r, held=0, settling=False: Signals(0.9, 0.0, recompute_ratio=r, held_agents=held, settling=settling)  # noqa: E731
    assert n.next_window(10_000, sig(0.2)) == 7_000                    # returning agents recompute: back off
    assert n.next_window(10_000, sig(0.2, settling=True)) == 10_000    # ...but not again before the cut is seen
    assert n.next_window(7_000, sig(0.05, held=3)) == 7_000            # at the threshold: hold
    assert n.next_window(7_000, sig(0.02, held=3)) == 7_500            # healthy and agents held: grow
    assert n.next_window(7_000, sig(None, held=3)) == 7_500            # no returning turns yet
    assert n.next_window(7_000, sig(0.0, held=0)) == 7_000             # nobody waits: no reason to grow
    assert n.next_window(7_000, sig(0.0, held=3, settling=True)) == 7_000  # settling after a cut: no growth
    assert n.next_window(3_000, sig(0.9)) == 2_500                     # floor: capacity / 4
    assert n.next_window(9_900, sig(0.0, held=1)) == 10_000            # ceiling: the capacity


def native_sig(r=None, held=0, lost=0.0, used=0.0, stagger=1.0, settling=False, probe=False, drain=0.0, work=0.0):
    return Signals(0.9, 0.0, recompute_ratio=r, drain=drain, work=work, held_agents=held, settling=settling, lost_work=lost, used=used, probe=probe,
                   stagger=stagger)


def test_native_work_conserving_engine_idle_with_agents_held_and_no_recompute_admits_more():
    n = NativePolicy(NativeParams(), capacity=10_000)
    # at the pool: grows past it only while the engine idles with agents held (agents in tools do
    # not need their cache until they return), a twentieth of the pool per interval
    assert n.next_window(10_000, native_sig(r=0.0, held=3, lost=0.4, used=6_000, stagger=4.0)) == 10_500
    assert n.next_window(10_000, native_sig(r=0.0, held=3, lost=0.0, used=6_000, stagger=4.0)) == 10_000  # busy: hold
    # once per turn cycle it probes: the engine idled 40% with 6000 tokens admitted -> 6000 * 0.4 / 0.6 more
    assert n.next_window(10_000, native_sig(r=0.0, held=3, lost=0.4, used=6_000, stagger=4.0, probe=True)) == 14_000
    assert n.next_window(10_000, native_sig(r=0.0, held=3, lost=0.9, used=6_000, stagger=4.0, probe=True)) == 20_000  # at most double
    assert n.next_window(10_000, native_sig(r=0.1, held=3, lost=0.4, used=6_000, stagger=4.0, probe=True)) == 14_000  # idling costs more
    assert n.next_window(10_000, native_sig(r=0.0, held=0, lost=0.9, used=6_000, stagger=4.0, probe=True)) == 10_000  # none held
    # ...up to the pool times the stagger of the agents' ages (their footprints do not peak together)
    assert n.next_window(39_800, native_sig(r=0.0, held=3, lost=0.4, used=30_000, stagger=4.0)) == 40_000
    # past it only by probing: the held agents' working sets fit 1 / (1 - idle) times over the pool
    assert n.next_window(40_000, native_sig(r=0.0, held=3, lost=0.4, used=30_000, stagger=4.0, probe=True)) == 60_000
    assert n.next_window(40_000, native_sig(r=0.0, held=3, lost=0.2, used=30_000, stagger=4.0, probe=True)) == 47_500
    assert n.next_window(150_000, native_sig(r=0.0, held=3, lost=0.9, used=150_000, stagger=4.0, probe=True)) == 160_000
    # what lost work earned is kept until recompute costs more than the idling it saves
    assert n.next_window(20_000, native_sig(r=0.0, held=3, lost=0.4, used=9_000, stagger=1.5)) == 20_000
    assert n.next_window(20_000, native_sig(r=0.1, held=3, lost=0.0, used=9_000, stagger=1.5)) == 14_000
    # below the pool every footprint still fits: it grows while agents are held, idle or not
    assert n.next_window(5_000, native_sig(r=0.0, held=3, lost=0.0, used=5_000, stagger=1.0)) == 5_500


def test_native_recompute_rising_backs_off_unless_it_only_fills_idle_time():
    n = NativePolicy(NativeParams(), capacity=10_000)
    assert n.next_window(20_000, native_sig(r=0.10, held=3, used=20_000, stagger=4.0)) == 14_000  # costs work: cut
    # the engine idles more than it recomputes: no cut, but no growth either while recompute shows
    assert n.next_window(20_000, native_sig(r=0.10, held=3, lost=0.30, used=7_000, stagger=4.0)) == 20_000
    assert n.next_window(20_000, native_sig(r=0.02, held=3, lost=0.30, used=7_000, stagger=4.0)) == 20_500
    assert n.next_window(20_000, native_sig(r=0.30, held=3, lost=0.20, used=20_000, stagger=4.0)) == 14_000  # overtaken
    assert n.next_window(20_000, native_sig(r=0.30, held=3, lost=0.2, stagger=4.0, settling=True)) == 20_000


def test_native_gate_bound_admits_past_recompute_until_the_engine_sets_the_end():
    n = NativePolicy(NativeParams(), capacity=10_000)
    # held agents would need 300 s to pass the gate, the engine 100 s for all the work left: a
    # recompute that would cut is borne and the budget grows, past the pool
    assert n.next_window(10_000, native_sig(r=0.3, held=20, used=10_000, drain=300.0, work=100.0)) == 10_500
    assert n.next_window(20_000, native_sig(r=0.3, held=20, used=20_000, drain=300.0, work=100.0)) == 20_500
    assert n.next_window(39_800, native_sig(held=20, used=38_000, drain=300.0, work=100.0)) == 40_000  # C / (1 - 0.75)
    # with idle time as well, the probe fills it at once
    assert n.next_window(10_000, native_sig(r=0.0, held=20, lost=0.5, used=10_000, drain=300.0, work=100.0, probe=True)) == 20_000
    # the engine sets the end (the recompute made the work outgrow the drain): back off as before
    assert n.next_window(10_000, native_sig(r=0.3, held=20, used=10_000, drain=300.0, work=310.0, probe=True)) == 7_000
    assert n.next_window(10_000, native_sig(r=0.3, held=20, used=10_000, drain=300.0, work=100.0, settling=True)) == 10_000
    # nothing held: no drain, no growth
    assert n.next_window(10_000, native_sig(r=0.0, held=0, used=10_000, drain=0.0, work=0.0, probe=True)) == 10_000


def test_native_scripted_long_tools_then_thrash():
    """A scripted run: agents in long tools leave the engine idle (the budget probes past the pool),
    then their returns collide and recompute takes the engine (the budget backs off and settles)."""
    n, w = NativePolicy(NativeParams(), capacity=10_000), 10_000.0
    for lost in (0.5, 0.5, 0.75, 0.9):
        w = n.next_window(w, native_sig(r=0.0, held=20, lost=lost, used=w, stagger=1.0, probe=True))
    assert w == 40_000  # doubled up to the pool / (1 - idle), then capped at the pool / (1 - 0.75)
    w = n.next_window(w, native_sig(r=0.4, held=20, lost=0.05, used=w))
    assert w == 28_000
    assert n.next_window(w, native_sig(r=0.4, held=20, lost=0.05, used=w, settling=True)) == 28_000


def test_native_nothing_held_no_growth_whatever_the_idle_time():
    n = NativePolicy(NativeParams(), capacity=10_000)
    for lost in (0.0, 0.5, 1.0):
        assert n.next_window(8_000, native_sig(r=0.0, held=0, lost=lost, used=8_000, stagger=5.0)) == 8_000

"""The recompute ledger's arithmetic (pure)."""

from sglang_concur.accounting import RecomputeLedger, stagger


def test_first_turn_never_recomputes_and_later_turns_count_the_lost_part():
    led = RecomputeLedger()
    assert led.turn_admitted("a", prompt_len=100, matched=0) == 0
    led.turn_finished("a", 107)
    assert led.turn_admitted("a", prompt_len=160, matched=107) == 0
    led.turn_finished("a", 165)
    assert led.turn_admitted("a", prompt_len=190, matched=40) == 125
    assert led.agents["a"].recomputed == 125 and led.recomputed_tokens == 125
    assert led.returning_prompt_tokens == 350


def test_rewritten_history_is_bounded_by_prompt_and_forget():
    led = RecomputeLedger()
    led.turn_admitted("a", 10, 0)
    led.turn_finished("a", 500)
    assert led.turn_admitted("a", prompt_len=50, matched=20) == 30  # not 480
    led.forget("a")
    assert led.turn_admitted("a", 600, 0) == 0 and led.agents["a"].turns == 1
    led.evicted(7)
    led.evicted(5)
    assert led.evicted_tokens == 12


def test_remaining_turns_counts_live_agents_as_censored_lives():
    from sglang_concur.accounting import remaining_turns

    # every agent lives 10 turns: an agent that has done t has 10 - t to go (at least the next one)
    assert remaining_turns([10] * 20, [], 10) == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1]
    # three early enders (3 turns) alone would say lives are short; 20 live agents already past 3
    # turns say otherwise, and the estimate for a young agent stays long
    short = remaining_turns([3, 3, 3], [], 4)[1]
    censored = remaining_turns([3, 3, 3], [6] * 20, 7)[1]
    assert short == 2 and censored > 6
    # no agent ended yet: the oldest age seen, K, and K more beyond it
    assert remaining_turns([], [2, 2, 1], 3) == [6.0, 5.0, 4.0, 3.0]


def test_footprint_projects_own_growth_over_expected_life_up_to_the_ceiling():
    from sglang_concur.accounting import footprint

    led = RecomputeLedger()
    led.turn_admitted("a", 300, matched=100)  # 100 shared prefix tokens: not a's
    led.turn_finished("a", 400)
    led.turn_admitted("a", 500, matched=400)
    led.turn_finished("a", 500)  # 100 tokens of growth per turn; 400 private tokens now
    remaining = [10.0, 9.0, 8.0, 7.0]
    assert footprint(led, "a", 0, 0.0, remaining) == 400 + 100 * 8.0
    # agents have never been seen to hold more than 900 private tokens: that is the projection...
    assert footprint(led, "a", 0, 0.0, remaining, ceiling=900) == 900
    # ...unless this one is already past it: then one more turn
    assert footprint(led, "a", 0, 0.0, remaining, ceiling=300) == 500
    # an agent not seen yet: its queued prompt and the mean growth over a whole expected life
    assert footprint(led, "new", 250, 50.0, remaining) == 250 + 50 * 10.0


def test_stagger_is_one_for_agents_of_one_age_and_grows_as_their_ages_spread():
    assert stagger([]) == 1.0
    same = [(100.0, 1100.0, 10.0)] * 4  # (now, at the end, turns left): they peak together at 4 x 1100
    assert stagger(same) == 1.0
    # one old agent ending next turn beside a young one: 1000 + 1000 at the ends, but the old one
    # is gone before the young one has grown: the peak is max(1000 + 200, 1000) = 1200
    assert abs(stagger([(900.0, 1000.0, 1.0), (100.0, 1000.0, 9.0)]) - 2000 / 1200) < 1e-9
    assert stagger([(500.0, 400.0, 2.0)]) == 1.0  # an end below now (a capped projection): no shrinking

"""The recompute ledger's arithmetic (pure)."""

from sglang_concur.accounting import RecomputeLedger


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

"""Counters across resets and wraps never lose or invent a part (property tests against a reference world)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.counters import counter_step

U32 = 2**32
WINDOW = 10_000


def test_simple_increase() -> None:
    assert counter_step(10, 13, modulus=U32, wrap_window=WINDOW).parts == 3


def test_first_reading_is_a_baseline() -> None:
    assert counter_step(None, 123_456, modulus=U32, wrap_window=WINDOW).parts == 0


def test_wrap_past_the_top() -> None:
    step = counter_step(U32 - 2, 3, modulus=U32, wrap_window=WINDOW)
    assert (step.parts, step.wrapped, step.reset) == (5, True, False)


def test_reset_after_power_cycle() -> None:
    step = counter_step(500, 2, modulus=U32, wrap_window=WINDOW)
    assert (step.parts, step.wrapped, step.reset) == (2, False, True)


def test_decrease_after_an_outage_is_a_reset_even_near_the_top() -> None:
    # Found by the property test below: a power cut at 2**32 - 5 looks like a wrap unless we know the
    # module was unreachable in between.
    step = counter_step(U32 - 5, 0, modulus=U32, wrap_window=WINDOW, outage=True)
    assert (step.parts, step.reset) == (0, True)


def test_an_implausible_jump_is_a_new_baseline_not_billions_of_parts() -> None:
    # A module replaced or preset (or a simulator restarted): 4 billion parts between two readings is not real.
    step = counter_step(2, U32 - 5, modulus=U32, wrap_window=WINDOW, outage=True)
    assert (step.parts, step.rebased) == (0, True)


def test_uint16_wraps_too() -> None:
    assert counter_step(65_530, 4, modulus=2**16, wrap_window=100).parts == 10


def test_value_out_of_range_is_our_bug() -> None:
    with pytest.raises(ValueError, match="outside"):
        counter_step(0, U32, modulus=U32, wrap_window=WINDOW)


# A world: a module whose counter starts anywhere, makes parts between polls, and is sometimes power-cycled.
# A power cycle happens while the machine is idle and is followed by a reading before new parts (the
# physical limit explained in counters.py); between two readings fewer than WINDOW parts are made.
Op = st.one_of(
    st.tuples(st.just("parts"), st.integers(min_value=0, max_value=WINDOW - 1)),
    st.tuples(st.just("power_cycle"), st.just(0)),
)


@settings(max_examples=400)
@given(
    start=st.one_of(st.integers(0, U32 - 1), st.integers(U32 - 3 * WINDOW, U32 - 1)),
    ops=st.lists(Op, min_size=1, max_size=60),
    modulus=st.sampled_from([U32, 2**16]),
)
def test_total_equals_truth_across_resets_and_wraps(
    start: int, ops: list[tuple[str, int]], modulus: int
) -> None:
    window = min(WINDOW, modulus // 4)
    counter = start % modulus
    truth = 0
    derived = 0
    previous: int | None = counter
    for op, n in ops:
        outage = op == "power_cycle"
        if op == "parts":
            made = n % window
            counter = (counter + made) % modulus
            truth += made
        else:
            counter = 0  # the module lost its count; the next reading sees 0 before any new part
        step = counter_step(previous, counter, modulus=modulus, wrap_window=window, outage=outage)
        derived += step.parts
        previous = counter
        assert derived <= truth, "a part was invented"
    assert derived == truth, "a part was lost"

"""The benchmark's pure arithmetic (bench/stats.py): percentiles, summaries, rate ladders, poll gaps."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import (
    Summary,
    highest_passing,
    ladder,
    percentile,
    poll_gaps,
    summarize,
)


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([5.0], 99) == 5.0


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=50))
def test_the_50th_percentile_is_the_median(values: list[float]) -> None:
    assert percentile(values, 50) == pytest.approx(statistics.median(values), abs=1e-6)


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_summary_of_runs_and_its_text() -> None:
    s = summarize([12_000, 11_000, 13_500])
    assert s == Summary(median=12_000, min=11_000, max=13_500, n=3)
    assert s.text(unit=" msg/s") == "12,000 msg/s (11,000–13,500)"
    assert summarize([2.5]).text("{:.1f}") == "2.5"
    with pytest.raises(ValueError, match="no runs"):
        summarize([])


def test_ladder_rounds_down_and_sorts() -> None:
    assert ladder(20_345, (1.0, 0.8, 0.9)) == [16_000, 18_000, 20_000]
    assert ladder(20_345, (1.0, 1.0)) == [20_000]
    assert ladder(0, (1.0,)) == []
    assert ladder(400, (1.0,)) == []  # rounds down to 0: nothing worth offering


def test_highest_passing_needs_every_lower_step_to_pass() -> None:
    assert highest_passing([(10, True), (20, True), (30, False)]) == 20
    assert highest_passing([(30, True), (10, True), (20, False)]) == 10  # sorted first; 30 does not count
    assert highest_passing([(10, False)]) is None
    assert highest_passing([]) is None


def test_poll_gaps_count_missed_intervals() -> None:
    every_second = [0.1 + i for i in range(10)]
    assert poll_gaps(every_second, interval_s=1.0, start=0.0, end=10.0).missed == 0
    jittery = [0.1, 1.4, 2.0, 3.3, 4.1]  # late by up to 0.4 s: jitter, not a miss
    assert poll_gaps(jittery, interval_s=1.0, start=0.0, end=5.0).missed == 0
    holes = [0.1, 1.1, 4.1, 5.1, 9.7]  # 3 s gap: 2 missed; 4.6 s gap: 4 missed (round 4.6 = 5, minus 1)
    g = poll_gaps(holes, interval_s=1.0, start=0.0, end=10.0)
    assert g.missed == 2 + 4
    assert g.reads == 5 and g.max_gap_s == pytest.approx(4.6)
    assert poll_gaps([0.5], interval_s=1.0, start=0.0, end=3.6).missed == 2  # the end edge: 3.1 s without a read
    assert poll_gaps([], interval_s=1.0, start=0.0, end=10.0).missed == 10  # never read
    assert poll_gaps([20.0], interval_s=1.0, start=0.0, end=10.0).reads == 0  # reads outside the window ignored

"""Order progress against answers worked out by hand: good, scrap, remaining, ETA and delay against the due date."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from orders.progress import NS, RateBasis, compute_progress, due_instant, recent_rate
from orders.tracking import progress_line


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * NS


NOW = ns("2026-03-02T08:00:00+00:00")
# One part a minute for the last ten minutes: 11 points, the first only marks the start → 10 parts in 600 s.
RECENT = [(ns("2026-03-02T07:50:00+00:00") + i * 60 * NS, 1) for i in range(11)]


def test_known_answer_with_the_recent_rate() -> None:
    # 100 parts ordered, 40 made, 4 declared scrap → 36 good, 64 to make at one a minute → 64 min from 08:00.
    # Due 2 March (Paris, UTC+1 in winter): the end of that day is 23:00 UTC → 13 h 56 min ahead.
    p = compute_progress(order="CMD-1", operation=10, quantity=100, made=40, scrap=4,
                         due_ns=due_instant(date(2026, 3, 2), "Europe/Paris"), now_ns=NOW, standard_cycle_s=42.5,
                         rate_per_s=recent_rate(RECENT))
    assert (p.good, p.scrap, p.remaining, p.basis) == (36, 4, 64, RateBasis.RECENT)
    assert p.rate_per_h == pytest.approx(60.0)
    assert p.eta_ns == ns("2026-03-02T09:04:00+00:00")
    assert p.due_ns == ns("2026-03-02T23:00:00+00:00")
    assert p.delay_s == pytest.approx(-(13 * 3600 + 56 * 60))
    assert not p.late


def test_known_answer_late() -> None:
    # Same job, due the day before: the end of 1 March is 23:00 UTC, the ETA 09:04 the next day → 10 h 04 late.
    p = compute_progress(order="CMD-1", operation=10, quantity=100, made=40, scrap=4,
                         due_ns=due_instant(date(2026, 3, 1), "Europe/Paris"), now_ns=NOW, standard_cycle_s=42.5,
                         rate_per_s=recent_rate(RECENT))
    assert p.delay_s == pytest.approx(10 * 3600 + 4 * 60)
    assert p.late


def test_no_recent_parts_uses_the_standard_time_and_the_setup_before_the_first_part() -> None:
    p = compute_progress(order="CMD-1", operation=20, quantity=10, made=0, scrap=0, due_ns=NOW, now_ns=NOW,
                         standard_cycle_s=42.5, setup_s=900)
    assert (p.remaining, p.basis) == (10, RateBasis.STANDARD)
    assert p.eta_ns == NOW + (10 * 42.5 + 900) * NS  # 1325 s
    assert p.delay_s == pytest.approx(1325.0)
    # Once parts are made the set-up is behind us: 4 left at the standard 42.5 s.
    later = compute_progress(order="CMD-1", operation=20, quantity=10, made=6, scrap=0, due_ns=NOW, now_ns=NOW,
                             standard_cycle_s=42.5, setup_s=900)
    assert later.eta_ns == NOW + 170 * NS


def test_scrap_is_made_again_and_a_finished_operation_is_done_now() -> None:
    p = compute_progress(order="CMD-1", operation=10, quantity=10, made=12, scrap=2, due_ns=NOW + 3600 * NS,
                         now_ns=NOW, standard_cycle_s=30)
    assert (p.good, p.remaining, p.basis, p.eta_ns, p.rate_per_h) == (10, 0, RateBasis.DONE, NOW, 0.0)
    assert p.delay_s == -3600.0
    short = compute_progress(order="CMD-1", operation=10, quantity=10, made=12, scrap=3, due_ns=NOW, now_ns=NOW,
                             standard_cycle_s=30)
    assert (short.good, short.remaining) == (9, 1)


def test_more_scrap_declared_than_parts_counted_never_gives_negative_good() -> None:
    p = compute_progress(order="X", operation=1, quantity=5, made=3, scrap=5, due_ns=NOW, now_ns=NOW,
                         standard_cycle_s=10)
    assert (p.good, p.remaining) == (0, 5)


def test_recent_rate() -> None:
    assert recent_rate([]) is None
    assert recent_rate([(NOW, 3)]) is None  # one point: no time span
    assert recent_rate([(NOW, 1), (NOW, 2)]) is None  # the same instant
    # The first point's 5 parts were made before it; the second's 3 parts took 60 s.
    assert recent_rate([(NOW, 5), (NOW + 60 * NS, 3)]) == pytest.approx(3 / 60)


def test_due_instant_follows_summer_time() -> None:
    assert due_instant(date(2026, 7, 14), "Europe/Paris") == ns("2026-07-14T22:00:00+00:00")
    assert due_instant(date(2026, 1, 14), "Europe/Paris") == ns("2026-01-14T23:00:00+00:00")
    assert due_instant(date(2026, 1, 14), "UTC") == ns("2026-01-15T00:00:00+00:00")


def test_the_order_progress_point() -> None:
    p = compute_progress(order="CMD-1", operation=10, quantity=100, made=40, scrap=4,
                         due_ns=ns("2026-03-02T23:00:00+00:00"), now_ns=NOW, standard_cycle_s=42.5, rate_per_s=1 / 60)
    line = progress_line(p, site="ecole")
    assert line == (
        'order_progress,operation=10,order=CMD-1,site=ecole basis="recent",delay_s=-50160.0,'
        f"due_ts={ns('2026-03-02T23:00:00+00:00')}i,eta_ts={ns('2026-03-02T09:04:00+00:00')}i,good=36i,late=false,"
        f"made=40i,quantity=100i,rate_per_h=60.0,remaining=64i,scrap=4i,setup_s=0.0,standard_cycle_s=42.5 {NOW}"
    )


def test_the_point_carries_the_standard_and_the_setup_time() -> None:
    p = compute_progress(order="CMD-1", operation=20, quantity=10, made=0, scrap=0, due_ns=NOW, now_ns=NOW,
                         standard_cycle_s=42.5, setup_s=900)
    assert (p.standard_cycle_s, p.setup_s) == (42.5, 900)
    assert p.fields()["standard_cycle_s"] == 42.5
    assert p.fields()["setup_s"] == 900.0
    assert isinstance(p.fields()["setup_s"], float)  # a float field on every point: InfluxDB keeps one type


def test_nonsense_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="quantity"):
        compute_progress(order="X", operation=1, quantity=0, made=0, scrap=0, due_ns=NOW, now_ns=NOW,
                         standard_cycle_s=10)

"""Grafana's InfluxQL macro and variable expansion, as reproduced in dashboards/macros.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dashboards.macros import ALL, TimeRange, Variable, expand, grafana_interval, regex_escape, variable_value

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_time_filter_relative_and_absolute() -> None:
    assert TimeRange("now-6h").influx() == "time >= now() - 6h and time <= now()"
    start = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    assert TimeRange(start, NOW).influx() == "time >= 1795759200000ms and time <= 1795780800000ms"
    assert TimeRange("now-72h").seconds(now=NOW) == 72 * 3600


def test_variables_follow_grafanas_influxql_rules() -> None:
    assert variable_value(Variable(all_value=".*")) == ".*"  # All with a custom all value: as it is
    assert variable_value(Variable(every_value=("a.b", "c"))) == r"(a\.b|c)"  # All without one: every value
    assert variable_value(Variable(selected=("tour-1",))) == "tour-1"
    assert variable_value(Variable(selected=("tour-1", "tour-2"))) == "(tour-1|tour-2)"
    assert variable_value(Variable(multi=False, include_all=False, selected=("a.b",))) == "a.b"  # plain: no escape
    assert regex_escape("CMD/2026.1") == r"CMD\/2026\.1"


def test_expand_replaces_macros_and_refuses_unknown_names() -> None:
    q = 'SELECT sum("x") / $__range_s FROM "m" WHERE "machine" =~ /^$machine$/ AND $timeFilter ' \
        "GROUP BY time($__interval) -- $__interval_ms"
    out = expand(q, time_range=TimeRange("now-1h"), now=NOW, interval="10s", interval_ms=10_000,
                 variables={"machine": Variable(selected=("m1", "m2"), all_value=".*")})
    assert out == ('SELECT sum("x") / 3600 FROM "m" WHERE "machine" =~ /^(m1|m2)$/ AND '
                   "time >= now() - 1h and time <= now() GROUP BY time(10s) -- 10000")
    with pytest.raises(KeyError, match="apprentice"):
        expand("SELECT 1 WHERE $apprentice", time_range=TimeRange("now-1h"), now=NOW, interval="1s",
               interval_ms=1000, variables={})
    assert ALL == "$__all"


@pytest.mark.parametrize(("range_ms", "points", "min_interval", "expected"), [
    # Answers of Grafana's own `rangeUtil.calculateInterval` (@grafana/data 11.6.16, run under Node).
    (12 * 3_600_000, 1850, None, ("20s", 20_000)),
    (72 * 3_600_000, 1850, None, ("2m", 120_000)),
    (72 * 3_600_000, 925, "1h", ("1h", 3_600_000)),
    (12 * 3_600_000, 308, None, ("2m", 120_000)),
    (90 * 86_400_000, 1000, None, ("2h", 7_200_000)),
    (6 * 3_600_000, 1850, "10s", ("10s", 10_000)),
    (3_600_000, 1850, None, ("2s", 2_000)),
])
def test_interval_as_grafana_computes_it(
    range_ms: int, points: int, min_interval: str | None, expected: tuple[str, int],
) -> None:
    assert grafana_interval(range_ms, points, min_interval) == expected

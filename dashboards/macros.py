"""Grafana's InfluxQL macro and variable expansion, reproduced so that tests can run a panel's query as Grafana
would send it (Grafana's InfluxDB data source, `datasource.ts`: `getTimeFilter`, `interpolateQueryExpr`).

- `$timeFilter`: `time >= now() - 6h and time <= now()` for a relative range `now-6h` → `now`; absolute ends
  become epoch milliseconds (`time >= 1700000000000ms and time <= 1700000600000ms`).
- `$__interval` (a duration such as `1m`), `$__interval_ms`, `$__range_s`, `$__range_ms`; `grafana_interval` gives
  the interval Grafana picks for a range and a panel width (`rangeUtil.calculateInterval`).
- A variable that is multi-value or has "All": the custom all value as it is when "All" is selected; otherwise
  each value regex-escaped, and several joined as `(a|b)`. A plain variable: its value as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

_RELATIVE = re.compile(r"^now-(\d+)([dhms])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+)\]\]|\$\{(\w+)\}")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
ALL = "$__all"


@dataclass(frozen=True)
class TimeRange:
    """A dashboard range: `now-6h`-style strings (Grafana's relative form) or aware datetimes."""

    start: str | datetime
    end: str | datetime = "now"

    def influx(self) -> str:
        """What `$timeFilter` becomes."""
        return f"time >= {_influx_time(self.start)} and time <= {_influx_time(self.end)}"

    def seconds(self, *, now: datetime) -> float:
        """Length of the range, for `$__range_s`."""
        return (_absolute(self.end, now) - _absolute(self.start, now)).total_seconds()


@dataclass(frozen=True)
class Variable:
    """A template variable as the dashboard defines it, with the selection to expand."""

    multi: bool = True
    include_all: bool = True
    all_value: str | None = None
    selected: Sequence[str] = (ALL,)
    every_value: Sequence[str] = field(default_factory=tuple)  # the options, used for "All" without all_value


def _influx_time(value: str | datetime) -> str:
    if isinstance(value, datetime):
        return f"{round(value.timestamp() * 1000)}ms"
    if value == "now":
        return "now()"
    match = _RELATIVE.match(value)
    if match is None:
        raise ValueError(f"not a Grafana relative time Copeau uses: {value!r}")
    return f"now() - {match.group(1)}{match.group(2)}"


def _absolute(value: str | datetime, now: datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    if value == "now":
        return now
    match = _RELATIVE.match(value)
    if match is None:
        raise ValueError(f"not a Grafana relative time Copeau uses: {value!r}")
    return now - timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


def regex_escape(value: str) -> str:
    """Grafana's `kbn.regexEscape`: a backslash before every regex metacharacter and `/`."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def variable_value(variable: Variable) -> str:
    """The text Grafana puts in place of a variable in an InfluxQL query."""
    values = list(variable.selected)
    if not variable.multi and not variable.include_all:
        return values[0]
    if values == [ALL]:
        if variable.all_value is not None:
            return variable.all_value
        values = list(variable.every_value)
    escaped = [regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(
    query: str,
    *,
    time_range: TimeRange,
    now: datetime,
    interval: str,
    interval_ms: int,
    variables: Mapping[str, Variable],
) -> str:
    """`query` with every macro and variable replaced. Raises KeyError on an unknown `$name`."""
    builtins = {
        "timeFilter": time_range.influx(),
        "__interval": interval,
        "interval": interval,
        "__interval_ms": str(interval_ms),
        "__range_s": str(round(time_range.seconds(now=now))),
        "__range_ms": str(round(time_range.seconds(now=now) * 1000)),
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in builtins:
            return builtins[name]
        if name in variables:
            return variable_value(variables[name])
        raise KeyError(f"query uses ${name}, which is neither a Grafana macro nor a variable: {query}")

    return _VARIABLE.sub(replace, query)


# Grafana's `rangeutil.roundInterval` (@grafana/data 11.6): (below this many ms, use this interval in ms).
_ROUNDED_MS = (
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000), (3_500, 2_000),
    (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000), (45_000, 30_000), (90_000, 60_000),
    (210_000, 120_000), (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000),
    (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000), (16_200_000, 10_800_000),
    (32_400_000, 21_600_000), (86_400_000, 43_200_000), (604_800_000, 86_400_000), (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)
_YEAR_MS = 31_536_000_000
_INTERVAL = re.compile(r"^(\d+)(ms|[smhdwy])$")
_INTERVAL_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
                "y": _YEAR_MS}


def _hms(ms: int) -> str:
    """Grafana's `secondsToHms`: the largest whole unit only (y, d, h, m, s, ms)."""
    seconds = ms / 1000
    for unit, size in (("y", 31_536_000), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{ms}ms"


def grafana_interval(range_ms: float, max_data_points: int, min_interval: str | None = None) -> tuple[str, int]:
    """`$__interval` and `$__interval_ms` as Grafana's `calculateInterval` gives them: the range over the panel's
    data points (its width in pixels), rounded to a round interval, and at least the panel's minimum interval."""
    raw = range_ms / max_data_points
    interval_ms = next((rounded for below, rounded in _ROUNDED_MS if raw < below), _YEAR_MS)
    if min_interval:
        match = _INTERVAL.match(min_interval)
        if match is None:
            raise ValueError(f"not a Grafana interval: {min_interval!r}")
        interval_ms = max(interval_ms, int(match.group(1)) * _INTERVAL_MS[match.group(2)])
    return _hms(interval_ms), interval_ms

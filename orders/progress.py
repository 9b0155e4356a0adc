"""Order progress: how far an operation of an order is, when it will be done, and how late. Pure: numbers in,
numbers out, time given by the caller (no clock, no I/O); `orders.tracking` feeds it from InfluxDB.

Theory of operation, per (order, operation):

- `made` = parts the machines counted for it (InfluxDB `part` points tagged with the order and operation);
- `scrap` = scrap parts declared for it at the end of sessions;
- `good` = made − scrap (never below 0), `remaining` = quantity − good (never below 0): scrap is made again;
- the rate is the recent one when there is one (parts counted after the first one in the window, over the time
  from the first to the last of them), else the standard cycle time (plus the set-up time if no part was made);
- `eta` = now + remaining / rate (now itself when nothing remains);
- `delay_s` = eta − due: above 0 the operation will be late by that much, below 0 it has that much margin.
  The due instant is the end of the due day in the school's time zone (`due_instant`).

The point also carries the operation's `standard_cycle_s` and `setup_s`, so that the dashboards can set the cycle
times the machines measured against the standard (InfluxDB holds no other copy of the orders database).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

NS = 1_000_000_000


class RateBasis(StrEnum):
    RECENT = "recent"  # measured on the machine over the recent window
    STANDARD = "standard"  # the operation's standard cycle time (no recent parts)
    DONE = "done"  # nothing remains


@dataclass(frozen=True)
class Progress:
    """One operation's progress at `at_ns`. `eta_ns` and `delay_s` follow the theory above."""

    order: str
    operation: int
    at_ns: int
    quantity: int
    made: int
    scrap: int
    good: int
    remaining: int
    rate_per_h: float  # parts per hour used for the ETA (0 when done)
    basis: RateBasis
    eta_ns: int
    due_ns: int
    delay_s: float
    # The operation's standard cycle time and set-up time (orders database), carried on the point so that a
    # dashboard can set measured cycle times against the standard. None only for a Progress built by hand.
    standard_cycle_s: float | None = None
    setup_s: float | None = None

    @property
    def late(self) -> bool:
        return self.delay_s > 0

    def fields(self) -> dict[str, bool | int | float | str]:
        """The `order_progress` point's fields (docs/data-contract.md)."""
        fields: dict[str, bool | int | float | str] = {
            "quantity": self.quantity,
            "made": self.made,
            "good": self.good,
            "scrap": self.scrap,
            "remaining": self.remaining,
            "rate_per_h": float(self.rate_per_h),
            "basis": self.basis.value,
            "eta_ts": self.eta_ns,
            "due_ts": self.due_ns,
            "delay_s": float(self.delay_s),
            "late": self.late,
        }
        if self.standard_cycle_s is not None:
            fields["standard_cycle_s"] = float(self.standard_cycle_s)
        if self.setup_s is not None:
            fields["setup_s"] = float(self.setup_s)
        return fields


def recent_rate(parts: Sequence[tuple[int, int]]) -> float | None:
    """Parts per second from `(ts_ns, count)` part points of one operation, in time order.

    The first point only marks the start (its parts were made before it), so the rate is the parts of the
    later points over the time from the first point to the last. None with fewer than two points in time.
    """
    if len(parts) < 2:
        return None
    span_ns = parts[-1][0] - parts[0][0]
    if span_ns <= 0:
        return None
    return sum(count for _, count in parts[1:]) / (span_ns / NS)


def compute_progress(
    *,
    order: str,
    operation: int,
    quantity: int,
    made: int,
    scrap: int,
    due_ns: int,
    now_ns: int,
    standard_cycle_s: float,
    setup_s: float = 0.0,
    rate_per_s: float | None = None,
) -> Progress:
    """Progress of one operation (see the module docstring). `rate_per_s` is the recent rate, if any."""
    if quantity <= 0 or made < 0 or scrap < 0 or standard_cycle_s <= 0:
        raise ValueError("quantity and standard_cycle_s must be > 0; made and scrap must be ≥ 0")
    good = max(made - scrap, 0)
    remaining = max(quantity - good, 0)
    if remaining == 0:
        basis, rate, eta_ns = RateBasis.DONE, 0.0, now_ns
    elif rate_per_s is not None and rate_per_s > 0 and math.isfinite(rate_per_s):
        basis, rate = RateBasis.RECENT, rate_per_s
        eta_ns = now_ns + round(remaining / rate * NS)
    else:
        basis, rate = RateBasis.STANDARD, 1 / standard_cycle_s
        still_to_set_up = setup_s if made == 0 else 0.0
        eta_ns = now_ns + round((remaining * standard_cycle_s + still_to_set_up) * NS)
    return Progress(
        order=order, operation=operation, at_ns=now_ns, quantity=quantity, made=made, scrap=scrap, good=good,
        remaining=remaining, rate_per_h=rate * 3600, basis=basis, eta_ns=eta_ns, due_ns=due_ns,
        delay_s=(eta_ns - due_ns) / NS, standard_cycle_s=standard_cycle_s, setup_s=setup_s,
    )


def due_instant(due: date, timezone: str) -> int:
    """The end of the due day in `timezone` (midnight starting the next day), in ns since the epoch."""
    next_midnight = datetime.combine(due + timedelta(days=1), time(0), tzinfo=ZoneInfo(timezone))
    return int(next_midnight.timestamp()) * NS

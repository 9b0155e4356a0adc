"""Hardware part counters: turn two successive readings into a number of parts, across wraps and resets.

A retrofit module counts end-of-program (M30) pulses in a 16- or 32-bit register. Between two readings the
counter can:

* go up: the difference is the number of parts;
* wrap past its maximum (2**32 - 1 → 0): the old value was near the top and the new one is near 0;
* reset to 0 because the module lost power: the new value is the number of parts made since power-on.

A module that lost power was unreachable for a while (it takes seconds to boot), so the caller says whether
the machine was unreachable between the two readings (`outage`). Then a decrease is a reset. Without an
outage, a decrease near the top of the range is a wrap and any other decrease a reset: a wrap is assumed
only when the old value was within `wrap_window` counts of the maximum and the new one within `wrap_window`
of 0 (no machine makes 10,000 parts between two polls).

A jump *up* of more than `wrap_window` is not parts either: no machine makes that many between two readings.
It is a module that was replaced or preset; the new value becomes the baseline (`rebased`) and no part is
counted, rather than billions.

Known limit: a counter that wraps *while the module is unreachable* is taken for a reset, and the parts
between the last reading and the top of the range are missed. Counters start at 0 and a school's machine
needs years to reach 2**32 parts, so this needs a wrap and an outage at the same moment.

What no reader of such a counter can know: parts counted after the last reading and before a power cut
(they vanished with the module's memory), and a reset followed by more parts than the counter held before,
before the first reading after power-on (the counter looks like it went up). docs/architecture.md explains
why the simulator's scenarios cut power only when the machine is idle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CounterStep:
    """What one reading adds: `parts` (≥ 0) and how the counter moved."""

    parts: int
    reset: bool = False
    wrapped: bool = False
    rebased: bool = False  # an implausible jump: taken as a new baseline, no part counted


def counter_step(
    previous: int | None, current: int, *, modulus: int, wrap_window: int, outage: bool = False
) -> CounterStep:
    """Parts made between the reading `previous` and the reading `current` of a counter modulo `modulus`.

    `previous` is None for the very first reading of a machine: it only sets the baseline (parts made
    before Copeau ever looked cannot be attributed to anything). `outage` is True when the machine could
    not be read at some point between the two readings.
    """
    if not 0 <= current < modulus:
        raise ValueError(f"counter value {current} outside 0..{modulus - 1}")
    if previous is None:
        return CounterStep(parts=0)
    if current >= previous:
        if current - previous > wrap_window:
            return CounterStep(parts=0, rebased=True)
        return CounterStep(parts=current - previous)
    if not outage and previous >= modulus - wrap_window and current < wrap_window:
        return CounterStep(parts=current + modulus - previous, wrapped=True)
    return CounterStep(parts=current, reset=True)

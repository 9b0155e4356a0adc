"""Pure arithmetic of the benchmark: percentiles, median/min/max summaries, rate ladders, visibility intervals.

Theory of operation: every figure the suite publishes is a `Summary` of several runs (median, min, max, n).
A polled machine's missed intervals are counted from the gaps between its polls (`poll_gaps`). No I/O and no clock
here, so all of it is unit-tested.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0 ≤ p ≤ 100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """A figure measured over several runs: the median, the smallest and the largest, and how many runs."""

    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, fmt: str = "{:,.0f}", unit: str = "") -> str:
        """`12,345 (11,900–12,700)` : the median, then the range over the runs."""
        if self.n == 1:
            return f"{fmt.format(self.median)}{unit}"
        return f"{fmt.format(self.median)}{unit} ({fmt.format(self.min)}–{fmt.format(self.max)})"


def summarize(values: Iterable[float]) -> Summary:
    """Median, min and max of per-run values (at least one)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no runs to summarize")
    return Summary(median=percentile(vals, 50), min=min(vals), max=max(vals), n=len(vals))


def ladder(estimate: float, fractions: Sequence[float], *, step: float = 500) -> list[float]:
    """Offered rates to try around a saturation estimate, rounded down to `step`, increasing, without repeats.

    E.g. `ladder(20_345, (0.8, 0.9, 1.0))` → [16000, 18000, 20000].
    """
    if estimate <= 0:
        return []
    rates = sorted({math.floor(estimate * f / step) * step for f in fractions})
    return [r for r in rates if r > 0]


def highest_passing(results: Sequence[tuple[float, bool]]) -> float | None:
    """The highest rate that passed, in a ladder tried from low to high, stopping at the first failure.

    A rate that passes above a failed one is not counted: the result must hold for every rate below it.
    """
    best = None
    for rate, ok in sorted(results):
        if not ok:
            break
        best = rate
    return best


@dataclass(frozen=True)
class PollGaps:
    """How one machine was read during a window, seen from the machine (see `poll_gaps`)."""

    reads: int
    missed: int
    max_gap_s: float


def poll_gaps(reads: Sequence[float], *, interval_s: float, start: float, end: float) -> PollGaps:
    """Missed intervals of one polled machine in the window [start, end] (seconds, one clock).

    A poll is due every `interval_s`. Reading late by less than half an interval is only jitter; a gap of g
    seconds between two reads (or between the window's start and the first read, or the last read and the
    window's end) counts round(g / interval_s) - 1 missed intervals: 1.4 intervals → 0, 1.6 → 1, 3 → 2.
    A machine never read in the window missed every interval of it.
    """
    inside = sorted(r for r in reads if start <= r <= end)
    if not inside:
        return PollGaps(reads=0, missed=round((end - start) / interval_s), max_gap_s=end - start)
    gaps = [b - a for a, b in itertools.pairwise(inside)]
    # At the edges the read before the window (or after it) is not looked at: the gap to the window's edge is a
    # lower bound of the real one, counted the same way.
    edges = [inside[0] - start, end - inside[-1]]
    missed = sum(max(0, round(g / interval_s) - 1) for g in (*gaps, *edges))
    return PollGaps(reads=len(inside), missed=missed, max_gap_s=max(gaps, default=0.0))

"""Reconnect delays: full-jitter capped exponential backoff, as a pure iterator (testable without sleeping).

See the AWS "Exponential Backoff And Jitter" note: each delay is drawn uniformly in [0, min(cap, base * 2**n)],
so that many clients that lost the same server do not come back in lock-step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def full_jitter(
    *, base_s: float = 0.2, cap_s: float = 5.0, rng: random.Random | None = None, floor_s: float = 0.05
) -> Iterator[float]:
    """Yield an endless schedule of delays in seconds. `floor_s` avoids a busy loop on a 0 draw."""
    draw = rng or random.Random()
    attempt = 0
    while True:
        ceiling = min(cap_s, base_s * 2**attempt)
        yield max(floor_s, draw.uniform(0, ceiling))
        if ceiling < cap_s:
            attempt += 1

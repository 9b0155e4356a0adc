"""Unknown badges are limited per kiosk: trying badge codes one after the other at a machine must not work.

Pure and clock-free: the caller gives the time (seconds, any monotonic origin). After `limit` unknown badges
within `window_s` on one kiosk, every scan there is refused until the oldest of them leaves the window.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from orders.errors import TooManyAttempts


class BadgeThrottle:
    def __init__(self, *, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()  # kiosk requests and MQTT badge scans come from different threads

    def check(self, kiosk: str, *, now_s: float) -> None:
        """Raise TooManyAttempts when `kiosk` is locked out at `now_s`."""
        with self._lock:
            failures = self._recent(kiosk, now_s)
            if len(failures) >= self.limit:
                wait = failures[0] + self.window_s - now_s
                raise TooManyAttempts(machine=kiosk, retry_after_s=max(1, math.ceil(wait)))

    def unknown_badge(self, kiosk: str, *, now_s: float) -> None:
        """Count one unknown badge at `kiosk`."""
        with self._lock:
            self._recent(kiosk, now_s).append(now_s)

    def _recent(self, kiosk: str, now_s: float) -> deque[float]:
        failures = self._failures.setdefault(kiosk, deque())
        while failures and failures[0] <= now_s - self.window_s:
            failures.popleft()
        return failures

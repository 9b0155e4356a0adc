"""The progress tracker: every `web.progress_interval_s`, the progress of each operation of each open order is
computed (`orders.progress`) from InfluxDB's part counts and the declared scrap, and written to InfluxDB as
`order_progress` points (docs/data-contract.md) when it changed, and at least every `heartbeat_s` (so that a
dashboard's `last()` always finds a recent ETA and delay, which move with time even when no part is made).

Runs in a thread of the web service (`copeau web`); `run_once()` serves the demo and the tests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from copeau.errors import StoreError
from gateway.influx import InfluxWriter, StoreStopped
from gateway.lineprotocol import encode_line
from orders import catalog
from orders.counts import PartCounts
from orders.errors import CountsUnavailable
from orders.progress import NS, Progress, compute_progress, due_instant, recent_rate

log = logging.getLogger(__name__)

MEASUREMENT = "order_progress"


def progress_line(progress: Progress, *, site: str) -> str:
    """One `order_progress` point (line protocol, ns)."""
    tags = {"site": site, "order": progress.order, "operation": str(progress.operation)}
    return encode_line(MEASUREMENT, tags, progress.fields(), progress.at_ns)


@dataclass
class ProgressTracker:
    site: str
    sessions: sessionmaker[Session]
    counts: PartCounts
    writer: InfluxWriter
    timezone: str = "Europe/Paris"
    rate_window_s: float = 1800.0
    interval_s: float = 10.0
    heartbeat_s: float = 300.0
    # Told every progress computed, before it is written (in the tracker's thread): the live board (web.live)
    # keeps the latest in memory. Must not block.
    on_progress: Callable[[list[Progress]], None] | None = None
    _last: dict[tuple[str, int], tuple[tuple[int, ...], int]] = field(default_factory=dict, init=False)
    _wake: threading.Event = field(default_factory=threading.Event, init=False)

    def compute(self, *, now: datetime) -> list[Progress]:
        """Progress of every operation of every open order, at `now`."""
        now_ns = int(now.timestamp()) * NS + now.microsecond * 1000
        since_ns = now_ns - int(self.rate_window_s * NS)
        out: list[Progress] = []
        with self.sessions() as db:
            for order in catalog.list_orders(db):
                made = self.counts.made_by_operation(order=order.reference)
                scrap = catalog.declared_scrap(db, order_id=order.id)
                due_ns = due_instant(order.due_date, self.timezone)
                for op in order.operations:
                    recent = self.counts.recent_parts(order=order.reference, operation=op.sequence,
                                                      since_ns=since_ns)
                    out.append(compute_progress(
                        order=order.reference, operation=op.sequence, quantity=order.quantity,
                        made=made.get(op.sequence, 0), scrap=scrap.get(op.sequence, 0), due_ns=due_ns,
                        now_ns=now_ns, standard_cycle_s=op.standard_cycle_s, setup_s=op.setup_s,
                        rate_per_s=recent_rate(recent),
                    ))
        return out

    def write(self, progress: list[Progress], *, force: bool = False) -> int:
        """Write the points that changed (or are due for a heartbeat, or all with `force`). Returns how many."""
        lines: list[str] = []
        keys: list[tuple[tuple[str, int], tuple[tuple[int, ...], int]]] = []
        for p in progress:
            key = (p.order, p.operation)
            state = (p.made, p.scrap, p.remaining, p.quantity)
            last = self._last.get(key)
            if force or last is None or last[0] != state or p.at_ns - last[1] >= self.heartbeat_s * NS:
                lines.append(progress_line(p, site=self.site))
                keys.append((key, (state, p.at_ns)))
        if not lines:
            return 0
        result = self.writer.write(lines)
        for rejected in result.rejected:
            log.error("InfluxDB refused an order_progress point (%s): %s", rejected.error, rejected.line)
        self._last.update(keys)
        return result.stored

    def run_once(self, *, now: datetime | None = None, force: bool = False) -> list[Progress]:
        """Compute and write once; returns the progress computed."""
        progress = self.compute(now=now or datetime.now(UTC))
        if self.on_progress is not None:
            self.on_progress(progress)
        self.write(progress, force=force)
        return progress

    def poke(self) -> None:
        """Recompute soon (a declaration changed the scrap)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set. InfluxDB or database trouble is logged once and retried next round."""
        failing = False
        while not stop.is_set():
            try:
                self.run_once()
            except StoreStopped:
                return
            except (CountsUnavailable, StoreError, SQLAlchemyError) as exc:
                if not failing:
                    log.warning("order progress not updated (%s); retrying every %.0f s", exc, self.interval_s)
                failing = True
            else:
                if failing:
                    log.info("order progress updated again")
                failing = False
            self._wake.wait(self.interval_s)
            self._wake.clear()

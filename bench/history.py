"""Months of a school's history in seconds: the points Copeau would have written, for the dashboard benchmark.

Theory of operation. A school calendar, machines, orders and apprentices are drawn from one seed, then played in
time-compressed form (no waiting: every time is computed) into the exact points production writes:

- **Calendar**: the workshop produces Monday to Thursday, 08:30–12:00 and 13:30–16:00 (6 h a day, 24 h a week);
  machines are switched off in between (state `offline`), back `idle` at the next session. The calendar is laid so
  that the history ends *now* at 11:00 on a Thursday, mid-session: the live board then shows a working workshop,
  and its 12 h range and the 72 h of Commandes hold as much production as they ever do. It is a school clock
  without daylight-saving changes (a bench needs no DST).
- **Machines**: lathes and mills, every second one reports quality (OPC UA `good`), the others are Modbus retrofits.
  Each works through its own queue of operations; what a machine does within an operation comes from the
  simulators' scenario code (`simulators.scenario.plan`: idle, cycle, idle, alarm every N parts...), with the
  operation's standard as the nominal cycle, stretched by the apprentice's learning factor (1.35 → 1.0 over the
  weeks). A step that would run past the end of a session waits for the next one.
- **Apprentices**: one per machine and session, pseudonymous codes only (`AP-0001`...), so every event carries the
  job context (order, operation, apprentice) as the collector stamps it.
- **Events → points** as the gateway writes them: `copeau.contract.Event` → `gateway.lineprotocol.event_line` with
  `gateway.service.context_tags`. A cycle is five points (state running, cycle start, cycle end, part, state idle).
- **Orders → `order_progress`** as the tracker (`orders.tracking`) writes them: an order opens 3 days before its
  first operation starts and closes 1 day after its last part; while open, every operation gets a point at the
  first 10 s tick after its numbers change (a part, a scrap declaration at the end of a session) and at least
  every 5 minutes (the heartbeat), computed by `orders.progress.compute_progress` with the recent rate.

Only the points are produced here (`History.batches()`); writing and timing are the caller's (`bench/dashboards.py`).
"""

from __future__ import annotations

import bisect
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from copeau.config import Simulation
from copeau.contract import (
    AlarmData,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventContext,
    EventKind,
    MachineState,
    PartData,
    StateData,
)
from gateway.lineprotocol import event_line
from gateway.service import context_tags
from orders.progress import NS, compute_progress, recent_rate
from orders.tracking import progress_line
from simulators.scenario import Step, plan

SESSIONS = ((time(8, 30), time(12, 0)), (time(13, 30), time(16, 0)))  # Monday..Thursday
SCHOOL_DAYS = (0, 1, 2, 3)
NOW_LOCAL = time(11, 0)  # the history ends at 11:00 on a Thursday, school time
TICK_S = 10  # the tracker's interval (web.progress_interval_s)
HEARTBEAT_S = 300  # the tracker writes every operation at least this often
RATE_WINDOW_S = 1800  # the tracker's recent-rate window
OPEN_BEFORE_S = 3 * 86_400  # an order is entered three days before its first operation starts
CLOSE_AFTER_S = 86_400  # and closed by a maître a day after its last part
SCRAP_RATE = 0.03
_KIND = {StateData: EventKind.STATE, CycleData: EventKind.CYCLE, PartData: EventKind.PART, AlarmData: EventKind.ALARM}


@dataclass
class Operation:
    """One operation of an order, made on one machine."""

    order: str
    sequence: int
    quantity: int
    standard_cycle_s: float
    setup_s: float
    due: date
    parts: list[tuple[int, int]] = field(default_factory=list)  # (ts_ns, count) as the machine counted them
    scrap_declared: list[tuple[int, int]] = field(default_factory=list)  # (ts_ns, scrap) declared at session end
    started_ns: int | None = None
    done_ns: int | None = None


@dataclass
class Order:
    reference: str
    operations: list[Operation]
    open_ns: int = 0
    close_ns: int | None = None


@dataclass
class Counts:
    """What was produced: points per measurement, and the facts behind them."""

    points: Counter[str] = field(default_factory=Counter)
    cycles: int = 0
    parts: int = 0
    orders: int = 0
    operations: int = 0


class History:
    """`days` of history of a `machines`-machine school ending at `now_ns`, as line-protocol batches."""

    def __init__(self, *, days: int, machines: int, now_ns: int, site: str = "ecole-bench", seed: int = 7,
                 apprentices: int | None = None, batch: int = 5000) -> None:
        if days < 1 or machines < 1:
            raise ValueError("days and machines must be ≥ 1")
        self.days, self.machines, self.now_ns, self.site, self.seed, self.batch = (
            days, machines, now_ns, site, seed, batch)
        self.apprentices = [f"AP-{i:04d}" for i in range(1, (apprentices or machines + machines // 5) + 1)]
        self.counts = Counts()
        self._orders: list[Order] = []
        # School clock: the naive local time `_now_local` is `now_ns`.
        today = datetime.now().date()  # only the weekday pattern matters: see _now_local
        thursday = today - timedelta(days=(today.weekday() - 3) % 7)
        self._now_local = datetime.combine(thursday, NOW_LOCAL)
        self._start_local = self._now_local - timedelta(days=days)
        self._sessions = self.sessions()

    # --- the school clock -----------------------------------------------------------------------------------------

    def _ns(self, local: datetime) -> int:
        return self.now_ns - round((self._now_local - local).total_seconds() * NS)

    def _local(self, ns: int) -> datetime:
        return self._now_local - timedelta(seconds=(self.now_ns - ns) / NS)

    def sessions(self) -> list[tuple[int, int]]:
        """The production sessions (start, end) in ns, oldest first; the last one is cut at now."""
        out = []
        day = self._start_local.date()
        while day <= self._now_local.date():
            if day.weekday() in SCHOOL_DAYS:
                for start, end in SESSIONS:
                    s, e = datetime.combine(day, start), datetime.combine(day, end)
                    if e <= self._start_local or s >= self._now_local:
                        continue
                    out.append((self._ns(max(s, self._start_local)), self._ns(min(e, self._now_local))))
            day += timedelta(days=1)
        return out

    # --- everything -------------------------------------------------------------------------------------------------

    def batches(self) -> Iterator[list[str]]:
        """The history's lines in batches of about `batch` lines: first the machines' events, then the orders'
        progress (which needs every part to be known)."""
        pending: list[str] = []
        for machine in range(self.machines):
            for line in self._machine_lines(machine):
                pending.append(line)
                if len(pending) >= self.batch:
                    yield pending
                    pending = []
        for line in self._progress_lines():
            pending.append(line)
            if len(pending) >= self.batch:
                yield pending
                pending = []
        if pending:
            yield pending

    # --- machines ---------------------------------------------------------------------------------------------------

    def _machine_lines(self, index: int) -> Iterator[str]:
        run = _MachineRun(self, index)
        for session_no, (start, end) in enumerate(self._sessions):
            yield from run.session(session_no, start, end)

    def _new_operation(
        self, rng: random.Random, *, lathe: bool, start_ns: int, last: Order | None,
    ) -> tuple[Operation, Order]:
        """The machine's next operation: the second operation (another clamping) of the order it just made, or
        the first of a new order."""
        if last is not None and len(last.operations) == 1 and rng.random() < 0.3:
            order = last  # the same part, second clamping
            sequence = 20
            quantity = last.operations[0].quantity
            due = last.operations[0].due
        else:
            self.counts.orders += 1
            order = Order(reference=f"CMD-B{self.counts.orders:04d}", operations=[],
                          open_ns=start_ns - OPEN_BEFORE_S * NS)
            self._orders.append(order)
            sequence = 10
            quantity = rng.choice((5, 10, 12, 20, 25, 30, 40, 50, 60, 80, 100))
            due = (self._local(start_ns) + timedelta(days=rng.randint(5, 21))).date()
        standard = round(rng.uniform(60, 300) if lathe else rng.uniform(120, 600), 1)
        op = Operation(order=order.reference, sequence=sequence, quantity=quantity, standard_cycle_s=standard,
                       setup_s=round(rng.uniform(600, 2700)), due=due)
        order.operations.append(op)
        self.counts.operations += 1
        return op, order

    # --- order progress ---------------------------------------------------------------------------------------------

    def _progress_lines(self) -> Iterator[str]:
        tick = TICK_S * NS
        for order in self._orders:
            ops = order.operations
            done = [op.done_ns for op in ops]
            close = None if None in done else max(d for d in done if d is not None) + CLOSE_AFTER_S * NS
            order.close_ns = close
            start = -(-max(order.open_ns, self.now_ns - self.days * 86_400 * NS) // tick) * tick
            stop = min(close if close is not None else self.now_ns, self.now_ns)
            if start > stop:
                continue
            due_ns = self._ns(datetime.combine(ops[0].due + timedelta(days=1), time(0)))
            for op in ops:
                yield from self._operation_progress(op, start=start, stop=stop, due_ns=due_ns)

    def _operation_progress(self, op: Operation, *, start: int, stop: int, due_ns: int) -> Iterator[str]:
        """The tracker's points for one operation between `start` and `stop` (both on the 10 s grid)."""
        tick = TICK_S * NS
        # Instants at which the operation's numbers change, moved to the next tick (when the tracker sees them).
        changes = sorted({-(-ts // tick) * tick for ts, _ in op.parts} | {-(-ts // tick) * tick
                                                                         for ts, _ in op.scrap_declared})
        part_times = [ts for ts, _ in op.parts]
        scrap_times = [ts for ts, _ in op.scrap_declared]
        scrap_cum = [0]
        for _, n in op.scrap_declared:
            scrap_cum.append(scrap_cum[-1] + n)
        at = start
        i = bisect.bisect_left(changes, start)
        while at <= stop:
            made = bisect.bisect_right(part_times, at)
            scrap = scrap_cum[bisect.bisect_right(scrap_times, at)]
            window = op.parts[bisect.bisect_left(part_times, at - RATE_WINDOW_S * NS):made]
            progress = compute_progress(
                order=op.order, operation=op.sequence, quantity=op.quantity, made=made, scrap=scrap, due_ns=due_ns,
                now_ns=at, standard_cycle_s=op.standard_cycle_s, setup_s=op.setup_s, rate_per_s=recent_rate(window),
            )
            self.counts.points["order_progress"] += 1
            yield progress_line(progress, site=self.site)
            # Next write: the next change after this one, or the heartbeat, whichever comes first.
            while i < len(changes) and changes[i] <= at:
                i += 1
            heartbeat = at + HEARTBEAT_S * NS
            at = min(changes[i], heartbeat) if i < len(changes) else heartbeat

    def summary(self) -> dict[str, object]:
        """What was generated, for the results file."""
        open_now = sum(1 for o in self._orders if o.close_ns is None or o.close_ns > self.now_ns)
        by_kind: defaultdict[str, int] = defaultdict(int, self.counts.points)
        return {
            "days": self.days, "machines": self.machines, "apprentices": len(self.apprentices), "seed": self.seed,
            "sessions_per_machine": len(self._sessions),
            "hours_of_production_per_week": len(SCHOOL_DAYS) * sum(
                (datetime.combine(date.min, e) - datetime.combine(date.min, s)).total_seconds() / 3600
                for s, e in SESSIONS), "cycles": self.counts.cycles, "parts": self.counts.parts,
            "orders": self.counts.orders, "operations": self.counts.operations, "orders_open_at_the_end": open_now,
            "points": dict(sorted(by_kind.items())), "points_total": sum(by_kind.values()),
        }


class _MachineRun:
    """One machine played session after session: its queue of operations, the scenario's steps, its events."""

    def __init__(self, history: History, index: int) -> None:
        self.h = history
        self.rng = random.Random(history.seed * 1000 + index)  # a reproducible history, not cryptography
        self.index = index
        self.lathe = index % 2 == 0
        self.name = f"{'tour' if self.lathe else 'fraiseuse'}-{index // 2 + 1:02d}"
        self.reports_quality = index % 4 < 2  # half the machines are OPC UA and report good parts
        self.seq = self.counter = self.good_made = self.bad_in_session = 0
        self.first_ns = history._sessions[0][0] if history._sessions else history.now_ns
        self.job: Operation | None = None
        self.last_order: Order | None = None
        self.steps: Iterator[Step] = iter(())
        self.step: Step | None = None
        self.setup_left_ns = 0

    def emit(self, ts: int, data: StateData | CycleData | PartData | AlarmData, ctx: EventContext | None) -> str:
        """One event, as the collector publishes it, as the gateway writes it."""
        event = Event(site=self.h.site, machine=self.name, kind=_KIND[type(data)], seq=self.seq, ts=ts, data=data,
                      ctx=ctx)
        self.seq += 1
        self.h.counts.points[event.kind.value] += 1
        return event_line(event, context_tags=context_tags(event))

    def _next_job(self, t: int) -> Operation:
        job, self.last_order = self.h._new_operation(self.rng, lathe=self.lathe, start_ns=t, last=self.last_order)
        job.started_ns = t
        self.setup_left_ns = round(job.setup_s * NS)
        self.good_made = 0
        sim = Simulation(seed=self.rng.randrange(1 << 30), cycle_s=job.standard_cycle_s,
                         cycle_jitter_s=0.08 * job.standard_cycle_s, idle_s=max(15.0, 0.2 * job.standard_cycle_s),
                         alarm_every=self.rng.randint(25, 60), alarm_s=self.rng.uniform(60, 600))
        self.steps = plan(sim)
        self.step = None
        return job

    def session(self, session_no: int, start: int, end: int) -> Iterator[str]:
        """The events of one session, [start, end): idle at the start, offline at the end (unless it is now)."""
        h = self.h
        apprentice = h.apprentices[(self.index + 7 * session_no) % len(h.apprentices)]
        week = (start - self.first_ns) / (7 * 86_400 * NS)
        learning = max(1.0, 1.35 - 0.035 * week - 0.05 * self.rng.random())  # slower at first, then the standard
        t = start
        yield self.emit(t, StateData(state=MachineState.IDLE, previous=MachineState.OFFLINE), None)
        self.bad_in_session = 0
        while t < end:
            job = self.job or self._next_job(t)
            self.job = job
            if self.setup_left_ns > 0:  # setting the machine up: idle, no events
                used_ns = min(self.setup_left_ns, end - t)
                t += used_ns
                self.setup_left_ns -= used_ns
                continue
            self.step = self.step or next(self.steps)
            duration_s = self.step.duration_s * (learning if self.step.kind == "cycle" else 1.0)
            step_end = t + round(duration_s * NS)
            if step_end > end:
                break  # the step waits for the next session
            ctx = EventContext(order=job.order, operation=job.sequence, apprentice=apprentice)
            if self.step.kind == "cycle":
                yield from self._cycle(job, t, step_end, duration_s, ctx)
            elif self.step.kind == "alarm":
                yield from self._alarm(t, step_end, ctx)
            t = step_end
            self.step = None
            if self.good_made >= job.quantity:  # done: its scrap is declared now, then the next operation
                job.done_ns = t
                if self.bad_in_session:
                    job.scrap_declared.append((t, self.bad_in_session))
                self.bad_in_session = 0
                self.job = None
        if self.job is not None and self.bad_in_session:  # scrap is declared at the kiosk at the end of a session
            self.job.scrap_declared.append((end, self.bad_in_session))
        if end < h.now_ns:
            yield self.emit(end, StateData(state=MachineState.OFFLINE, previous=MachineState.IDLE), None)

    def _cycle(self, job: Operation, t: int, end: int, duration_s: float, ctx: EventContext) -> Iterator[str]:
        yield self.emit(t, StateData(state=MachineState.RUNNING, previous=MachineState.IDLE), ctx)
        yield self.emit(t, CycleData(phase=CyclePhase.START), ctx)
        yield self.emit(end, CycleData(phase=CyclePhase.END, started_ts=t, duration_s=duration_s,
                                       outcome=CycleOutcome.COMPLETED), ctx)
        bad = self.rng.random() < SCRAP_RATE
        self.counter += 1
        good = None if not self.reports_quality else 0 if bad else 1
        yield self.emit(end, PartData(count=1, good=good, counter=self.counter), ctx)
        yield self.emit(end, StateData(state=MachineState.IDLE, previous=MachineState.RUNNING), ctx)
        self.h.counts.cycles += 1
        self.h.counts.parts += 1
        job.parts.append((end, 1))
        self.bad_in_session += bad
        self.good_made += not bad

    def _alarm(self, t: int, end: int, ctx: EventContext) -> Iterator[str]:
        yield self.emit(t, AlarmData(active=True, code="E17", text="Arrêt d'urgence"), ctx)
        yield self.emit(t, StateData(state=MachineState.ALARM, previous=MachineState.IDLE), ctx)
        yield self.emit(end, AlarmData(active=False, code="E17"), ctx)
        yield self.emit(end, StateData(state=MachineState.IDLE, previous=MachineState.ALARM), ctx)

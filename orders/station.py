"""What happens at a machine: an apprentice badges in, picks a job, works, declares good and scrap parts.

Theory of operation. Each machine's station is in one of three steps:

    idle ──badge──▶ identified ──job──▶ running ──declaration──▶ idle
                     │  ▲ badge (the last one wins)   │  own badge: kiosk shows the declaration form;
                     └──┴── cancel / time-out ──▶ idle │  reader (MQTT): ends the session, declaration later

- *running* is in the database (an open work session; at most one per machine, a unique index says so);
  *identified* lives in memory for `web.identify_timeout_s` (a restart forgets it: scan the badge again).
- Every scanned code goes to `scan()`: a code shaped like a job card (`<order>/<operation>`, e.g.
  `CMD-2026-017/20`) is a job, anything else a badge. So a hardware reader publishing on
  `copeau/v1/<site>/<machine>/badge` drives the same flow as the kiosk: badge, then job card.
- A scan that the table below does not allow is refused with a typed error and changes nothing: a job before
  any badge (NotIdentified), another badge or job on a running machine (MachineBusy), a declaration with no
  session (NoOpenSession). So are an unknown badge (and after too many, every scan at that kiosk for a while),
  a job for another kind of machine, and a declaration larger than the parts the machine counted.
- When a session starts or ends, the machine's job context is published retained (`JobContext`, with the
  apprentice's pseudonymous code, never a name); the collector stamps every event with it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from copeau.config import Machine, WebSettings
from copeau.contract import EventContext, JobContext
from orders import catalog
from orders.counts import PartCounts
from orders.errors import (
    AlreadyDeclared,
    CountsUnavailable,
    DeclarationTooLarge,
    InvalidValue,
    MachineBusy,
    NoOpenSession,
    NotIdentified,
    OrdersError,
    SessionNotFound,
    SessionStillOpen,
    UnknownBadge,
    UnknownMachine,
    UnknownScrapReason,
    WrongMachine,
)
from orders.models import Apprentice, Operation, Order, QualityDeclaration, ScrapCount, ScrapReason, WorkSession
from orders.throttle import BadgeThrottle

log = logging.getLogger(__name__)

NS = 1_000_000_000
# A reader that reads one badge twice must not end the session it just started.
READER_DOUBLE_READ_S = 10.0


class Step(StrEnum):
    IDLE = "idle"
    IDENTIFIED = "identified"
    RUNNING = "running"


class Scan(StrEnum):
    BADGE = "badge"  # a known badge (on a running machine: someone else's)
    OWN_BADGE = "own_badge"  # the badge of the apprentice whose session is running
    JOB = "job"
    DECLARE = "declare"  # good and scrap declared: the session closes
    END = "end"  # own badge on a hardware reader: the session closes, to be declared later
    CANCEL = "cancel"


class Via(StrEnum):
    KIOSK = "kiosk"
    READER = "reader"  # a hardware badge reader publishing on MQTT
    MAITRE = "maitre"  # a correction by a maître


TRANSITIONS: dict[Step, dict[Scan, Step]] = {
    Step.IDLE: {Scan.BADGE: Step.IDENTIFIED, Scan.CANCEL: Step.IDLE},
    Step.IDENTIFIED: {Scan.BADGE: Step.IDENTIFIED, Scan.JOB: Step.RUNNING, Scan.CANCEL: Step.IDLE},
    Step.RUNNING: {Scan.OWN_BADGE: Step.RUNNING, Scan.DECLARE: Step.IDLE, Scan.END: Step.IDLE,
                   Scan.CANCEL: Step.RUNNING},
}


class IllegalScan(Exception):
    """A scan the transition table does not allow in this step. The service turns it into a domain error."""

    def __init__(self, step: Step, scan: Scan) -> None:
        super().__init__(f"{scan} is not allowed when the station is {step}")
        self.step = step
        self.scan = scan


def step_after(step: Step, scan: Scan) -> Step:
    """The next step, or IllegalScan (and the step stays as it was)."""
    try:
        return TRANSITIONS[step][scan]
    except KeyError:
        raise IllegalScan(step, scan) from None


# -- what the kiosk shows


@dataclass(frozen=True)
class JobView:
    code: str  # the job card, e.g. CMD-2026-017/20
    order: str
    operation: int
    customer: str
    part_number: str
    quantity: int
    due_date: str  # ISO date
    machine_kind: str
    standard_cycle_s: float


@dataclass(frozen=True)
class StationView:
    """A machine's station as the kiosk shows it. Counts are None when InfluxDB could not be read."""

    machine: str
    machine_name: str
    machine_kind: str
    step: Step
    first_name: str | None = None  # shown at the kiosk only; never published
    apprentice_code: str | None = None
    job: JobView | None = None
    started_at: datetime | None = None
    session_parts: int | None = None  # parts counted on this machine during this session
    job_good: int | None = None  # the job's good parts so far, all machines and sessions (made − declared scrap)
    last_cycle_s: float | None = None
    counts_ok: bool = True
    ask_declaration: bool = False  # the apprentice scanned their own badge again: show the declaration form
    planned: tuple[JobView, ...] = ()
    ended_session: int | None = None  # the session that this action closed


@dataclass
class _Identified:
    apprentice_id: int
    until: datetime


@dataclass(frozen=True)
class _Outcome:
    """What a scan did, applied outside the transaction once it is committed."""

    view: StationView
    context: JobContext | None = None  # to publish
    identified_used: bool = False


def job_view(operation: Operation) -> JobView:
    order = operation.order
    return JobView(code=operation.job_code, order=order.reference, operation=operation.sequence,
                   customer=order.customer.name, part_number=order.part_number, quantity=order.quantity,
                   due_date=order.due_date.isoformat(), machine_kind=operation.machine_kind,
                   standard_cycle_s=operation.standard_cycle_s)


def _ns(when: datetime) -> int:
    return int(when.timestamp()) * NS + when.microsecond * 1000


@dataclass
class Stations:
    """The stations of a workshop's machines. Thread-safe: kiosk requests and MQTT scans run in other threads.

    `publish` receives each new job context (the web service publishes it retained on MQTT). `clock` gives
    monotonic seconds for the unknown-badge throttle.
    """

    machines: Sequence[Machine]
    site: str
    sessions: sessionmaker[Session]
    counts: PartCounts
    publish: Callable[[JobContext], None]
    settings: WebSettings = field(default_factory=WebSettings)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._machines = {m.id: m for m in self.machines}
        self._locks = {m.id: threading.Lock() for m in self.machines}
        self._identified: dict[str, _Identified] = {}
        self.throttle = BadgeThrottle(limit=self.settings.unknown_badge_limit,
                                      window_s=self.settings.unknown_badge_window_s)

    # -- the flow

    def scan(self, *, machine: str, code: str, via: Via, now: datetime) -> StationView:
        """A badge or a job card scanned at `machine` (see the module docstring)."""
        m = self.machine(machine)
        with self._locks[m.id]:
            self.throttle.check(m.id, now_s=self.clock())
            job = catalog.parse_job_code(code)
            with self.sessions.begin() as db:
                if job is not None:
                    outcome = self._start(db, m, order=job[0], sequence=job[1], now=now)
                else:
                    outcome = self._badge(db, m, badge=code.strip(), via=via, now=now)
            return self._after_commit(m, outcome)

    def choose_job(self, *, machine: str, order: str, operation: int, now: datetime) -> StationView:
        """A job tapped on the kiosk's list: the same as scanning its job card."""
        m = self.machine(machine)
        with self._locks[m.id]:
            with self.sessions.begin() as db:
                outcome = self._start(db, m, order=order, sequence=operation, now=now)
            return self._after_commit(m, outcome)

    def _after_commit(self, m: Machine, outcome: _Outcome) -> StationView:
        """Only what the database now holds is told to the world (and the identification is used up)."""
        if outcome.identified_used:
            self._identified.pop(m.id, None)
        if outcome.context is not None:
            self.publish(outcome.context)
        return outcome.view

    def cancel(self, *, machine: str, now: datetime) -> StationView:
        """Forget the badge scanned on an idle machine (the wrong person, or they walked away)."""
        m = self.machine(machine)
        with self._locks[m.id], self.sessions.begin() as db:
            running = self._open_session(db, m.id)
            step_after(self._step(m.id, running, now), Scan.CANCEL)
            self._identified.pop(m.id, None)
            return self._view(db, m, now=now, running=running)

    def declare(self, *, machine: str, good: int, scrap: Mapping[str, int], now: datetime) -> StationView:
        """End of job at the kiosk: good and scrap parts (by reason code) are declared and the session closes.

        Refused, with nothing changed, when more parts are declared than the machine counted in the session.
        """
        m = self.machine(machine)
        with self._locks[m.id]:
            with self.sessions.begin() as db:
                running = self._open_session(db, m.id)
                self._allowed(m, self._step(m.id, running, now), Scan.DECLARE, running)
                assert running is not None  # the table allows DECLARE only when running
                self._record_declaration(db, running, good=good, scrap=scrap, by=Via.KIOSK, now=now)
                self._close(running, by=Via.KIOSK, now=now)
                view = self._with_ended(self._view(db, m, now=now, running=None), running.id)
            self._publish_idle(m.id, now)
            return view

    def view(self, *, machine: str, now: datetime) -> StationView:
        """The station now, with live counts (the kiosk polls it)."""
        m = self.machine(machine)
        with self.sessions.begin() as db:
            return self._view(db, m, now=now, running=self._open_session(db, m.id), with_counts=True)

    # -- maîtres' corrections

    def close_session(self, *, session_id: int, now: datetime) -> int:
        """Close a session left open (the apprentice left without declaring). Returns the session id."""
        with self.sessions.begin() as db:
            work = db.get(WorkSession, session_id)
            if work is None:
                raise SessionNotFound(session_id=session_id)
            machine = work.machine_id
        lock = self._locks.get(machine)
        with lock if lock is not None else threading.Lock():
            with self.sessions.begin() as db:
                work = db.get(WorkSession, session_id)
                if work is None:
                    raise SessionNotFound(session_id=session_id)
                if work.ended_at is not None:
                    return work.id
                self._close(work, by=Via.MAITRE, now=now)
            if machine in self._machines:
                self._publish_idle(machine, now)
        return session_id

    def declare_for_session(self, *, session_id: int, good: int, scrap: Mapping[str, int], now: datetime) -> int:
        """A maître declares (or completes) the quality of a closed session that has no declaration yet."""
        with self.sessions.begin() as db:
            work = db.get(WorkSession, session_id, options=[selectinload(WorkSession.operation)
                                                            .selectinload(Operation.order)])
            if work is None:
                raise SessionNotFound(session_id=session_id)
            if work.ended_at is None:
                raise SessionStillOpen(session_id=session_id, machine=work.machine_id)
            self._record_declaration(db, work, good=good, scrap=scrap, by=Via.MAITRE, now=now)
        return session_id

    def republish_contexts(self, *, now: datetime) -> None:
        """Publish every machine's job context again: on start, and after every reconnection to the broker (a broker
        killed with kill -9 loses the retained messages it received since its last save, about 2 s).

        Under each machine's lock, like the kiosk's actions: a context read here cannot be published after a newer
        one that a kiosk published meanwhile.
        """
        for m in self.machines:
            with self._locks[m.id], self.sessions.begin() as db:
                running = self._open_session(db, m.id)
                if running is None:
                    self._publish_idle(m.id, now)
                else:
                    self.publish(self._context(running))

    # -- inside a transaction

    def _badge(self, db: Session, m: Machine, *, badge: str, via: Via, now: datetime) -> _Outcome:
        apprentice = catalog.apprentice_by_badge(db, badge=badge)
        if apprentice is None:
            self.throttle.unknown_badge(m.id, now_s=self.clock())
            raise UnknownBadge(badge=badge, machine=m.id)
        running = self._open_session(db, m.id)
        step = self._step(m.id, running, now)
        own = running is not None and running.apprentice_id == apprentice.id
        if own and via is Via.READER:
            assert running is not None
            if (now - running.started_at).total_seconds() < READER_DOUBLE_READ_S:
                return _Outcome(self._view(db, m, now=now, running=running))  # a double read, not an end of job
            self._allowed(m, step, Scan.END, running)
            self._close(running, by=Via.READER, now=now)
            view = self._with_ended(self._view(db, m, now=now, running=None), running.id)
            return _Outcome(view, context=JobContext(site=self.site, machine=m.id, ts=_ns(now)))
        self._allowed(m, step, Scan.OWN_BADGE if own else Scan.BADGE, running)
        if own:
            return _Outcome(self._view(db, m, now=now, running=running, ask_declaration=True))
        self._identified[m.id] = _Identified(apprentice.id, now + timedelta(seconds=self.settings.identify_timeout_s))
        return _Outcome(self._view(db, m, now=now, running=None))

    def _start(self, db: Session, m: Machine, *, order: str, sequence: int, now: datetime) -> _Outcome:
        running = self._open_session(db, m.id)
        self._allowed(m, self._step(m.id, running, now), Scan.JOB, running)
        operation = catalog.find_operation(db, order=order, sequence=sequence)
        if operation.machine_kind != m.kind.value:
            raise WrongMachine(job=operation.job_code, machine=m.id, machine_kind=m.kind.value,
                               expected_kind=operation.machine_kind)
        identified = self._identified[m.id]
        work = WorkSession(apprentice_id=identified.apprentice_id, machine_id=m.id, operation=operation,
                           started_at=now)
        db.add(work)
        try:
            db.flush()  # the unique index on open sessions is the last word if two processes raced
        except IntegrityError as exc:
            raise MachineBusy(machine=m.id, job="—") from exc
        db.refresh(work, attribute_names=["apprentice"])
        view = self._view(db, m, now=now, running=work)
        return _Outcome(view, context=self._context(work), identified_used=True)

    def _record_declaration(self, db: Session, work: WorkSession, *, good: int, scrap: Mapping[str, int], by: Via,
                            now: datetime) -> None:
        if work.declaration is not None:
            raise AlreadyDeclared(session_id=work.id)
        if good < 0:
            raise InvalidValue(field="good", problem="orders.value.not_negative")
        if any(count < 0 for count in scrap.values()):
            raise InvalidValue(field="scrap", problem="orders.value.not_negative")
        wanted: dict[str, int] = {}
        for code, count in scrap.items():  # "cote" and "COTE" are one reason: their counts add up
            if count > 0:
                key = code.strip().upper()
                wanted[key] = wanted.get(key, 0) + count
        reasons = {r.code: r for r in db.scalars(select(ScrapReason).where(ScrapReason.code.in_(wanted),
                                                                            ScrapReason.active))}
        for code in wanted:
            if code not in reasons:
                raise UnknownScrapReason(reason=code)
        declared = good + sum(wanted.values())
        operation = work.operation
        made = self.counts.session_parts(machine=work.machine_id, order=operation.order.reference,
                                         operation=operation.sequence, since_ns=_ns(work.started_at))
        if declared > made:
            raise DeclarationTooLarge(declared=declared, made=made)
        declaration = QualityDeclaration(session=work, good=good, scrap=sum(wanted.values()), declared_at=now,
                                         declared_by="apprentice" if by is Via.KIOSK else by.value)
        declaration.scrap_counts = [ScrapCount(reason=reasons[code], count=count) for code, count in wanted.items()]
        db.add(declaration)
        db.flush()

    def _close(self, work: WorkSession, *, by: Via, now: datetime) -> None:
        work.ended_at = now
        work.ended_by = by.value

    # -- helpers

    def machine(self, machine: str) -> Machine:
        """The configured machine `machine`; UnknownMachine if the workshop has none by that id."""
        m = self._machines.get(machine)
        if m is None:
            raise UnknownMachine(machine=machine)
        return m

    def _open_session(self, db: Session, machine: str) -> WorkSession | None:
        return db.scalar(
            select(WorkSession).where(WorkSession.machine_id == machine, WorkSession.ended_at.is_(None))
            .options(selectinload(WorkSession.apprentice),
                     selectinload(WorkSession.operation).selectinload(Operation.order).selectinload(Order.customer),
                     selectinload(WorkSession.declaration))
        )

    def _step(self, machine: str, running: WorkSession | None, now: datetime) -> Step:
        if running is not None:
            return Step.RUNNING
        # An expired identification is left in place (a later badge replaces it): popping it here, from the
        # kiosk's polling thread, could race with a scan that just stored a fresh one.
        identified = self._identified.get(machine)
        if identified is not None and identified.until > now:
            return Step.IDENTIFIED
        return Step.IDLE

    def _allowed(self, m: Machine, step: Step, scan: Scan, running: WorkSession | None) -> None:
        """Check the transition table; turn a refusal into the domain error that says why."""
        try:
            step_after(step, scan)
        except IllegalScan as exc:
            error: OrdersError
            if step is Step.RUNNING and running is not None:
                error = MachineBusy(machine=m.id, job=running.operation.job_code)
            elif scan in (Scan.DECLARE, Scan.END):
                error = NoOpenSession(machine=m.id)
            else:
                error = NotIdentified(machine=m.id)
            raise error from exc

    def _context(self, work: WorkSession) -> JobContext:
        return JobContext(
            site=self.site, machine=work.machine_id, ts=_ns(work.started_at),
            context=EventContext(order=work.operation.order.reference, operation=work.operation.sequence,
                                 apprentice=work.apprentice.code),
        )

    def _publish_idle(self, machine: str, now: datetime) -> None:
        self.publish(JobContext(site=self.site, machine=machine, ts=_ns(now)))

    def _with_ended(self, view: StationView, session_id: int) -> StationView:
        return dataclasses.replace(view, ended_session=session_id)

    def _view(self, db: Session, m: Machine, *, now: datetime, running: WorkSession | None,
              ask_declaration: bool = False, with_counts: bool = False) -> StationView:
        step = self._step(m.id, running, now)
        base = StationView(machine=m.id, machine_name=m.name, machine_kind=m.kind.value, step=step)
        if running is None:
            if step is not Step.IDENTIFIED:
                return base
            apprentice = db.get(Apprentice, self._identified[m.id].apprentice_id)
            planned = tuple(job_view(op) for op in catalog.planned_operations(db, machine_kind=m.kind.value))
            return dataclasses.replace(base, first_name=apprentice.first_name if apprentice else None, planned=planned)
        view = dataclasses.replace(
            base, first_name=running.apprentice.first_name, apprentice_code=running.apprentice.code,
            job=job_view(running.operation), started_at=running.started_at, ask_declaration=ask_declaration,
        )
        return self._with_counts(db, view, m, running) if with_counts else view

    def _with_counts(self, db: Session, view: StationView, m: Machine, running: WorkSession) -> StationView:
        """The view with live counts from InfluxDB; marked `counts_ok=False` (not failed) when it cannot answer."""
        operation = running.operation
        order = operation.order
        try:
            since = _ns(running.started_at)
            session_parts = self.counts.session_parts(machine=m.id, order=order.reference,
                                                      operation=operation.sequence, since_ns=since)
            made = self.counts.made_by_operation(order=order.reference).get(operation.sequence, 0)
            last_cycle = self.counts.last_cycle_s(machine=m.id, since_ns=since)
        except CountsUnavailable as exc:
            log.warning("kiosk %s: %s", m.id, exc.detail)
            return dataclasses.replace(view, counts_ok=False)
        scrap = catalog.declared_scrap(db, order_id=order.id).get(operation.sequence, 0)
        return dataclasses.replace(view, session_parts=session_parts, job_good=max(made - scrap, 0),
                                   last_cycle_s=last_cycle)

"""The live board's model: what the workshop TV shows for each machine, from what was heard on MQTT, what the
orders database says about the job, and the progress the tracker computed. Pure: no I/O, no clock (the caller
passes `now`, monotonic seconds), no threads; `web.live` feeds it and streams its tiles to browsers.

Theory of operation.

- Inputs. `message()` takes one raw MQTT message from `copeau/v1/<site>/…`: an event (state, cycle, part, alarm,
  decoded with `copeau.contract.decode_event`), a machine's retained job context, or a collector's retained status.
  Anything that does not follow the contract is ignored and counted (`malformed`), never raised. `job()`,
  `stored_parts()`, `progress()`, `seed_state()`, `seed_cycle()` and `feed_connected()` take what the transport
  looked up elsewhere (orders database, InfluxDB, the progress tracker, the MQTT link).
- Every input returns the machines whose tile changed. Each change bumps a board revision; a tile carries the
  revision of its last change, so a stream sends a client only the tiles newer than what it already sent.
- State. A tile is `offline` when its collector said so (retained status, also its MQTT last will), when the
  collector said the machine cannot be read (`state` event `offline`), or when nothing was heard of the machine for
  too long. News is any event of the machine, and the collector's health report (`copeau/v1/<site>/health/
  collector/<id>`, every `interval_s`) when it says the machine was read. A machine that such reports cover is
  offline after `HEALTH_MISSES` reports without it, whatever its state. Without health reports, only a *running*
  machine can be found silent, after `stale_after_s` (it reports every cycle; an idle one has nothing to say, so
  its silence proves nothing). Otherwise the last `state` event says running, idle or alarm; before any, `unknown`.
  Events may come late (a collector's backlog after an outage): a state or a cycle older than the one shown is
  kept out.
- Parts. The parts of an operation are the union of the `part` points InfluxDB holds for it and the `part` events
  heard since, keyed by (machine, time): the identity of a point in InfluxDB. So a part is never counted twice
  (heard live, then found stored) and the count never goes down. Until InfluxDB has been asked once, the count is
  unknown (None) rather than wrong. Good parts = parts − scrap declared at the kiosks (as in `orders.progress`).
- The ETA and the delay are the progress tracker's (`orders.tracking`), for the tile's order and operation.
- Copeau's own health. The latest health report of every collector and gateway of the site is kept and shown in
  a strip under the tiles (outbox depth, spool alarm, dead letters, reconnects, InfluxDB reachable): a service is
  in trouble when it says so, or when it missed `HEALTH_MISSES` reports. Each tile also says when the last event
  of its machine was heard (its source time).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ValidationError

from copeau.contract import (
    TOPIC_ROOT,
    AlarmData,
    CollectorHealth,
    ContractError,
    ControlKind,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventContext,
    GatewayHealth,
    JobContext,
    MachineState,
    PartData,
    ServiceKind,
    StateData,
    decode_event,
    decode_health,
)
from orders.progress import Progress

OpKey = tuple[str, int]  # (order reference, operation sequence)
DEFAULT_STALE_AFTER_S = 900.0
HEALTH_MISSES = 3  # health reports a machine may miss before it is taken for silent


class TileState(StrEnum):
    RUNNING = "running"
    IDLE = "idle"
    ALARM = "alarm"
    OFFLINE = "offline"
    UNKNOWN = "unknown"  # nothing heard yet


class OfflineReason(StrEnum):
    MACHINE = "machine"  # the collector cannot read the machine
    COLLECTOR = "collector"  # the collector itself is offline
    STALE = "stale"  # a running machine not heard of for too long


@dataclass(frozen=True)
class MachineInfo:
    """A configured machine, as the board names it."""

    id: str
    name: str
    kind: str


@dataclass(frozen=True)
class JobInfo:
    """An operation as the orders database describes it (None: the database does not know it)."""

    order: str
    operation: int
    quantity: int | None = None
    standard_cycle_s: float | None = None
    due_ns: int | None = None
    scrap: int = 0  # declared so far


# -- what a browser receives


class JobTile(BaseModel):
    order: str
    operation: int
    apprentice: str | None  # the pseudonymous code, never a name
    quantity: int | None
    standard_cycle_s: float | None
    due_ns: int | None


class EtaTile(BaseModel):
    eta_ns: int
    due_ns: int
    delay_s: float  # > 0: late by that much
    late: bool
    basis: str  # recent, standard or done
    remaining: int


class AlarmTile(BaseModel):
    code: str | None
    text: str | None


class ServiceTile(BaseModel):
    """One Copeau service (collector or gateway), from its latest health report."""

    kind: str  # collector | gateway
    service: str
    ts_ns: int  # when the report's numbers were taken (source time)
    silent: bool  # no report for HEALTH_MISSES intervals
    trouble: bool  # silent, off the broker, shedding or disk full, InfluxDB failing
    mqtt_connected: bool
    mqtt_reconnects: int
    outbox_events: int | None = None  # collector: events waiting for the broker
    spool_level: int | None = None  # collector: 0 normal, 1 at its limit (shedding telemetry), 2 disk full
    shed_events: int | None = None
    dead_letters: int | None = None  # gateway
    queue_depth: int | None = None
    influx_ok: bool | None = None


class Tile(BaseModel):
    """One machine on the board."""

    machine: str
    name: str
    kind: str
    state: TileState
    offline_reason: OfflineReason | None = None
    since_ns: int | None = None  # when the machine entered the state shown (source time)
    alarm: AlarmTile | None = None
    job: JobTile | None = None
    made: int | None = None  # parts counted for the job's operation, every machine and session
    scrap: int | None = None  # declared scrap of that operation
    good: int | None = None  # made − scrap, never below 0
    last_cycle_s: float | None = None  # the machine's last completed cycle
    last_event_ns: int | None = None  # source time of the newest event heard from the machine
    eta: EtaTile | None = None
    rev: int = 0


class BoardView(BaseModel):
    """The whole board (`snapshot`), or what changed since a revision (`changes_since`)."""

    rev: int
    feed_connected: bool  # the web service is connected to the broker
    malformed: int  # messages ignored because they do not follow the contract
    tiles: list[Tile]
    services: list[ServiceTile] = []  # every time: a few services at most


# -- inside


@dataclass(frozen=True)
class Applied:
    """What one message did: the tiles it changed, or why it was ignored."""

    changed: frozenset[str] = frozenset()
    problem: str | None = None  # set when the message was malformed


@dataclass
class _Machine:
    info: MachineInfo
    state: MachineState | None = None
    state_ts: int = -1
    alarm: AlarmTile | None = None
    alarm_ts: int = -1
    context: EventContext = field(default_factory=EventContext)
    context_ts: int = -1
    last_cycle_s: float | None = None
    cycle_ts: int = -1
    heard_at: float | None = None
    last_event_ts: int = -1
    health_limit_s: float | None = None  # the collector's health reports cover it: silence allowed, in seconds
    stale: bool = False
    rev: int = 0

    @property
    def op(self) -> OpKey | None:
        ctx = self.context
        return (ctx.order, ctx.operation) if ctx.order is not None and ctx.operation is not None else None


@dataclass
class _Parts:
    points: dict[tuple[str, int], int] = field(default_factory=dict)  # (machine, ts) → count
    loaded: bool = False  # InfluxDB was asked at least once

    @property
    def made(self) -> int:
        return sum(self.points.values())


class LiveBoard:
    """The tiles of one site's machines. Not thread-safe: the transport holds one lock around it."""

    def __init__(self, machines: Sequence[MachineInfo], *, site: str, collector: str,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        if stale_after_s <= 0:
            raise ValueError("stale_after_s must be > 0")
        self.site = site
        self.collector = collector
        self.stale_after_s = stale_after_s
        self._machines = {m.id: _Machine(m) for m in machines}
        self._collector_online: bool | None = None
        self._health_ts = -1  # time of the newest health report of our collector
        self._services: dict[tuple[str, str], _Service] = {}  # (kind, service id) → latest report
        self._jobs: dict[OpKey, JobInfo] = {}
        self._parts: dict[OpKey, _Parts] = {}
        self._progress: dict[OpKey, Progress] = {}
        self._connected = False
        self._feed_rev = 0
        self.rev = 0
        self.malformed = 0
        self.ignored = 0  # well-formed, but not for this board (another site, an unknown machine)

    # -- raw MQTT messages

    def message(self, topic: str, payload: bytes, *, now: float) -> Applied:
        """One MQTT message from the site's topics (see the module docstring)."""
        parts = topic.split("/")
        root = "/".join(parts[:2])
        if root != TOPIC_ROOT or len(parts) < 5 or parts[2] != self.site:
            self.ignored += 1
            return Applied()
        if len(parts) == 6 and parts[3] == "collectors" and parts[5] == "status":
            return self._status(parts[4], payload)
        if len(parts) == 6 and parts[3] == "health":
            return self._health(topic, parts[4], payload, now=now)
        if len(parts) != 5:
            self.ignored += 1
            return Applied()
        machine, kind = parts[3], parts[4]
        if kind == ControlKind.BADGE.value:
            return Applied()
        if machine not in self._machines:
            self.ignored += 1
            return Applied()
        if kind == ControlKind.CONTEXT.value:
            try:
                context = JobContext.model_validate_json(payload)
            except ValidationError as exc:
                return self._bad(f"{topic}: not a job context: {exc.errors()[0]['msg']}")
            if context.machine != machine or context.site != self.site:
                return self._bad(f"{topic}: the context is for {context.site}/{context.machine}")
            return Applied(frozenset(self.context(context)))
        try:
            event = decode_event(topic, payload)
        except ContractError as exc:
            return self._bad(f"{topic}: {exc.reason}")
        return Applied(frozenset(self.event(event, now=now)))

    def _bad(self, problem: str) -> Applied:
        self.malformed += 1
        return Applied(problem=problem)

    def _status(self, collector: str, payload: bytes) -> Applied:
        try:
            status = json.loads(payload)["status"]
        except (ValueError, KeyError, TypeError):
            return self._bad(f"collector {collector}: status is not {{\"status\": \"online\"|\"offline\"}}")
        if status not in ("online", "offline"):
            return self._bad(f"collector {collector}: unknown status {status!r}")
        if collector != self.collector:
            self.ignored += 1
            return Applied()
        online = status == "online"
        if online == self._collector_online:
            return Applied()
        self._collector_online = online
        return Applied(frozenset(self._touch(self._machines)))

    def _health(self, topic: str, kind: str, payload: bytes, *, now: float) -> Applied:
        try:
            report = decode_health(topic, payload)
        except ContractError as exc:
            return self._bad(f"{topic}: {exc.reason}")
        self._service_report(report, now=now)
        if kind != ServiceKind.COLLECTOR.value:  # the gateway's: nothing more about machines
            return Applied()
        if not isinstance(report, CollectorHealth) or report.service != self.collector:
            self.ignored += 1
            return Applied()
        if report.ts <= self._health_ts:  # retained again after a reconnection: no news
            return Applied()
        self._health_ts = report.ts
        changed = set()
        for machine, health in report.machines.items():
            m = self._machines.get(machine)
            if m is None or not health.readable:  # unreadable: the collector says so with a `state` event
                continue
            m.heard_at = now
            m.health_limit_s = HEALTH_MISSES * report.interval_s
            if m.stale:
                m.stale = False
                changed.add(machine)
        return Applied(frozenset(self._touch(changed)))

    def _service_report(self, report: CollectorHealth | GatewayHealth, *, now: float) -> None:
        key = (report.kind.value, report.service)
        known = self._services.get(key)
        if known is not None and report.ts <= known.report.ts:  # retained again after a reconnection
            return
        self._services[key] = _Service(report, heard_at=now)
        self.rev += 1

    # -- decoded inputs

    def event(self, event: Event, *, now: float) -> set[str]:
        """One machine event. Returns the machines whose tile changed."""
        m = self._machines.get(event.machine)
        if m is None or event.site != self.site:
            self.ignored += 1
            return set()
        m.heard_at = now
        changed: set[str] = set()
        if event.ts > m.last_event_ts:
            m.last_event_ts = event.ts
            changed.add(m.info.id)
        if m.stale:
            m.stale = False
            changed.add(m.info.id)
        data = event.data
        if isinstance(data, StateData):
            if event.ts >= m.state_ts:
                m.state, m.state_ts = data.state, event.ts
                if data.state is not MachineState.ALARM:
                    m.alarm = None
                changed.add(m.info.id)
        elif isinstance(data, AlarmData):
            if event.ts >= m.alarm_ts:
                m.alarm_ts = event.ts
                m.alarm = AlarmTile(code=data.code, text=data.text) if data.active else None
                changed.add(m.info.id)
        elif isinstance(data, CycleData):
            if (data.phase is CyclePhase.END and data.outcome is CycleOutcome.COMPLETED
                    and data.duration_s is not None and event.ts >= m.cycle_ts):
                m.last_cycle_s, m.cycle_ts = data.duration_s, event.ts
                changed.add(m.info.id)
        elif isinstance(data, PartData) and data.count > 0:
            changed |= self._part(event.machine, event.ts, data.count, event.ctx)
        return self._touch(changed)

    def _part(self, machine: str, ts: int, count: int, ctx: EventContext | None) -> set[str]:
        if ctx is None or ctx.order is None or ctx.operation is None:
            return set()
        key = (ctx.order, ctx.operation)
        parts = self._parts.get(key)
        if parts is None or (machine, ts) in parts.points:  # not on the board, or already counted
            return set()
        parts.points[(machine, ts)] = count
        return self._showing(key)

    def context(self, context: JobContext) -> set[str]:
        """A machine's job context (retained on MQTT, or from the database's open sessions)."""
        m = self._machines.get(context.machine)
        if m is None or context.ts < m.context_ts:
            return set()
        m.context_ts = context.ts
        if context.context == m.context:
            return set()
        m.context = context.context
        key = m.op
        if key is not None and key not in self._parts:
            self._parts[key] = _Parts()
        self._forget_unshown()
        return self._touch({m.info.id})

    def job(self, info: JobInfo) -> set[str]:
        """What the orders database says about an operation."""
        key = (info.order, info.operation)
        if key not in self.shown_operations() or self._jobs.get(key) == info:
            return set()
        self._jobs[key] = info
        return self._touch(self._showing(key))

    def stored_parts(self, key: OpKey, points: Iterable[tuple[str, int, int]]) -> set[str]:
        """The `part` points InfluxDB holds for an operation: (machine, ts, count). Added to the live ones."""
        parts = self._parts.get(key)
        if parts is None:
            return set()
        before = (parts.loaded, parts.made)
        for machine, ts, count in points:
            parts.points.setdefault((machine, ts), count)
        parts.loaded = True
        return self._touch(self._showing(key)) if (parts.loaded, parts.made) != before else set()

    def progress(self, progress: Iterable[Progress]) -> set[str]:
        """The tracker's latest progress (every open order's operations)."""
        latest = {(p.order, p.operation): p for p in progress}
        changed: set[str] = set()
        for key in set(latest) | set(self._progress):
            if _shown(latest.get(key)) != _shown(self._progress.get(key)):
                changed |= self._showing(key)
        self._progress = latest
        return self._touch(changed)

    def seed_state(self, machine: str, state: MachineState, ts: int, *, now: float) -> set[str]:
        """The last state InfluxDB holds for a machine (on start: states are not retained on MQTT)."""
        m = self._machines.get(machine)
        if m is None or ts <= m.state_ts:
            return set()
        m.state, m.state_ts = state, ts
        if m.heard_at is None:
            m.heard_at = now
        return self._touch({machine})

    def seed_cycle(self, machine: str, duration_s: float, ts: int) -> set[str]:
        """The last completed cycle InfluxDB holds for a machine."""
        m = self._machines.get(machine)
        if m is None or ts <= m.cycle_ts:
            return set()
        m.last_cycle_s, m.cycle_ts = duration_s, ts
        return self._touch({machine})

    def feed_connected(self, connected: bool) -> bool:
        """The transport's MQTT connection came or went. Returns whether that changed anything."""
        if connected == self._connected:
            return False
        self._connected = connected
        self.rev += 1
        self._feed_rev = self.rev
        return True

    def expire(self, *, now: float) -> set[str]:
        """Mark the machines not heard of for too long as offline (module docstring), and back when heard of."""
        changed = set()
        for m in self._machines.values():
            if m.health_limit_s is not None:
                limit: float | None = m.health_limit_s if m.state is not MachineState.OFFLINE else None
            else:
                limit = self.stale_after_s if m.state is MachineState.RUNNING else None
            stale = limit is not None and m.heard_at is not None and now - m.heard_at >= limit
            if stale != m.stale:
                m.stale = stale
                changed.add(m.info.id)
        for service in self._services.values():
            silent = now - service.heard_at >= HEALTH_MISSES * service.report.interval_s
            if silent != service.silent:
                service.silent = silent
                self.rev += 1
        return self._touch(changed)

    # -- what the transport asks

    def shown_operations(self) -> set[OpKey]:
        """The operations on the tiles now (their job and parts are worth looking up)."""
        return {key for m in self._machines.values() if (key := m.op) is not None}

    def unloaded_operations(self) -> set[OpKey]:
        """Operations on the tiles whose stored parts were never read."""
        return {key for key in self.shown_operations() if not self._parts[key].loaded}

    def unknown_jobs(self) -> set[OpKey]:
        """Operations on the tiles that the orders database was not asked about yet."""
        return self.shown_operations() - set(self._jobs)

    @property
    def connected(self) -> bool:
        return self._connected

    def tile(self, machine: str) -> Tile:
        m = self._machines[machine]
        state, reason = self._state(m)
        tile = Tile(machine=m.info.id, name=m.info.name, kind=m.info.kind, state=state, offline_reason=reason,
                    since_ns=m.state_ts if m.state_ts >= 0 else None,
                    alarm=m.alarm if state is TileState.ALARM else None, last_cycle_s=m.last_cycle_s, rev=m.rev,
                    last_event_ns=m.last_event_ts if m.last_event_ts >= 0 else None)
        key = m.op
        if key is None:
            return tile
        job = self._jobs.get(key)
        progress = self._progress.get(key)
        tile.job = JobTile(order=key[0], operation=key[1], apprentice=m.context.apprentice,
                           quantity=job.quantity if job else None,
                           standard_cycle_s=job.standard_cycle_s if job else None,
                           due_ns=job.due_ns if job else None)
        parts = self._parts[key]
        if parts.loaded:
            scrap = progress.scrap if progress is not None else job.scrap if job is not None else 0
            tile.made, tile.scrap, tile.good = parts.made, scrap, max(parts.made - scrap, 0)
        if progress is not None:
            tile.eta = EtaTile(eta_ns=progress.eta_ns, due_ns=progress.due_ns, delay_s=progress.delay_s,
                               late=progress.late, basis=progress.basis.value, remaining=progress.remaining)
        return tile

    def services(self) -> list[ServiceTile]:
        """Copeau's own services, collectors first, from their latest health reports."""
        return [self._services[key].tile() for key in sorted(self._services)]

    def snapshot(self) -> BoardView:
        return BoardView(rev=self.rev, feed_connected=self._connected, malformed=self.malformed,
                         tiles=[self.tile(m) for m in self._machines], services=self.services())

    def changes_since(self, rev: int) -> BoardView | None:
        """The tiles changed after `rev` (and the feed's state), or None when nothing changed."""
        if rev >= self.rev:
            return None
        tiles = [self.tile(m.info.id) for m in self._machines.values() if m.rev > rev]
        return BoardView(rev=self.rev, feed_connected=self._connected, malformed=self.malformed, tiles=tiles,
                         services=self.services())

    # -- helpers

    def _state(self, m: _Machine) -> tuple[TileState, OfflineReason | None]:
        if self._collector_online is False:
            return TileState.OFFLINE, OfflineReason.COLLECTOR
        if m.state is MachineState.OFFLINE:
            return TileState.OFFLINE, OfflineReason.MACHINE
        if m.stale:
            return TileState.OFFLINE, OfflineReason.STALE
        if m.state is None:
            return TileState.UNKNOWN, None
        return TileState(m.state.value), None

    def _showing(self, key: OpKey) -> set[str]:
        return {m.info.id for m in self._machines.values() if m.op == key}

    def _forget_unshown(self) -> None:
        shown = self.shown_operations()
        for store in (self._parts, self._jobs):
            for key in [k for k in store if k not in shown]:
                del store[key]

    def _touch(self, machines: Iterable[str]) -> set[str]:
        changed = set(machines)
        if changed:
            self.rev += 1
            for machine in changed:
                self._machines[machine].rev = self.rev
        return changed


@dataclass
class _Service:
    report: CollectorHealth | GatewayHealth
    heard_at: float
    silent: bool = False

    def tile(self) -> ServiceTile:
        r = self.report
        tile = ServiceTile(kind=r.kind.value, service=r.service, ts_ns=r.ts, silent=self.silent, trouble=False,
                           mqtt_connected=r.metrics.mqtt_connected, mqtt_reconnects=r.metrics.mqtt_reconnects)
        if isinstance(r, CollectorHealth):
            tile.outbox_events, tile.spool_level = r.metrics.outbox_events, int(r.metrics.spool_level)
            tile.shed_events = r.metrics.shed_events
            tile.trouble = self.silent or not r.metrics.mqtt_connected or tile.spool_level > 0
        else:
            tile.dead_letters, tile.queue_depth = r.metrics.dead_letters, r.metrics.queue_depth
            tile.influx_ok = r.metrics.influx_ok
            tile.trouble = self.silent or not r.metrics.mqtt_connected or not r.metrics.influx_ok
        return tile


def _shown(p: Progress | None) -> tuple[int, ...] | None:
    """What a tile shows of a progress, to the minute: the ETA moves a little at every round of the tracker (it
    is computed from "now"), and a board that changes every 10 s for nothing only costs the TV its smoothness."""
    if p is None:
        return None
    return (p.eta_ns // 60_000_000_000, p.due_ns, round(p.delay_s / 60), p.remaining, p.scrap, int(p.late))

"""The collector process: poll every machine, derive events, keep them in the outbox, publish them.

One asyncio task per machine polls at the machine's interval (starts staggered across the interval so that
20 machines are not read in the same millisecond), feeds the pure core, and commits the events with the
machine's resume point to the outbox. One publisher task hands outbox rows to MQTT (QoS 1) and marks
them when the broker acknowledges them. A broker outage therefore only makes the outbox grow.

**Replay after every new connection** (`collector.replay_window_s`, 10 s by default). A PUBACK is not the end
of the story: mosquitto saves its queue about every 2 s, so a broker killed with `kill -9` (or a power cut)
loses what it acknowledged since its last save. The outbox keeps acknowledged rows until the broker has proved
it was alive `replay_window_s` after the PUBACK (any later PUBACK on the same connection, the health reports'
included: a broker alive that long has saved since); after every new connection the publisher first publishes
every kept row again, byte for byte, then the backlog. Every connection, not only when the broker reports it
lost our session: our session is clean anyway, and what a killed broker loses includes the messages queued for
the gateway's durable session, which our session never knew about. The gateway's writes are idempotent (same
point, same bytes), so a replay costs a few seconds' worth of duplicate deliveries and nothing downstream;
collectors/outbox.py has the details. The retained status (`online`) and health report are published again on
every connection too.

A machine that cannot be read is published once as `offline` (never as stale values), logged once on loss
and once on recovery, and retried with a full-jitter backoff capped at `collector.reconnect_max_s` (2 s by default).

The outbox has a limit (`collector.outbox_max_mb`, `collector.spool_min_free_mb`): beyond it the oldest
telemetry is shed, never a part or an alarm, and never an event handed to the broker and not yet acknowledged
(collectors/outbox.py has the policy).

Every `collector.health_interval_s` a health report (copeau/contract.py `CollectorHealth`: outbox depth,
events shed, reconnects, each machine's last reading and last event) is published, retained, on
copeau/v1/<site>/health/collector/<id>. While the broker is unreachable the reports are kept in memory (the
last `HEALTH_BACKLOG`, copeau.mqtt) and published when it returns, with their own times, followed by a fresh one: the
gateway stores them all, so InfluxDB shows how the outbox grew during the outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from collectors.core import Derived, Deriver, Sample, Snapshot
from collectors.modbus import ModbusSource
from collectors.opcua import OpcUaSource
from collectors.outbox import MB, Message, Outbox, ShedClass, shed_class
from collectors.source import MachineSource, StreamingSource
from copeau.backoff import full_jitter
from copeau.config import Machine, ModbusMachine, Workshop
from copeau.contract import (
    CollectorHealth,
    CollectorMachineHealth,
    CollectorMetrics,
    ContractError,
    ControlKind,
    CycleData,
    CyclePhase,
    Event,
    EventContext,
    JobContext,
    MachineState,
    PartData,
    age_s,
    control_topic,
    status_topic,
)
from copeau.errors import MachineUnavailable
from copeau.mqtt import HealthReports, MqttLink, Will

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 20  # outbox rows handed to paho between two chances for the pollers to run


@dataclass
class MachineView:
    """The collector's latest knowledge of one machine (for the demo summary and for tests)."""

    state: MachineState | None = None
    counter: int | None = None
    parts: int = 0  # parts counted by this collector process since it started
    good: int | None = None  # of which good, when the machine reports quality
    last_cycle_s: float | None = None
    last_sample_ts: int | None = None
    polls: int = 0
    missed_intervals: int = 0
    readable: bool | None = None  # whether the last reading succeeded (None before the first)
    reconnects: int = 0  # times the machine became readable again after it could not be read
    last_read_ts: int | None = None  # time of the last good reading
    last_event_ts: int | None = None  # time of the last event derived
    next_seq: int = 0  # the sequence number of the machine's next event


@dataclass
class _Track:
    """One machine's pipeline state inside the collector: its core, next sequence number and view."""

    machine: Machine
    deriver: Deriver
    seq: int
    committed: Snapshot
    view: MachineView


@dataclass
class CollectorStats:
    published: int = 0  # first publications and replays
    acknowledged: int = 0
    replayed: int = 0  # kept rows published again after a new connection
    views: dict[str, MachineView] = field(default_factory=dict)


def outbox_path(workshop: Workshop) -> Path:
    return workshop.state_dir / "collector" / f"{workshop.collector.id}.outbox.sqlite"


class Collector:
    """Collects every machine of a workshop. `await run(stop)` until `stop` is set, then shuts down cleanly."""

    def __init__(
        self,
        workshop: Workshop,
        *,
        sources: Mapping[str, MachineSource | StreamingSource] | None = None,
        outbox: Path | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.workshop = workshop
        self._clock_ns = clock_ns
        self._sources: dict[str, MachineSource | StreamingSource] = dict(sources or {})
        for m in workshop.machines:
            if m.id in self._sources:
                continue
            if isinstance(m, ModbusMachine):
                self._sources[m.id] = ModbusSource(m, clock_ns=clock_ns)
            else:
                self._sources[m.id] = OpcUaSource(
                    m, clock_ns=clock_ns, reconnect_max_s=workshop.collector.reconnect_max_s
                )
        settings = workshop.collector
        self.outbox = Outbox(
            outbox or outbox_path(workshop),
            max_bytes=int(settings.outbox_max_mb * MB),
            min_free_bytes=int(settings.spool_min_free_mb * MB),
            retain_acknowledged=settings.replay_window_s > 0,
        )
        self._replay_window_s = settings.replay_window_s
        self._replay_after = 0  # the replay's cursor: kept rows up to `_replay_upto` are published again
        self._replay_upto = 0
        self._alive_at = time.monotonic()  # the broker's latest PUBACK (or CONNACK) on the current connection
        self.stats = CollectorStats(views={m.id: MachineView() for m in workshop.machines})
        self._inflight: dict[int, int] = {}  # MQTT message id → outbox row id
        self._handing: set[int] = set()  # outbox rows read by the publisher and about to be handed to paho
        self._started = time.monotonic()
        self._closed = False
        # Set when the collector stops. The readers check it at every turn as well as being cancelled: a driver
        # that turns a cancellation into its own error (seen as a collector that would not stop on SIGTERM) must
        # not keep a reader polling.
        self._stopping = False
        self._acked: list[tuple[int, float]] = []  # (MQTT message id, monotonic time of its PUBACK)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # The job each machine is working on (retained on MQTT, published by the kiosk service); events are
        # stamped with it at the source, so a backlog delivered after an outage keeps the right job.
        self._contexts: dict[str, JobContext] = {}
        for machine_id, payload in self.outbox.contexts().items():
            self._set_context(machine_id, payload)
        cid = workshop.collector.id
        self._status_topic = status_topic(workshop.site.id, cid)
        self.link = MqttLink(
            workshop.mqtt,
            client_id=f"copeau-{workshop.site.id}-{cid}",
            clean_start=True,  # the outbox, not the broker session, is what keeps unacknowledged events
            will=Will(self._status_topic, b'{"status":"offline"}'),
            on_connected=self._on_connected,
            on_published=self._on_published,
            on_message=self._on_context_message,
        )
        self._health_backlog = HealthReports(self.link)  # kept while the broker is away

    # -- lifecycle

    async def run(self, stop: asyncio.Event, *, drain_timeout_s: float = 5.0) -> None:
        self._loop = asyncio.get_running_loop()
        self.link.start()
        try:
            async with asyncio.TaskGroup() as tg:
                n = len(self.workshop.machines)
                pollers = [
                    tg.create_task(self._follow(m, source), name=f"follow:{m.id}")
                    if isinstance(source := self._sources[m.id], StreamingSource)
                    else tg.create_task(self._poll(m, source, offset_s=i * m.interval_s / n), name=f"poll:{m.id}")
                    for i, m in enumerate(self.workshop.machines)
                ]
                publisher = tg.create_task(self._publish_loop(), name="publish")
                reporter = tg.create_task(self._health_loop(), name="health")
                await stop.wait()
                self._stopping = True
                for task in pollers:
                    task.cancel()
                await self._drain(drain_timeout_s)
                publisher.cancel()
                reporter.cancel()
        finally:
            await self._shutdown()

    async def _drain(self, timeout_s: float) -> None:
        """Give the broker a moment to acknowledge what is queued; what is left stays in the outbox."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.outbox.depth() and self.link.connected.is_set():
            if asyncio.get_running_loop().time() > deadline:
                log.warning(
                    "%d events left in the outbox (%s); sent at next start",
                    self.outbox.depth(),
                    self.outbox.path,
                )
                return
            self._wake.set()
            await asyncio.sleep(0.05)

    async def _shutdown(self) -> None:
        if self.link.connected.is_set():
            info = self.link.client.publish(self._status_topic, b'{"status":"offline"}', qos=1, retain=True)
            await asyncio.to_thread(info.wait_for_publish, 2.0)
        self.link.stop()
        for source in self._sources.values():
            await source.close()
        self._closed = True
        self.outbox.close()

    # -- reading machines

    def _track(self, machine: Machine) -> _Track:
        record = self.outbox.machine(machine.id)
        snapshot = Snapshot.from_dict(record.snapshot).after_restart() if record else None
        deriver = Deriver(counter_modulus=machine.counter_modulus, wrap_window=machine.wrap_window, snapshot=snapshot)
        view = self.stats.views[machine.id]
        view.next_seq = record.next_seq if record else 0
        return _Track(machine=machine, deriver=deriver, seq=view.next_seq, committed=deriver.snapshot, view=view)

    async def _poll(self, machine: Machine, source: MachineSource, *, offset_s: float) -> None:
        """Read a polled machine (Modbus) at its interval, staggered by `offset_s`."""
        track = self._track(machine)
        loop = asyncio.get_running_loop()
        interval = machine.interval_s
        next_tick = loop.time() + offset_s
        backoff = None
        while not self._stopping:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            try:
                sample = await source.read()
                if backoff is not None:
                    log.info("%s: readable again", machine.id)
                    backoff = None
            except MachineUnavailable as exc:
                if backoff is None:
                    log.warning("%s: cannot be read (%s); retrying", machine.id, exc)
                    backoff = full_jitter(base_s=interval, cap_s=self.workshop.collector.reconnect_max_s)
                sample = Sample(ts=self._clock_ns(), available=False)
            if self._stopping:
                return  # a read interrupted by the stop is not the machine's fault: nothing to record
            self._apply(track, sample)
            next_tick += interval
            if backoff is not None:
                next_tick = max(next_tick, loop.time() + next(backoff))
            elif next_tick < loop.time():
                missed = int((loop.time() - next_tick) // interval) + 1
                track.view.missed_intervals += missed
                next_tick += missed * interval

    async def _follow(self, machine: Machine, source: StreamingSource) -> None:
        """Follow a machine that pushes its changes (OPC UA subscriptions); the source reconnects by itself
        and yields an unavailable sample while it cannot."""
        track = self._track(machine)
        async for sample in source.samples():
            if self._stopping:
                return
            self._apply(track, sample)

    def _apply(self, track: _Track, sample: Sample) -> None:
        """Feed one sample to the core and commit the events it yields, with the resume point, to the outbox."""
        machine, deriver, view = track.machine, track.deriver, track.view
        sample = self._monotonic(sample, deriver.snapshot.last_ts, machine.id)
        rebased = deriver.rebased
        events = deriver.feed(sample)
        if deriver.rebased != rebased:
            log.warning(
                "%s: the part counter jumped to %s; taken as a new baseline (module replaced or preset?)",
                machine.id,
                sample.counter,
            )
        view.polls += 1
        view.last_sample_ts = sample.ts
        if sample.available:
            if view.readable is False:
                view.reconnects += 1
            view.readable = True
            view.last_read_ts = sample.ts
        else:
            view.readable = False
        if events or _resume_point_moved(track.committed, deriver.snapshot):
            messages: list[Message] = []
            for d in events:
                event = Event(
                    site=self.workshop.site.id,
                    machine=machine.id,
                    kind=d.kind,
                    seq=track.seq,
                    ts=d.ts,
                    data=d.data,
                    ctx=self._current_context(machine.id),
                )
                messages.append(Message(event.topic, event.encode(), shed_class(event)))
                track.seq += 1
                _update_view(view, d)
            self.outbox.commit(
                machine.id,
                next_seq=track.seq,
                snapshot=deriver.snapshot.to_dict(),
                messages=messages,
                keep=self._sending(),
            )
            track.committed = deriver.snapshot
            view.next_seq = track.seq
            if messages:
                self._wake.set()
        view.state = deriver.snapshot.state
        view.counter = deriver.snapshot.counter

    def _monotonic(self, sample: Sample, last_ts: int | None, machine_id: str) -> Sample:
        # A PC clock stepped back (NTP, a wrong manual setting), or a server that re-sends a value with its old
        # source time after a reconnect, must not stop collection: keep event times increasing.
        if last_ts is not None and sample.ts <= last_ts:
            if last_ts - sample.ts > 1_000_000_000:
                log.warning(
                    "%s: a sample %.3f s older than the previous one; event times held monotonic",
                    machine_id,
                    (last_ts - sample.ts) / 1e9,
                )
            return replace(sample, ts=last_ts + 1)
        return sample

    # -- publishing

    async def _publish_loop(self) -> None:
        last_sent = 0
        max_inflight = self.workshop.collector.max_inflight
        while True:
            try:
                async with asyncio.timeout(1.0):  # also wake now and then, in case a signal was missed
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            self._take_acks()
            if self._replay_window_s > 0:
                # Kept rows the broker has outlived by the window: it has saved them (or delivered them) since.
                self.outbox.prune(before=self._alive_at - self._replay_window_s)
            if not self._inflight:
                last_sent = 0  # everything handed over was acknowledged: rescan from the oldest row
            if not self.link.connected.is_set():
                continue
            room = max_inflight - len(self._inflight)
            if room <= 0:
                continue
            if self._replay_after < self._replay_upto:
                room -= await self._replay(room)
                if room <= 0:
                    continue
            rows = self.outbox.pending(after_id=last_sent, limit=room)
            self._handing = {row.id for row in rows}  # the pollers' commits must not shed these meanwhile
            try:
                for i, row in enumerate(rows, start=1):
                    mid = self.link.publish(row.topic, row.payload)
                    self._inflight[mid] = row.id
                    self._handing.discard(row.id)
                    last_sent = row.id
                    self.stats.published += 1
                    if i % PUBLISH_CHUNK == 0:
                        # A backlog after an outage must not hold the pollers up: a late poll is a wrong cycle
                        # time.
                        await asyncio.sleep(0)
            finally:
                self._handing = set()

    def _take_acks(self) -> None:
        """Hand the PUBACKs received so far to the outbox, in one transaction. They are dated by the latest one:
        later than some of them, so a row is at most pruned a little later, never earlier."""
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        ids = [self._inflight.pop(mid) for mid, _ in acked if mid in self._inflight]
        if ids:
            self.outbox.acknowledge(ids, at=acked[-1][1])
            self.stats.acknowledged += len(ids)

    async def _replay(self, room: int) -> int:
        """Publish kept rows again (after a new connection), at most `room`; returns how many were handed over."""
        rows = self.outbox.retained(after_id=self._replay_after, upto_id=self._replay_upto, limit=room)
        if not rows:
            self._replay_after = self._replay_upto
            return 0
        sending = set(self._inflight.values())  # paho re-sends its unacknowledged messages by itself
        handed = 0
        for i, row in enumerate(rows, start=1):
            self._replay_after = row.id
            if row.id in sending:
                continue
            mid = self.link.publish(row.topic, row.payload)
            self._inflight[mid] = row.id
            self.stats.published += 1
            self.stats.replayed += 1
            handed += 1
            if i % PUBLISH_CHUNK == 0:
                await asyncio.sleep(0)
        return handed

    def _connected(self) -> None:
        """A new connection (event loop side): the PUBACKs of the old one first, then a replay of every kept row,
        none of which may be pruned until this connection acknowledges it again."""
        self._take_acks()
        self._alive_at = time.monotonic()
        self._replay_after = 0
        self._replay_upto = self.outbox.start_replay()
        if self._replay_upto:
            log.info("MQTT connection: publishing again the %d events acknowledged in the last %g s",
                     self.outbox.stats().replay_events, self._replay_window_s)
        self._wake.set()

    def _sending(self) -> set[int]:
        """Outbox rows that must not be shed: handed to the broker (or about to be) and not acknowledged."""
        return {*self._inflight.values(), *self._handing}

    # -- health

    async def _health_loop(self) -> None:
        interval = self.workshop.collector.health_interval_s
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + interval, loop.time())
            if self.outbox.unsaved_events:
                self.outbox.flush(keep=self._sending())  # the disk may accept the held events again
            self._report_health()

    def _report_health(self) -> None:
        """Publish a health report now, after those kept while the broker was unreachable; or keep it."""
        if self._closed:
            return
        report = self.health()
        self._health_backlog.publish(report)

    def health(self) -> CollectorHealth:
        """The collector's health report now (copeau/contract.py CollectorHealth)."""
        box = self.outbox.stats()
        now = self._clock_ns()
        machines = {}
        for machine_id, view in self.stats.views.items():
            shed = {cls: box.shed.get((machine_id, cls), 0) for cls in ShedClass}
            machines[machine_id] = CollectorMachineHealth(
                readable=bool(view.readable),
                next_seq=view.next_seq,
                reconnects=view.reconnects,
                polls=view.polls,
                missed_intervals=view.missed_intervals,
                last_read_ts=view.last_read_ts,
                last_event_ts=view.last_event_ts,
                last_read_age_s=age_s(now, view.last_read_ts),
                last_event_age_s=age_s(now, view.last_event_ts),
                shed_cycle_start=shed[ShedClass.CYCLE_START],
                shed_state=shed[ShedClass.STATE],
                shed_cycle_end=shed[ShedClass.CYCLE_END],
            )
        metrics = CollectorMetrics(
            outbox_events=box.events,
            outbox_bytes=box.bytes,
            outbox_file_bytes=box.file_bytes,
            outbox_limit_bytes=box.limit_bytes,
            disk_free_bytes=box.disk_free_bytes or 0,
            spool_level=box.level,
            shed_events=box.shed_events,
            unsaved_events=box.unsaved_events,
            published=self.stats.published,
            acknowledged=self.stats.acknowledged,
            mqtt_connected=self.link.connected.is_set(),
            mqtt_reconnects=self.link.reconnects,
            uptime_s=round(time.monotonic() - self._started, 3),
        )
        return CollectorHealth(
            site=self.workshop.site.id,
            service=self.workshop.collector.id,
            ts=now,
            interval_s=self.workshop.collector.health_interval_s,
            metrics=metrics,
            machines=machines,
        )

    # paho network thread → event loop

    def _on_published(self, mid: int) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ack, mid)

    def _ack(self, mid: int) -> None:
        now = time.monotonic()
        self._alive_at = now  # any PUBACK proves the broker alive, health reports' included
        self._acked.append((mid, now))
        self._wake.set()

    def _on_connected(self, _session_present: bool) -> None:
        self.link.client.publish(self._status_topic, b'{"status":"online"}', qos=1, retain=True)
        for m in self.workshop.machines:
            self.link.client.subscribe(control_topic(self.workshop.site.id, m.id, ControlKind.CONTEXT), qos=1)
        if self._loop is not None:
            # In the loop's order: after the PUBACKs of the previous connection already scheduled.
            self._loop.call_soon_threadsafe(self._connected)
            # At once: the reports kept during the outage, then how things stand now.
            self._loop.call_soon_threadsafe(self._report_health)

    # -- job context

    def _on_context_message(self, msg: object) -> None:
        topic, payload = msg.topic, bytes(msg.payload)  # type: ignore[attr-defined]
        machine_id = topic.split("/")[3]
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._context_received, machine_id, payload)

    def _context_received(self, machine_id: str, payload: bytes) -> None:
        if self._set_context(machine_id, payload):
            self.outbox.save_context(machine_id, payload)

    def _set_context(self, machine_id: str, payload: bytes) -> bool:
        try:
            context = JobContext.model_validate_json(payload)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            log.warning("%s: job context refused (%s)", machine_id, ContractError(str(exc)))
            return False
        if context.machine != machine_id or context.site != self.workshop.site.id:
            log.warning("%s: job context for %s/%s refused", machine_id, context.site, context.machine)
            return False
        self._contexts[machine_id] = context
        return True

    def _current_context(self, machine_id: str) -> EventContext | None:
        """The job the machine is working on now. Events are stamped as they are derived, so "now" is right;
        comparing with the context's own time would only add the clock skew between the kiosk and this PC."""
        context = self._contexts.get(machine_id)
        if context is None or context.context == EventContext():
            return None
        return context.context


def _resume_point_moved(old: Snapshot, new: Snapshot) -> bool:
    # The sample time alone changing is not worth a disk write; anything the resume depends on is.
    return replace(old, last_ts=None) != replace(new, last_ts=None)


def _update_view(view: MachineView, d: Derived) -> None:
    view.last_event_ts = d.ts
    if isinstance(d.data, PartData):
        view.parts += d.data.count
        if d.data.good is not None:
            view.good = (view.good or 0) + d.data.good
    elif isinstance(d.data, CycleData) and d.data.phase is CyclePhase.END:
        view.last_cycle_s = d.data.duration_s

"""The gateway loop: MQTT (durable subscriber) → contract validation → InfluxDB, acknowledging only what is safe.

Theory of operation:

- The MQTT session is persistent (clean_start=False, a session expiry > 0) and acknowledgements are manual.
  The broker keeps every message it delivered until we acknowledge it, and re-delivers it after a crash or a
  lost connection. So a message is acknowledged only once it is **stored** in InfluxDB or **dead-lettered**
  (written and fsynced to the dead-letter file). Duplicates are harmless: a re-delivered event is the same
  point and InfluxDB keeps it once.
- paho's network thread only puts each message on a queue. One writer thread takes the first message
  (waiting), then whatever else is already queued (not waiting), up to `max_batch_lines`: a lone message is
  written at once, and batches grow only under load. The queue holds at most 2 × `max_batch_lines` messages: the
  network thread stops reading the socket at that depth (TCP then holds the broker back) until the writer takes
  a batch. The MQTT 5 `receive_maximum` asks the broker for the same bound, but mosquitto 2.0.11 sends more than
  that once acknowledgements flow (measured: 71,000 unacknowledged with a receive maximum of 10,000).
- Speed (issue #7, BENCHMARKS.md): paho's network thread reads the socket in 64 KiB chunks, decodes the plain
  PUBLISH packets straight from that buffer and hands them to `_on_publish` without building an MQTTMessage, and
  sends a batch's PUBACKs as one packet (copeau/mqttfast.py, with a checked fallback to paho's own code); the
  writer decodes with `decode_event_fields` (plain values, the same acceptance as the contract's models) and
  encodes with `event_fields_ctx_line` (per-kind templates; the same line as `event_line`).
- Each message of a batch is decoded against the contract and encoded as one line; a message that does not
  follow the contract, or that line protocol cannot carry, is dead-lettered. The lines are written with the
  InfluxWriter policy (retry forever, split on 413, bisect on 400); the lines InfluxDB rejects are dead-lettered.
  Then every message of the batch is acknowledged, in the order received (as MQTT asks).
- Acknowledgements are tied to the connection that delivered the message (its *epoch*). A message from a
  connection that has since been lost is not acknowledged: the broker re-delivers it on the new connection
  (same packet id), and that copy is the one acknowledged. Acknowledging the old copy too could acknowledge
  a *different* message to which the broker has already given the freed packet id, before it is stored.
- Health: the gateway also subscribes to every service's health report (`copeau/v1/+/health/+/+`, which the
  event subscription never matches) and stores each as points of the `copeau_health` measurement (one for
  the service, one per machine; tags site, service, kind, machine), at the report's own time. Its own report
  (received, stored, dead letters, write retries, MQTT reconnects, queue depth, each machine's last message)
  is published every `gateway.health_interval_s` by a small thread, retained, and comes back through the same
  subscription to be stored like the others: one path for every service. Reports made while the broker is
  unreachable are kept (`copeau.mqtt.HealthReports`) and published when it returns. Health messages are counted
  apart (`health_received`, `health_stored`), so that `received` and `stored_points` stay about events.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as paho

from copeau.backoff import full_jitter
from copeau.config import Workshop
from copeau.contract import (
    EVENT_SUBSCRIPTION,
    HEALTH_SUBSCRIPTION,
    CollectorHealth,
    ContractError,
    Event,
    GatewayHealth,
    GatewayMachineHealth,
    GatewayMetrics,
    age_s,
    decode_event,
    decode_event_fields,
    decode_health,
    is_control_topic,
    is_health_topic,
)
from copeau.mqtt import HealthReports, MqttLink
from copeau.mqttfast import FastClient
from gateway.deadletter import DeadLetters
from gateway.influx import InfluxWriter, StoreStopped
from gateway.lineprotocol import FieldValue, LineProtocolError, encode_line, event_fields_ctx_line, event_line

log = logging.getLogger(__name__)

_TAKE_TIMEOUT_S = 0.2  # how long the writer waits for a first message before it looks at the stop flag again
_MAX_SESSION_EXPIRY_S = 0xFFFFFFFF  # MQTT 5: four bytes; this value means "never expires"
HEALTH_MEASUREMENT = "copeau_health"


@dataclass(frozen=True)
class GatewayStats:
    """A snapshot of the gateway's counters since it was created. Re-deliveries count again."""

    received: int = 0  # messages handed over by the broker
    stored_points: int = 0  # lines InfluxDB accepted
    dead_letters: int = 0  # messages written to the dead-letter file
    write_retries: int = 0  # InfluxDB requests made again after a failure
    batches: int = 0  # batches finished (written and acknowledged)
    last_batch_size: int = 0  # messages in the last finished batch
    health_received: int = 0  # health reports handed over by the broker (not counted in `received`)
    health_stored: int = 0  # health points InfluxDB accepted (not counted in `stored_points`)


@dataclass
class _MachineSeen:
    """What the gateway saw of one machine's events (written by the writer thread, read by the health one)."""

    received: int = 0
    last_event_ts: int | None = None
    last_received_ts: int | None = None


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs three times as much, for every message
class _Delivery:
    topic: str | None  # None when the topic is not valid UTF-8
    raw_topic: bytes
    payload: bytes
    mid: int
    qos: int
    epoch: int  # the connection that delivered it
    role: int = 0  # _EVENT (0), _CONTROL or _HEALTH: what the topic is (an invalid one is an event, refused later)


_EVENT, _CONTROL, _HEALTH = 0, 1, 2


def _role(topic: str | None) -> int:
    if topic is None:
        return _EVENT
    if is_health_topic(topic):
        return _HEALTH
    return _CONTROL if is_control_topic(topic) else _EVENT


class Gateway:
    """MQTT → InfluxDB gateway for one workshop. `start()`, then `stop()`; `stats` may be read at any time."""

    def __init__(
        self,
        workshop: Workshop,
        *,
        deadletter_path: Path | None = None,
        retry_cap_s: float = 10.0,
    ) -> None:
        """`retry_cap_s` caps the wait between retries when InfluxDB fails (and so the delay to notice that it
        is back): small enough to catch up soon after an outage, large enough not to hammer a sick server."""
        settings = workshop.gateway
        self.workshop = workshop
        self._max_batch = settings.max_batch_lines
        self._retry_cap_s = retry_cap_s
        self._stopping = threading.Event()
        self._inbox: queue.SimpleQueue[_Delivery] = queue.SimpleQueue()
        self.writer = InfluxWriter(workshop.influxdb, stop=self._stopping, retry_cap_s=retry_cap_s)
        self.dead_letters = DeadLetters(deadletter_path or workshop.state_dir / "deadletter" / "gateway.jsonl")

        # Counters: `_received` and `_health_received` are written by the network thread only, the others by
        # the writer thread only.
        self._received = 0
        self._health_received = 0
        self._stored = 0
        self._health_stored = 0
        self._batches = 0
        self._last_batch_size = 0
        self._machines: dict[str, _MachineSeen] = {}
        self._started = time.monotonic()
        self._health_wake = threading.Event()  # report now (on connect, on stop) rather than at the interval

        self._ack_lock = threading.Lock()  # makes "same connection? then acknowledge" one step
        self._epoch = 0
        self._acks_closed = False
        self._subscribed = threading.Event()

        self.link = MqttLink(
            workshop.mqtt,
            client_id=settings.client_id,
            clean_start=False,
            session_expiry_s=min(settings.session_expiry_h * 3600, _MAX_SESSION_EXPIRY_S),
            manual_ack=True,
            # Room for the batch being written plus the next one, so the broker never waits on us when idle.
            receive_maximum=min(65535, 2 * settings.max_batch_lines),
            on_connected=self._on_connected,
            on_message=self._on_message,
            fast=True,  # buffered reads and one PUBACK packet per batch (copeau/mqttfast.py)
        )
        self._client = cast(FastClient, self.link.client)
        self._health_backlog = HealthReports(self.link)  # kept while the broker is away
        # MqttLink does not use these paho hooks; the gateway needs them for epochs and readiness. The epoch moves
        # on before paho drops the old connection's queued packets (before_reconnect), and again once it has.
        self._client.before_reconnect = self._new_epoch
        self._client.on_pre_connect = self._on_pre_connect
        self._client.on_subscribe = self._on_subscribe
        # The inbox's bound: mosquitto 2.0.11 lets more than `receive_maximum` messages be in flight once PUBACKs
        # flow (measured: BENCHMARKS.md), so the network thread stops reading at this depth (copeau/mqttfast.py).
        self._inbox_limit = min(65535, 2 * settings.max_batch_lines)
        self._room = threading.Event()
        self._held_back = False  # the network thread declined to read for want of room (see _may_read)
        self._client.may_read = self._may_read
        self._client.on_message_raw = self._on_publish  # the common messages, without building an MQTTMessage
        group = settings.shared_group
        # With a group, the broker hands each message to one of the group's gateways (MQTT 5 shared subscription).
        self.subscriptions = tuple(f"$share/{group}/{topic}" if group else topic
                                   for topic in (EVENT_SUBSCRIPTION, HEALTH_SUBSCRIPTION))
        self._thread = threading.Thread(target=self._run, name=f"gateway-writer-{settings.client_id}", daemon=True)
        self._health_thread = threading.Thread(
            target=self._health_run, name=f"gateway-health-{settings.client_id}", daemon=True
        )

    # -- lifecycle

    def start(self) -> None:
        """Create the database if need be, start the writer thread, and connect to the broker."""
        self.writer.ensure_database(self.workshop.influxdb.database)
        self._thread.start()
        self.link.start()
        self._health_thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged our subscription on the current connection."""
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 10) -> None:
        """Stop taking messages, let the batch in hand finish (or abort it unacknowledged if InfluxDB is failing),
        then disconnect. Whatever was not acknowledged is re-delivered by the broker at the next start."""
        self._stopping.set()
        self._health_wake.set()
        if self._health_thread.is_alive():
            self._health_thread.join(timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)
        finished = not self._thread.is_alive()
        if not finished:
            log.warning("gateway writer still busy after %.0f s; stopping without acknowledging its batch", timeout)
        with self._ack_lock:
            self._acks_closed = True  # a writer that is still busy must not acknowledge after this point
        self.link.stop()  # the acknowledgements already handed to paho go out before the DISCONNECT
        if finished:  # otherwise the busy thread still uses them
            self.writer.close()
            self.dead_letters.close()

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive (False before start, after stop, or if it died of a bug)."""
        return self._thread.is_alive()

    @property
    def stats(self) -> GatewayStats:
        """A snapshot of the counters. Each one is exact; they are read one after the other, not atomically."""
        return GatewayStats(
            received=self._received,
            stored_points=self._stored,
            dead_letters=self.dead_letters.count,
            write_retries=self.writer.retries,
            batches=self._batches,
            last_batch_size=self._last_batch_size,
            health_received=self._health_received,
            health_stored=self._health_stored,
        )

    def health(self) -> GatewayHealth:
        """The gateway's health report now (copeau/contract.py GatewayHealth)."""
        stats = self.stats
        now = time.time_ns()
        machines = {
            machine: GatewayMachineHealth(
                received=seen.received,
                last_event_ts=seen.last_event_ts,
                last_received_ts=seen.last_received_ts,
                last_received_age_s=age_s(now, seen.last_received_ts),
            )
            for machine, seen in dict(self._machines).items()  # a copy: the writer thread may add one meanwhile
        }
        metrics = GatewayMetrics(
            received=stats.received,
            stored=stats.stored_points,
            dead_letters=stats.dead_letters,
            write_retries=stats.write_retries,
            batches=stats.batches,
            queue_depth=self._inbox.qsize(),
            health_stored=stats.health_stored,
            mqtt_connected=self.link.connected.is_set(),
            mqtt_reconnects=self.link.reconnects,
            influx_ok=self.writer.last_error is None,
            uptime_s=round(time.monotonic() - self._started, 3),
        )
        settings = self.workshop.gateway
        return GatewayHealth(
            site=self.workshop.site.id,
            service=settings.client_id,
            ts=now,
            interval_s=settings.health_interval_s,
            metrics=metrics,
            machines=machines,
        )

    # -- health thread

    def _health_run(self) -> None:
        while True:
            self._health_wake.wait(self.workshop.gateway.health_interval_s)
            self._health_wake.clear()
            if self._stopping.is_set():
                return
            self._report_health()

    def _report_health(self) -> None:
        """Publish a health report now, after those kept while the broker was unreachable; or keep it."""
        report = self.health()
        self._health_backlog.publish(report)

    # -- paho callbacks (network thread): no I/O, no waiting

    def _new_epoch(self) -> None:
        with self._ack_lock:
            self._epoch += 1

    def _on_pre_connect(self, _client: Any, _userdata: Any) -> None:
        # Called by paho before each new connection, after it dropped the packets queued for the old one.
        self._new_epoch()
        self._subscribed.clear()

    def _on_connected(self, session_present: bool) -> None:
        # Subscribe on every connection: the session may have expired, or the broker may have lost it.
        result, _mid = self.link.client.subscribe([(topic, 1) for topic in self.subscriptions])
        if result != paho.MQTT_ERR_SUCCESS:
            log.warning("MQTT %s: could not send SUBSCRIBE (%s)", self.link.client_id, paho.error_string(result))
        elif not session_present:
            log.info("MQTT %s: new session (nothing kept by the broker from before)", self.link.client_id)
        self._health_wake.set()  # a report at once: those kept during the outage, then how things stand now

    def _on_subscribe(self, _client: Any, _userdata: Any, _mid: int, reasons: list[Any], _props: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error("MQTT %s: broker refused the subscription to %s (%s); check the broker's ACL",
                      self.link.client_id, " or ".join(self.subscriptions), refused[0])
            return
        self._subscribed.set()

    def _may_read(self) -> bool:
        # Network thread. The writer sets `_room` after each take; the short wait keeps paho's loop turning (writes,
        # keepalives) while the inbox is full. `_held_back` is set *before* the last look at the inbox: a writer
        # that takes a batch after that look then sees it and wakes paho's loop (`_took`). Set after the look, a
        # take in between went unnoticed and the buffered messages waited for paho's next select() timeout (1 s):
        # the ~1 s stalls seen in the benchmark (BENCHMARKS.md).
        if self._inbox.qsize() < self._inbox_limit:
            return True
        self._held_back = True
        self._room.clear()
        if self._inbox.qsize() < self._inbox_limit:  # the writer took some meanwhile
            self._held_back = False
            return True
        self._room.wait(0.01)
        if self._inbox.qsize() < self._inbox_limit:
            self._held_back = False
            return True
        return False

    def _took(self) -> None:
        """Writer thread, after each take from the inbox: room again, and paho's loop woken if it held back."""
        self._room.set()
        if self._held_back:  # the network thread stopped reading: have it look at its buffer again now
            self._held_back = False
            self._client.wake()

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        # Not `msg.topic`: it raises on a topic that is not UTF-8, and an exception here would end paho's
        # network thread. Such a message is dead-lettered like any other malformed one.
        self._on_publish(msg._topic, msg.payload, msg.mid, msg.qos, msg.dup, msg.retain)

    def _on_publish(self, raw_topic: bytes, payload: bytes | bytearray, mid: int, qos: int, _dup: bool,
                    _retain: bool) -> None:
        """Every message, from `_on_message` or straight from FastClient (`on_message_raw`, copeau/mqttfast.py)."""
        raw_topic = bytes(raw_topic)
        try:
            topic: str | None = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            topic = None
        role = _role(topic)
        if role == _HEALTH:
            self._health_received += 1
        else:
            self._received += 1
        self._inbox.put(_Delivery(topic, raw_topic, bytes(payload), mid, qos, self._epoch, role))

    # -- writer thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._inbox.get(timeout=_TAKE_TIMEOUT_S)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            self._took()
            try:
                self._process(batch)
            except StoreStopped as exc:
                log.info("gateway stopped during a batch of %d messages (%s); left unacknowledged, the broker "
                         "re-delivers them", len(batch), exc)
                return

    def _process(self, batch: list[_Delivery]) -> None:
        lines: list[str] = []
        owners: list[_Delivery] = []  # owners[i] is the message of lines[i]
        health: list[bool] = []  # health[i]: lines[i] is a health point (counted apart)
        now = time.time_ns()  # when the batch's messages were seen, for the health report
        for delivery in batch:
            role = delivery.role
            if role == _CONTROL:
                continue  # a job context or badge scan: for collectors and the web service, not stored here
            is_health = role == _HEALTH
            try:
                if is_health:
                    new = health_lines(decode_health(cast(str, delivery.topic), delivery.payload))
                else:
                    fields, line = _encode_fields(delivery)
                    new = [line]
                    self._seen(fields, now)
            except ContractError as exc:
                self._dead_letter(delivery, exc.reason)
            except LineProtocolError as exc:
                self._dead_letter(delivery, f"cannot be stored as a point: {exc}")
            else:
                lines.extend(new)
                owners.extend([delivery] * len(new))
                health.extend([is_health] * len(new))
        if lines:
            result = self.writer.write(lines)
            refused: set[int] = set()  # a health report has several points: one dead letter for it
            for rejected in result.rejected:
                owner = owners[rejected.index]
                if id(owner) not in refused:
                    refused.add(id(owner))
                    self._dead_letter(owner, f"InfluxDB rejected the point: {rejected.error}")
            bad = {r.index for r in result.rejected}
            self._stored += sum(1 for i in range(len(lines)) if not health[i] and i not in bad)
            self._health_stored += sum(1 for i in range(len(lines)) if health[i] and i not in bad)
        self._acknowledge(batch)
        self._batches += 1
        self._last_batch_size = len(batch)

    def _dead_letter(self, delivery: _Delivery, reason: str) -> None:
        """Write the dead letter, retrying while the disk refuses: the message is acknowledged only after."""
        topic = delivery.topic or delivery.raw_topic.decode("utf-8", "surrogateescape")
        delays: Iterator[float] | None = None
        while True:
            try:
                self.dead_letters.add(topic=topic, payload=delivery.payload, reason=reason)
            except OSError as exc:
                if delays is None:
                    log.exception("cannot write the dead-letter file %s; retrying", self.dead_letters.path)
                    delays = full_jitter(cap_s=self._retry_cap_s)
                if self._stopping.wait(next(delays)):
                    raise StoreStopped("stopped while the dead-letter file could not be written") from exc
            else:
                if delays is not None:
                    log.info("dead-letter file %s writable again", self.dead_letters.path)
                return

    def _acknowledge(self, batch: list[_Delivery]) -> None:
        with self._ack_lock:
            if self._acks_closed:
                return
            epoch = self._epoch
            # QoS 0 needs no acknowledgement; an older connection's copy is re-delivered. The subscriptions are
            # QoS 1, so QoS 2 never comes: acknowledged one by one all the same, should it ever.
            if any(d.qos == 2 for d in batch):
                for delivery in batch:
                    if delivery.epoch == epoch:
                        self._client.ack(delivery.mid, delivery.qos)
                return
            self._client.ack_many([d.mid for d in batch if d.qos == 1 and d.epoch == epoch])

    def _seen(self, event: dict[str, Any], now: int) -> None:
        if event["site"] != self.workshop.site.id:
            return  # the health report is per machine of this gateway's site
        machine, ts = event["machine"], event["ts"]
        seen = self._machines.get(machine)
        if seen is None:
            seen = self._machines[machine] = _MachineSeen()
        seen.received += 1
        seen.last_event_ts = max(ts, seen.last_event_ts or ts)
        seen.last_received_ts = now


def _encode(delivery: _Delivery) -> tuple[Event, str]:
    """The message as one line of line protocol, through the contract's models (the reference for
    `_encode_fields`, which the gateway uses). Raises ContractError or LineProtocolError."""
    if delivery.topic is None:
        raise ContractError("topic is not valid UTF-8")
    event = decode_event(delivery.topic, delivery.payload)
    return event, event_line(event, context_tags=context_tags(event))


def _encode_fields(delivery: _Delivery) -> tuple[dict[str, Any], str]:
    """`_encode` without building models (copeau/contract.py `decode_event_fields`): the same line or the same
    refusal, about three times faster. Raises ContractError or LineProtocolError."""
    if delivery.topic is None:
        raise ContractError("topic is not valid UTF-8")
    event = decode_event_fields(delivery.topic, delivery.payload)
    # The job context (order, operation, apprentice code: never a name) becomes tags as with context_tags(),
    # read from event["ctx"] by the line encoder itself: no tags dict is built for each message.
    return event, event_fields_ctx_line(event)


def health_lines(report: CollectorHealth | GatewayHealth) -> list[str]:
    """A health report as points of `copeau_health`: one for the service, one per machine, at the report's time.
    Tags: site, service, kind (+ machine); fields: the numbers (absent ones left out)."""
    tags = {"site": report.site, "service": report.service, "kind": report.kind.value}
    lines = [encode_line(HEALTH_MEASUREMENT, tags, _fields(report.metrics), report.ts)]
    for machine, numbers in sorted(report.machines.items()):
        lines.append(encode_line(HEALTH_MEASUREMENT, {**tags, "machine": machine}, _fields(numbers), report.ts))
    return lines


def _fields(model: Any) -> dict[str, FieldValue]:
    # JSON mode: plain int, float and bool (an IntEnum becomes its number), so each field keeps one type.
    return dict(model.model_dump(mode="json", exclude_none=True))


def context_tags(event: Event) -> dict[str, str]:
    """The job an event belongs to, as InfluxDB tags (order, operation, apprentice code: never a name)."""
    ctx = event.ctx
    if ctx is None:
        return {}
    tags = {"order": ctx.order, "operation": None if ctx.operation is None else str(ctx.operation),
            "apprentice": ctx.apprentice}
    return {k: v for k, v in tags.items() if v is not None}

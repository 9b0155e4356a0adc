"""The web service's MQTT side: it publishes each machine's job context (retained, QoS 1) and listens to
hardware badge readers on `copeau/v1/<site>/+/badge`.

The subscription is not durable (clean start): a badge scanned while the service is down is not replayed
later, when the apprentice has long walked away; they scan again. Readers' scans go to the same station flow as
the kiosk's (`orders.station`), in paho's network thread; refusals are logged, since a reader has no screen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as paho
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from copeau.config import Workshop
from copeau.contract import TOPIC_ROOT, BadgeScan, ControlKind, JobContext, control_topic
from copeau.mqtt import MqttLink
from orders.errors import OrdersError
from orders.station import Stations, Via

log = logging.getLogger(__name__)


def badge_subscription(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/+/{ControlKind.BADGE.value}"


class StationLink:
    """One MQTT connection for the web service. `publish_context` is thread-safe (paho's own lock)."""

    def __init__(self, workshop: Workshop, *, client_id: str | None = None) -> None:
        self.site = workshop.site.id
        self._machines = {m.id for m in workshop.machines}
        self._pending: set[int] = set()
        self._acked_early: set[int] = set()  # PUBACKs that arrived before publish() returned their message id
        self._lock = threading.Lock()
        self._all_sent = threading.Condition(self._lock)
        self.on_badge: Callable[[str, BadgeScan], None] | None = None
        # Called in a thread of its own after every connection but the first: publish the job contexts again.
        self.on_reconnected: Callable[[], None] | None = None
        self._connections = 0
        self.link = MqttLink(
            workshop.mqtt,
            client_id=client_id or f"copeau-web-{self.site}",
            clean_start=True,
            on_connected=self._subscribe,
            on_message=self._message,
            on_published=self._published,
        )

    def start(self) -> None:
        self.link.start()

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Wait (bounded) until the broker acknowledged every context, then disconnect."""
        if not self.wait_published(timeout_s):
            log.warning("MQTT: %d job context(s) not acknowledged by the broker; all are published again at the "
                        "next start", len(self._pending))
        self.link.stop()

    def publish_context(self, context: JobContext) -> None:
        """Publish a machine's job context, retained, QoS 1 (paho queues it while the broker is away)."""
        topic = control_topic(context.site, context.machine, ControlKind.CONTEXT)
        # Not under our lock: paho's publish() takes paho's own lock, and paho's network thread holds that lock
        # while it calls _published(), which takes ours. Holding ours here deadlocked (reproduced). A PUBACK that
        # arrives before we record the id is kept in _acked_early instead.
        mid = self.link.publish(topic, context.encode(), qos=1, retain=True)
        with self._lock:
            if mid in self._acked_early:
                self._acked_early.discard(mid)
            else:
                self._pending.add(mid)
        log.info("job context of %s published: %s", context.machine, context.context.model_dump(exclude_none=True))

    def wait_published(self, timeout_s: float) -> bool:
        """Whether every context published so far was acknowledged within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._all_sent:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._all_sent.wait(left)
        return True

    # -- paho's network thread

    def _published(self, mid: int) -> None:
        with self._all_sent:
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._acked_early.add(mid)
            self._all_sent.notify_all()

    def _subscribe(self, _session_present: bool) -> None:
        self.link.client.subscribe(badge_subscription(self.site), qos=1)
        self._connections += 1
        if self._connections > 1 and self.on_reconnected is not None:
            # Not in paho's network thread: republishing reads the database and waits on the stations' locks.
            threading.Thread(target=self._reconnected, name="copeau-web-republish", daemon=True).start()

    def _reconnected(self) -> None:
        try:
            if self.on_reconnected is not None:
                self.on_reconnected()
        except Exception:
            log.exception("MQTT: could not publish the job contexts again after a reconnection")

    def _message(self, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 5 or parts[4] != ControlKind.BADGE.value or parts[2] != self.site:
            return
        machine = parts[3]
        if machine not in self._machines:
            log.warning("badge scan for unknown machine %r ignored (topic %s)", machine, msg.topic)
            return
        try:
            scan = BadgeScan.model_validate_json(msg.payload)
        except ValidationError as exc:
            log.warning("badge scan on %s ignored: not a BadgeScan (%s)", msg.topic, exc.errors()[0]["msg"])
            return
        if self.on_badge is not None:
            self.on_badge(machine, scan)


def reader_scans(stations: Stations) -> Callable[[str, BadgeScan], None]:
    """What to do with a reader's scan: the kiosk flow, with refusals logged (a reader has no screen)."""

    def handle(machine: str, scan: BadgeScan) -> None:
        try:
            view = stations.scan(machine=machine, code=scan.code, via=Via.READER, now=datetime.now(UTC))
        except OrdersError as exc:
            log.info("badge reader at %s: refused: %s", machine, exc)
        except SQLAlchemyError:
            log.exception("badge reader at %s: database error; the scan is lost, scan again", machine)
        else:
            log.info("badge reader at %s: station now %s", machine, view.step.value)

    return handle

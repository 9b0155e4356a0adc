"""One MQTT connection, shared shape for the collector (publisher) and the gateway (durable subscriber).

paho-mqtt runs the network loop in its own thread (`loop_start`), which keeps `publish()` and `ack()`
safe to call from other threads. paho reconnects by itself with a plain doubling delay; we replace each
delay with a full-jitter draw (copeau.backoff) from its disconnect callbacks, so that many clients that
lost the same broker do not come back in lock-step.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from copeau.backoff import full_jitter
from copeau.config import MqttSettings
from copeau.mqttfast import FastClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


class MqttLink:
    """A paho client with jittered reconnects, MQTT 5, and connection state you can wait on."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        clean_start: bool,
        session_expiry_s: int = 0,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        will: Will | None = None,
        on_connected: Callable[[bool], None] | None = None,
        on_message: Callable[[paho.MQTTMessage], None] | None = None,
        on_published: Callable[[int], None] | None = None,
        backoff: Callable[[], Iterator[float]] = full_jitter,
        fast: bool = False,
    ) -> None:
        """`fast`: use copeau.mqttfast.FastClient (buffered reads, `ack_many`) rather than paho's own client."""
        self.settings = settings
        self.client_id = client_id
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._backoff_factory = backoff
        self._backoff = backoff()
        self._on_connected = on_connected
        self.connected = threading.Event()
        self.reconnects = 0  # connections made after the first one
        self._ever_connected = False
        self._lost_logged = False
        self._stopping = False

        client = (FastClient if fast else paho.Client)(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
        )
        if settings.username:
            client.username_pw_set(settings.username, settings.password.read())
        if settings.tls is not None:
            # Check the broker's certificate (chain and host name) against the site's CA.
            client.tls_set(ca_certs=str(settings.tls.ca_file))
        if will is not None:
            client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        # No cap on paho's own queue of outgoing messages: callers bound what they hand over.
        client.max_inflight_messages_set(65535)
        client.max_queued_messages_set(0)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_connect_fail = self._handle_connect_fail
        if on_message is not None:
            client.on_message = lambda _c, _u, msg: on_message(msg)
        self.refused = 0  # publications the broker refused (MQTT 5 PUBACK with a failure code, e.g. its ACL)
        self._refused_topics: set[str] = set()
        self._inflight_topics: dict[int, str] = {}  # message id → topic, to name a refused publication
        if on_published is not None:
            client.on_publish = lambda _c, _u, mid, rc, _p: self._handle_published(mid, rc, on_published)
        self.client = client

    # -- lifecycle

    def start(self) -> None:
        self._stopping = False
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho ships no annotations here
        if self._session_expiry_s:
            props.SessionExpiryInterval = self._session_expiry_s
        if self._receive_maximum:
            props.ReceiveMaximum = self._receive_maximum
        self._next_delay()
        self.client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=self._clean_start,
            properties=props,
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Hand one message to paho; returns its message id (acknowledged later through on_published)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            self._inflight_topics[int(info.mid)] = topic
        return int(info.mid)

    # -- paho callbacks (network thread)

    def _handle_published(self, mid: int, reason: Any, on_published: Callable[[int], None]) -> None:
        topic = self._inflight_topics.pop(mid, None)
        if getattr(reason, "is_failure", False):
            # Refused (MQTT 5 PUBACK 0x87 "Not authorized" from the broker's ACL, for instance): the message was
            # NOT delivered, so it is not reported as published; a collector keeps it in its outbox. Logged once
            # per topic; never the payload.
            self.refused += 1
            if (topic or "?") not in self._refused_topics:
                self._refused_topics.add(topic or "?")
                log.error("MQTT %s: the broker refused a publication on %s (%s); check the broker's ACL and this "
                          "client's account (docs/operations.md)", self.client_id, topic or "?", reason)
            return
        on_published(mid)

    def _next_delay(self) -> None:
        delay = next(self._backoff)
        self.client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]  # paho accepts floats

    def _handle_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            if not self._lost_logged:  # e.g. bad credentials: say it once, not at every attempt
                log.warning("MQTT %s:%s refused %s: %s", self.settings.host, self.settings.port, self.client_id, reason)
                self._lost_logged = True
            self._next_delay()
            return
        session_present = bool(getattr(_flags, "session_present", False))
        if self._ever_connected:
            self.reconnects += 1
            log.info("MQTT %s: connection back (session kept: %s)", self.client_id, session_present)
        self._ever_connected = True
        self._lost_logged = False
        self._backoff = self._backoff_factory()
        self._next_delay()
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected(session_present)

    def _handle_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if self._stopping:
            return
        if not self._lost_logged:  # log once on loss, once on recovery
            log.warning("MQTT %s: connection lost (%s); reconnecting", self.client_id, reason)
            self._lost_logged = True
        self._next_delay()

    def _handle_connect_fail(self, _c: Any, _u: Any) -> None:
        if not self._lost_logged:
            log.warning(
                "MQTT %s: broker %s:%s unreachable; retrying",
                self.client_id,
                self.settings.host,
                self.settings.port,
            )
            self._lost_logged = True
        self._next_delay()


HEALTH_BACKLOG = 360  # health reports kept while the broker is unreachable (one hour at the default 10 s)


class _Report(Protocol):
    @property
    def topic(self) -> str: ...

    def encode(self) -> bytes: ...


class HealthReports:
    """A service's health reports on its MQTT link (collector and gateway alike; docs/data-contract.md).

    `publish(report)` sends it retained; while the broker is unreachable it keeps it instead (the last
    `HEALTH_BACKLOG`), and the next publish first sends those kept, oldest first and not retained, so that InfluxDB
    shows what happened during the outage.
    """

    def __init__(self, link: MqttLink, *, keep: int = HEALTH_BACKLOG) -> None:
        self.link = link
        self._kept: deque[_Report] = deque(maxlen=keep)

    def __len__(self) -> int:
        return len(self._kept)

    def publish(self, report: _Report) -> None:
        if not self.link.connected.is_set():
            self._kept.append(report)
            return
        while self._kept:
            old = self._kept.popleft()
            self.link.publish(old.topic, old.encode(), qos=1, retain=False)
        self.link.publish(report.topic, report.encode(), qos=1, retain=True)

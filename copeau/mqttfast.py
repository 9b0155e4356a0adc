"""A paho client that reads the socket in large chunks and acknowledges a batch of messages at once.

Theory of operation (issue #7, BENCHMARKS.md): at tens of thousands of QoS 1 messages a second, paho's network
thread, not the broker, is what limits a Python subscriber. paho reads each packet with several tiny `recv()`
calls (the command byte, the length one byte at a time, then the rest), goes back to `select()` after each packet,
and sends each PUBACK as its own queued packet (one `send()` and one wake-up of its loop per message). This module
changes these private details of paho, and nothing of the protocol:

- `_sock_recv(n)` is served from a 64 KiB buffer filled by one `recv()`; paho's own packet parser (`_packet_read`)
  is untouched and still asks for 1 byte, then the length, then the rest. The buffer belongs to one socket object:
  after a reconnect, bytes left from the old socket are dropped, never parsed as the new connection's.
- `loop_read()` keeps parsing while bytes are buffered (select() cannot see them), writing what is queued (the
  PUBACKs) every `_WRITE_EVERY` packets so that acknowledgements keep flowing under a continuous stream. The common
  PUBLISH (below) that lies whole in the buffer is decoded there, in one loop over the buffer (`_take_publishes`),
  without paho's framing (a `_sock_recv` call per byte of the fixed header, the `_in_packet` dict, `_packet_handle`);
  anything else (another packet, one cut by the end of the buffer, one paho has begun) is paho's `_packet_read`.
  paho's bookkeeping of a read packet is kept: its time of the last bytes received (keepalive) is set after each
  batch, and `_in_packet` is left as paho leaves it between packets (these packets never enter it).
- `ack_many(mids)` queues the PUBACKs of a whole batch as one packet (one `_packet_queue` call, one wake-up, one
  `send()`), in the order given: the same bytes on the wire as `ack()` called for each, in that order.
- `_handle_publish()` decodes the common PUBLISH (MQTT 5, QoS 0 or 1, no properties, no per-topic callbacks) itself
  and calls `on_message` directly: no `Properties` object, topic-filter match or debug log line per message (the
  message's `properties` is then None). Anything else goes to paho's own `_handle_publish`. The decoding is the same
  whether paho framed the packet (`_handle_publish`) or `_take_publishes` found it in the buffer.
- `on_message_raw` (optional) receives these common messages as `(topic, payload, mid, qos, dup, retain)` instead of
  an `MQTTMessage` to `on_message` (building one costs more than decoding the packet); the others still go to
  `on_message`, so a consumer that sets it sets both.
- `may_read` (optional): while it returns False, `loop_read()` reads nothing (flow control for a consumer whose
  queue is full; paho's loop keeps sending and pinging meanwhile). Bytes already buffered are parsed by
  `loop_misc()` at the next turn of the loop, which the consumer brings forward with `wake()` when it has room.

It also calls `before_reconnect` (if set) at the start of every `reconnect()`, before paho drops the packets queued
for the old connection, so that a user can stop acknowledging the old connection's messages from that moment.

Safety: these are private methods, so the override applies only to paho versions in `_TESTED` (pyproject pins the
same range) whose classes still look as expected (`_check()`: the methods and their parameters, and that
`_packet_read` reads through `_sock_recv` and `_packet_queue` appends to `_out_packet`, and the client and message
attributes used exist, and the name of the time of the last bytes received, which paho 2.2 renamed). Otherwise the
client logs one warning and behaves exactly as paho's own (`ack_many` then calls `ack` for each message, and neither
`may_read` nor `on_message_raw` is used); `tests/unit/test_mqttfast.py` fails if the override stops applying.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import struct
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes

log = logging.getLogger(__name__)

_TESTED = ((2, 1), (2, 2))  # paho-mqtt minor versions checked by tests/unit/test_mqttfast.py
_READ_SIZE = 65536
_WRITE_EVERY = 256  # packets parsed from the buffer between two flushes of the queued PUBACKs
_PUBACK = struct.Struct("!BBH")
_PUBACK_COMMAND = PacketTypes.PUBACK << 4  # 0x40, as paho's own PUBACK constant
_PUBLISH_COMMAND = PacketTypes.PUBLISH << 4  # 0x30
# The attribute paho's `_packet_read` stamps after each packet, for its keepalive: renamed in paho 2.2.
_LAST_IN = next((name for name in ("_last_bytes_received", "_last_msg_in")
                 if name in paho.Client._packet_read.__code__.co_names), "")


def _check() -> str | None:
    """None when paho's internals are those this module was written against; else what differs."""
    try:
        major, minor = (int(x) for x in version("paho-mqtt").split(".")[:2])
    except (ValueError, ImportError) as exc:
        return f"cannot read paho-mqtt's version ({exc})"
    if (major, minor) not in _TESTED:
        return f"paho-mqtt {major}.{minor} is not one of the tested versions {_TESTED}"
    client = paho.Client
    expected = {
        "_sock_recv": ["self", "bufsize"],
        "loop_read": ["self", "max_packets"],
        "_packet_queue": ["self", "command", "packet", "mid", "qos", "info"],
        "reconnect": ["self"],
        "loop_write": ["self"],
        "loop_misc": ["self"],
    }
    for name, params in expected.items():
        method = getattr(client, name, None)
        if method is None:
            return f"paho.Client.{name} is gone"
        if list(inspect.signature(method).parameters) != params:
            return f"paho.Client.{name} takes {list(inspect.signature(method).parameters)}, not {params}"
    if "_sock_recv" not in client._packet_read.__code__.co_names:
        return "paho.Client._packet_read no longer reads through _sock_recv"
    if "_out_packet" not in client._packet_queue.__code__.co_names:
        return "paho.Client._packet_queue no longer queues on _out_packet"
    if getattr(paho, "sockpair_data", None) != b"0":
        return "paho's wake-up byte (sockpair_data) changed"
    if getattr(paho, "PUBACK", None) != _PUBACK_COMMAND or getattr(paho, "PUBLISH", None) != _PUBLISH_COMMAND:
        return "paho's PUBACK or PUBLISH command byte changed"
    if not _LAST_IN:
        return "paho.Client._packet_read no longer records when bytes were last received"
    if list(inspect.signature(client._handle_publish).parameters) != ["self"]:
        return "paho.Client._handle_publish takes parameters"
    probe = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    missing = [a for a in (*_CLIENT_ATTRIBUTES, _LAST_IN) if not hasattr(probe, a)]
    if missing:
        return f"paho.Client has no {', '.join(missing)}"
    message = paho.MQTTMessage(mid=1, topic=b"t")
    missing = [a for a in ("qos", "retain", "dup", "payload", "properties", "timestamp") if not hasattr(message, a)]
    if missing:
        return f"paho.MQTTMessage has no {', '.join(missing)}"
    return None


# What the overrides read or call on a paho client (checked on a throwaway client at import).
_CLIENT_ATTRIBUTES = ("_sock", "_in_packet", "_out_packet", "_protocol", "_manual_ack", "_callback_mutex",
                      "_in_callback_mutex", "_userdata", "suppress_exceptions", "on_message", "_easy_log",
                      "_send_puback", "want_write", "_sockpairW", "_msgtime_mutex", "_loop_rc_handle")


PROBLEM = _check()
ACTIVE = PROBLEM is None


@functools.cache
def _warn_disabled() -> None:
    log.warning("paho-mqtt fast path disabled, using paho's own reads and acknowledgements: %s", PROBLEM)


class FastClient(paho.Client):
    """paho.Client with buffered reads and `ack_many()`; plain paho when its internals are not the expected ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = ACTIVE  # whether the overrides below are in use for this client
        self.before_reconnect: Callable[[], None] | None = None
        self._copeau_buf = b""
        self._copeau_pos = 0
        self._copeau_sock: Any = None  # the socket the buffer was read from
        self._copeau_filters = False  # message_callback_add() was used: paho's own dispatch then
        # Flow control: when set and it returns False, no packet is read (it may wait a few ms first); paho's loop
        # still sends what is queued and its keepalives, and TCP holds the broker back meanwhile.
        self.may_read: Callable[[], bool] | None = None
        # When set, the common PUBLISHes (those decoded here, see the module's docstring) go to it instead of to
        # `on_message`, as (topic, payload, mid, qos, dup, retain): no MQTTMessage to build and read back, which
        # costs more than decoding the packet. The others (properties, QoS 2, MQTT 3.1.1, per-topic callbacks, or
        # `fast` off) still go to `on_message`, so a consumer sets both.
        self.on_message_raw: Callable[[bytes, bytes, int, int, bool, bool], None] | None = None
        if not ACTIVE:
            _warn_disabled()  # once per process

    # -- reads

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.fast:
            return super()._sock_recv(bufsize)
        buf, pos = self._copeau_buf, self._copeau_pos
        if pos >= len(buf) or self._copeau_sock is not self._sock:
            self._copeau_buf, self._copeau_pos = b"", 0  # also when the socket changed: old bytes are dropped
            buf = super()._sock_recv(_READ_SIZE)  # may raise BlockingIOError and the like, exactly as paho's
            self._copeau_buf, self._copeau_sock = buf, self._sock
            pos = 0
        end = pos + bufsize
        self._copeau_pos = end
        if pos == 0 and end >= len(buf):
            return buf
        return buf[pos:end]

    def _buffered(self) -> bool:
        return self._copeau_pos < len(self._copeau_buf) and self._copeau_sock is self._sock is not None

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if not self.fast:
            return super().loop_read(max_packets)
        may_read = self.may_read
        parsed = 0
        while True:
            budget = _WRITE_EVERY - parsed % _WRITE_EVERY
            taken, stop = self._take_publishes(may_read, budget)  # asks `may_read` before each packet it takes
            if stop is not None:
                return stop
            parsed += taken
            if taken < budget:
                # The next packet is not one `_take_publishes` takes, or nothing is buffered (then paho reads the
                # socket, into the buffer), or it is, but only after paho's own parse of a packet it began.
                if parsed and not self._buffered():
                    return MQTTErrorCode.MQTT_ERR_SUCCESS  # select() tells when the socket has more
                if may_read is not None and not may_read():
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                rc = super().loop_read(max_packets)
                parsed += 1
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
            if parsed % _WRITE_EVERY == 0 and self.want_write():
                rc = self.loop_write()  # the PUBACKs queued meanwhile, so that the broker keeps sending
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
            if not self._buffered():
                return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _take_publishes(self, may_read: Callable[[], bool] | None,
                        limit: int) -> tuple[int, MQTTErrorCode | None]:
        """Decode and deliver, straight from the buffer, up to `limit` common PUBLISH packets (those `_handle_publish`
        decodes itself) that lie whole in it, asking `may_read` before each; stop at the first other packet, which is
        paho's. Returns how many were delivered, and what `loop_read` must return now (None: carry on).

        Why: paho's framing of a packet (a `_sock_recv` call for the command byte and for each length byte, the
        `_in_packet` dict, `_packet_handle`) costs more than its decoding. The delivery is `_handle_publish`'s, and
        what paho does after each packet it reads is kept: the time of the last bytes received is stamped (once per
        call here) and `_in_packet` stays as paho leaves it between packets, since these packets never enter it."""
        sock = self._sock
        buf, pos = self._copeau_buf, self._copeau_pos
        end = len(buf)
        if (pos >= end or sock is None or self._copeau_sock is not sock or self._in_packet["command"]
                or self._copeau_filters or self._protocol != MQTTProtocolVersion.MQTTv5):
            return 0, None
        taken = 0
        deliver = self._deliver
        try:
            while taken < limit and pos < end:
                header = buf[pos]
                if header & 0xF6 not in (0x30, 0x32) or pos + 2 >= end:  # not a PUBLISH at QoS 0 or 1
                    break
                # The remaining length, on one or two bytes here (up to 16383); a longer one is paho's.
                length = buf[pos + 1]
                start = pos + 2
                if length > 127:
                    byte = buf[start]
                    if byte > 127:
                        break
                    length = (length & 127) | byte << 7
                    start += 1
                stop = start + length
                if stop > end or length < 3:  # cut by the end of the buffer (or too short: paho decides)
                    break
                topic_end = start + 2 + (buf[start] << 8 | buf[start + 1])
                qos = (header >> 1) & 1
                props = topic_end + 2 * qos
                if props >= stop or buf[props]:  # properties (or a short packet): paho decides
                    break
                if may_read is not None and not may_read():
                    return taken, MQTTErrorCode.MQTT_ERR_SUCCESS
                mid = buf[topic_end] << 8 | buf[topic_end + 1] if qos else 0
                try:
                    deliver(header, buf[start + 2:topic_end], buf[props + 1:stop], mid)
                except BaseException:
                    # The packet stays in the buffer: paho too keeps it (in `_in_packet`), and handles it again at
                    # the next read.
                    self._stamp_received()
                    raise
                pos = stop
                taken += 1
                if qos and not self._manual_ack:
                    rc = self._send_puback(mid)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return taken, self._loop_rc_handle(rc)  # as paho's loop_read
                if self._sock is not sock:  # a callback reconnected or disconnected: the buffer is not the socket's
                    return taken, MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            self._copeau_pos = pos
            if taken:
                self._stamp_received()
        return taken, None

    def _stamp_received(self) -> None:
        """What paho's `_packet_read` does after reading a packet: its keepalive counts from the last bytes received,
        and ends the connection when the broker stays silent for too long."""
        with self._msgtime_mutex:
            setattr(self, _LAST_IN, time.monotonic())

    def loop_misc(self) -> MQTTErrorCode:
        rc = super().loop_misc()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.fast and self._buffered():
            # Bytes read ahead but held back by `may_read`: select() cannot see them, so they are parsed here, at
            # every turn of paho's loop (`wake()` makes one when the consumer has room again), not only when the
            # broker sends more, which it may not do: it can be waiting for the acknowledgements of these very
            # messages (receive maximum), and then only the next keepalive would unblock the stream.
            rc = self.loop_read()
        return rc

    def wake(self) -> None:
        """Make paho's loop turn now (it may be waiting in select() for up to a second), as paho itself does when a
        packet is queued: the consumer calls it when `may_read` would answer True again."""
        pair = self._sockpairW
        if self.fast and pair is not None:
            with contextlib.suppress(OSError):  # BlockingIOError included: a wake-up is already pending
                pair.send(paho.sockpair_data)

    # -- incoming PUBLISH

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._copeau_filters = True
        super().message_callback_add(sub, callback)

    def _handle_publish(self) -> MQTTErrorCode:
        """paho's own, except for the common case (MQTT 5, QoS 0 or 1, no properties, no per-topic callbacks), which
        is decoded here without a `Properties` object, a topic match or a debug log line (`properties` is None)."""
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if not self.fast or qos > 1 or self._copeau_filters or self._protocol != MQTTProtocolVersion.MQTTv5:
            return super()._handle_publish()  # QoS 2, and the invalid QoS 3 that paho refuses
        packet = self._in_packet["packet"]
        pos = 2 + int.from_bytes(packet[:2], "big")
        topic = packet[2:pos]
        mid = 0
        if qos:
            mid = int.from_bytes(packet[pos:pos + 2], "big")
            pos += 2
        if len(packet) <= pos or packet[pos] != 0:  # properties (or a short packet): paho decides
            return super()._handle_publish()
        self._deliver(header, bytes(topic), bytes(packet[pos + 1:]), mid)  # bytes, as paho's (not bytearrays)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _deliver(self, header: int, topic: bytes, payload: bytes, mid: int) -> None:
        """The message to `on_message_raw`, else to `on_message`, with paho's locks and its handling of an exception
        in the callback."""
        raw = self.on_message_raw
        if raw is not None:
            with self._in_callback_mutex:
                try:
                    raw(topic, payload, mid, (header & 0x06) >> 1, bool(header & 0x08), bool(header & 0x01))
                except Exception as err:
                    self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
            return
        message = paho.MQTTMessage(mid=mid, topic=topic)
        message.dup = bool(header & 0x08)
        message.qos = (header & 0x06) >> 1
        message.retain = bool(header & 0x01)
        message.properties = None
        message.payload = payload
        message.timestamp = time.monotonic()
        with self._callback_mutex:
            on_message = self.on_message
        if on_message:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise

    # -- acknowledgements

    def ack_many(self, mids: Sequence[int]) -> None:
        """Acknowledge QoS 1 messages (manual_ack mode), in the order given, with one queued packet."""
        if not mids or not self._manual_ack:
            return
        if not self.fast:
            for mid in mids:
                self.ack(mid, 1)
            return
        pack = _PUBACK.pack
        self._packet_queue(_PUBACK_COMMAND, b"".join([pack(_PUBACK_COMMAND, 2, mid) for mid in mids]), 0, 1)

    # -- reconnection

    def reconnect(self) -> MQTTErrorCode:
        hook = self.before_reconnect
        if hook is not None:
            hook()
        return super().reconnect()

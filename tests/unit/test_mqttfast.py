"""copeau/mqttfast.py: the paho overrides apply to the installed paho, parse the same packets as paho, acknowledge
with the same bytes, and fall back to paho's own code (with one warning) when paho's internals are not the expected
ones. If paho is upgraded and these tests fail, read the theory of operation at the top of copeau/mqttfast.py."""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from copeau import mqttfast
from copeau.mqttfast import FastClient


def _publish(topic: bytes, payload: bytes, mid: int, *, qos: int = 1, props: bytes = b"\x00") -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"") + props + payload
    length, remaining = b"", len(body)
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length += bytes([byte | (128 if remaining else 0)])
        if not remaining:
            break
    return bytes([0x30 | (qos << 1)]) + length + body


def _client(cls: type[paho.Client], received: list[paho.MQTTMessage]) -> paho.Client:
    client = cls(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    client.on_message = lambda _c, _u, msg: received.append(msg)
    return client


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _read_all(client: paho.Client) -> None:
    for _ in range(1000):  # what paho's loop would do while select() says readable
        before = client._in_packet.copy()
        client.loop_read()
        if client._in_packet == before and client._in_packet["command"] == 0:
            try:
                sock: Any = client._sock
                if not sock.recv(1, socket.MSG_PEEK):
                    return
            except BlockingIOError:
                return


def test_the_override_applies_to_the_installed_paho() -> None:
    """Fails when paho changes under us: then pin paho to a tested version, or update mqttfast and _TESTED."""
    assert mqttfast.PROBLEM is None
    assert mqttfast.ACTIVE
    assert FastClient(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5).fast


def test_it_reads_what_paho_reads(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    packets = [
        _publish(b"copeau/v1/s/m/state", b'{"a":1}', 1),
        _publish(b"copeau/v1/s/m/part", b"x" * 300, 2),  # a length on two bytes
        _publish(b"copeau/v1/s/m/cycle", b"p", 3, props=b"\x02\x01\x01"),  # with a property: paho's own path
        _publish(b"copeau/v1/s/m/alarm", b"zero", 0, qos=0),
        _publish(b"\xff\xfe/bad", b"not utf-8 topic", 4),
    ]
    stream = b"".join(packets * 50)
    results = {}
    for cls in (paho.Client, FastClient):
        received: list[paho.MQTTMessage] = []
        client = _client(cls, received)
        client._sock = ours
        for i in range(0, len(stream), 997):  # in pieces that cut packets anywhere
            broker.sendall(stream[i:i + 997])
            _read_all(client)
        results[cls] = [(m._topic, m.payload, m.mid, m.qos, m.retain, m.dup) for m in received]
        client._sock = None
    assert len(results[FastClient]) == 250
    assert results[FastClient] == results[paho.Client]


def test_ack_many_sends_the_bytes_of_one_ack_per_message() -> None:
    queued = {}
    mids = [1, 2, 300, 65535]
    for cls in (paho.Client, FastClient):
        client = _client(cls, [])
        if cls is FastClient:
            client.ack_many(mids)  # type: ignore[attr-defined]
        else:
            for mid in mids:
                client.ack(mid, 1)
        queued[cls] = b"".join(bytes(p["packet"]) for p in client._out_packet)
    assert queued[FastClient] == queued[paho.Client] == b"".join(b"\x40\x02" + struct.pack("!H", m) for m in mids)
    assert len(_client(FastClient, [])._out_packet) == 0


def test_bytes_of_an_old_connection_are_never_parsed_as_the_new_ones(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    received: list[paho.MQTTMessage] = []
    client = _client(FastClient, received)
    client._sock = ours
    broker.sendall(_publish(b"t/old", b"1", 1) + _publish(b"t/old", b"2", 2)[:5])
    client._sock_recv(1)  # what paho would do: the command byte, and the rest stays buffered
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        client._sock = a  # reconnected: paho resets its packet state too
        client._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                             "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        b.sendall(_publish(b"t/new", b"3", 7))
        _read_all(client)
        assert [(m._topic, m.payload) for m in received] == [(b"t/new", b"3")]
    finally:
        client._sock = None
        a.close()
        b.close()


def test_nothing_is_read_while_may_read_says_no(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    received: list[paho.MQTTMessage] = []
    client = _client(FastClient, received)
    client._sock = ours
    allowed = [False]
    client.may_read = lambda: allowed[0]  # type: ignore[attr-defined]
    broker.sendall(b"".join(_publish(b"t", str(i).encode(), i + 1) for i in range(10)))
    client.loop_read()
    assert received == []
    allowed[0] = True
    _read_all(client)
    assert [m.payload for m in received] == [str(i).encode() for i in range(10)]
    client._sock = None


def test_before_reconnect_runs_before_paho_drops_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(FastClient, [])
    client.ack_many([5])  # type: ignore[attr-defined]
    seen: list[int] = []
    client.before_reconnect = lambda: seen.append(len(client._out_packet))  # type: ignore[attr-defined]
    monkeypatch.setattr(paho.Client, "reconnect", lambda self: seen.append(-1))
    client.reconnect()
    assert seen == [1, -1]


def test_a_changed_paho_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paho.Client, "_sock_recv", lambda self, size, flags=0: b"")
    assert "_sock_recv" in (mqttfast._check() or "")
    monkeypatch.undo()
    monkeypatch.setattr(mqttfast, "version", lambda _name: "2.9.0")
    assert "2.9" in (mqttfast._check() or "")


def test_otherwise_it_is_paho_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture,
                                               pair: tuple[socket.socket, socket.socket]) -> None:
    monkeypatch.setattr(mqttfast, "ACTIVE", False)
    monkeypatch.setattr(mqttfast, "PROBLEM", "paho-mqtt 9.9 is not one of the tested versions")
    mqttfast._warn_disabled.cache_clear()
    caplog.set_level(logging.WARNING, logger="copeau.mqttfast")
    received: list[Any] = []
    clients = [_client(FastClient, received) for _ in range(2)]
    assert [c.fast for c in clients] == [False, False]  # type: ignore[attr-defined]
    assert [r.message for r in caplog.records].count(
        "paho-mqtt fast path disabled, using paho's own reads and acknowledgements: paho-mqtt 9.9 is not one of "
        "the tested versions") == 1
    clients[0].ack_many([3, 4])  # type: ignore[attr-defined]
    assert len(clients[0]._out_packet) == 2  # paho's own ack(), one packet each
    ours, broker = pair
    clients[1]._sock = ours
    broker.sendall(_publish(b"t", b"p", 9))
    _read_all(clients[1])
    assert [m.payload for m in received] == [b"p"]
    clients[1]._sock = None
    mqttfast._warn_disabled.cache_clear()


# -- PUBLISH packets decoded straight from the read buffer (FastClient._take_publishes)

_PINGREQ = b"\xc0\x00"  # paho answers it with a PINGRESP: a non-PUBLISH packet whose effect is seen on the wire
_PINGRESP = b"\xd0\x00"
_PUBREL = b"\x62\x02"  # + the packet id (2 bytes): completes a QoS 2 delivery


def _mixed_stream() -> list[bytes]:
    """Packets of every kind the fast path must take or leave to paho, in an order that puts each after each."""
    return [
        _publish(b"copeau/v1/s/m/state", b'{"a":1}', 1),
        _publish(b"copeau/v1/s/m/part", b"x" * 300, 2),  # a length on two bytes
        _PINGREQ,
        _publish(b"copeau/v1/s/m/cycle", b"p", 3, props=b"\x02\x01\x01"),  # with a property: paho's own path
        _publish(b"copeau/v1/s/m/alarm", b"zero", 0, qos=0),
        _publish(b"copeau/v1/s/m/q2", b"two", 4, qos=2),  # QoS 2: paho's (PUBREC, then delivered on PUBREL)
        _publish(b"copeau/v1/s/m/big", b"y" * 20000, 5),  # a length on three bytes: paho's
        _PUBREL + struct.pack("!H", 4),
        _PINGRESP,
        _publish(b"\xff\xfe/bad", b"not utf-8 topic", 6),
        bytes([0x3B]) + _publish(b"t/dup-retain", b"d", 7)[1:],  # DUP and RETAIN set, QoS 1
        _publish(b"", b"empty topic", 8),
        _publish(b"copeau/v1/s/m/last", b"", 9),  # an empty payload
    ]


def _drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def _run(cls: type[paho.Client], chunks: list[bytes], *, manual_ack: bool = True,
         raw: list[tuple[Any, ...]] | None = None) -> tuple[list[tuple[Any, ...]], bytes]:
    """Feed `chunks` one after the other to a client of `cls` (reading all after each); return what on_message got
    (and on_message_raw, into `raw`, if given) and the bytes the client sent back."""
    received: list[paho.MQTTMessage] = []
    client = _client(cls, received)
    client.manual_ack_set(manual_ack)
    if raw is not None:
        client.on_message_raw = lambda *args: raw.append(args)  # type: ignore[attr-defined]
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    broker.setblocking(False)
    sent = b""
    try:
        client._sock = ours
        for chunk in chunks:
            broker.sendall(chunk)
            _read_all(client)
            sent += _drain(broker)
    finally:
        client._sock = None
        ours.close()
        broker.close()
    return [(m._topic, m.payload, m.mid, m.qos, m.retain, m.dup) for m in received], sent


def test_split_at_every_byte_the_fast_path_reads_what_paho_reads() -> None:
    """One cut anywhere in a stream of mixed packets: packets cut by the end of a read, paho's mid-read state, and
    the packets after them. Same messages, same bytes sent back (PUBACK, PUBREC, PUBCOMP, PINGRESP) as paho."""
    packets = _mixed_stream()
    stream = b"".join(packets)
    reference = _run(paho.Client, [stream], manual_ack=False)
    assert len(reference[0]) == 10
    assert reference[1].count(b"\x40\x02") == 8  # a PUBACK for each QoS 1 message
    big = stream.index(b"y" * 20000)  # inside this payload, a cut every 97 bytes is enough
    for cut in range(1, len(stream)):
        if big + 50 < cut < big + 20000 - 50 and cut % 97:
            continue
        assert _run(FastClient, [stream[:cut], stream[cut:]], manual_ack=False) == reference, cut


def test_several_packets_per_read_are_taken_from_the_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]
    packet_read = paho.Client._packet_read

    def counting(self: paho.Client) -> Any:
        calls[0] += 1
        return packet_read(self)

    monkeypatch.setattr(paho.Client, "_packet_read", counting)
    stream = [b"".join(_publish(b"copeau/v1/s/m/state", str(i).encode(), i + 1, qos=i % 2) for i in range(200))]
    fast = _run(FastClient, stream, manual_ack=False)
    assert calls[0] <= 3  # the read that fills the buffer (and its first packet), then one that finds no more
    calls[0] = 0
    assert fast == _run(paho.Client, stream, manual_ack=False)
    assert calls[0] > 200


def test_properties_qos2_and_other_packets_are_left_to_paho() -> None:
    """Each packet in its own read, and all in one read: same deliveries and same replies as paho's."""
    packets = _mixed_stream()
    reference = _run(paho.Client, packets, manual_ack=False)
    assert _run(FastClient, packets, manual_ack=False) == reference
    assert _run(FastClient, [b"".join(packets)], manual_ack=False) == reference
    received: list[paho.MQTTMessage] = []
    client = _client(FastClient, received)
    ours, broker = socket.socketpair()
    try:
        ours.setblocking(False)
        client._sock = ours
        broker.sendall(b"".join(packets))
        _read_all(client)
        with_props = [m for m in received if m._topic == b"copeau/v1/s/m/cycle"]
        assert with_props[0].properties is not None
        assert str(with_props[0].properties) == "[PayloadFormatIndicator : 1]"
        assert [m.properties for m in received if m._topic == b"copeau/v1/s/m/state"] == [None]
        assert all(type(m.payload) is bytes for m in received)  # as paho's
    finally:
        client._sock = None
        ours.close()
        broker.close()


def test_random_streams_cut_anywhere_read_as_paho_reads() -> None:
    rng = random.Random(7)
    kinds = _mixed_stream()
    for _ in range(30):
        stream = b"".join(rng.choice(kinds) if rng.random() < 0.3 else
                          _publish(b"copeau/v1/s/m/e", rng.randbytes(rng.choice((0, 5, 200, 2000))), rng.randint(1, 9))
                          for _ in range(60))
        cuts = sorted(rng.sample(range(1, len(stream)), 8))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert _run(FastClient, chunks, manual_ack=False) == _run(paho.Client, chunks, manual_ack=False)


def test_on_message_raw_gets_the_common_messages_on_message_the_others() -> None:
    stream = [b"".join(_mixed_stream())]
    reference, sent = _run(paho.Client, stream)
    raw: list[tuple[Any, ...]] = []
    others, fast_sent = _run(FastClient, stream, raw=raw)
    assert fast_sent == sent
    assert [m[0] for m in others] == [b"copeau/v1/s/m/cycle", b"copeau/v1/s/m/q2"]  # properties, QoS 2
    # raw: (topic, payload, mid, qos, dup, retain); reference: (topic, payload, mid, qos, retain, dup)
    common = [(t, p, mid, qos, retain, dup) for t, p, mid, qos, dup, retain in raw]
    assert common == [m for m in reference if m[0] not in {m[0] for m in others}]
    assert all(type(x) is bytes for m in raw for x in m[:2])


def test_an_exception_in_on_message_is_raised_and_the_message_delivered_again_as_paho_does() -> None:
    stream = b"".join(_publish(b"t", str(i).encode(), i + 1) for i in range(5))
    results = {}
    for cls in (paho.Client, FastClient):
        received: list[bytes] = []
        client = _client(cls, [])

        def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage, received: list[bytes] = received) -> None:
            received.append(bytes(msg.payload))
            if received.count(b"2") == 1 and msg.payload == b"2":
                raise RuntimeError("boom")

        client.on_message = on_message
        ours, broker = socket.socketpair()
        try:
            ours.setblocking(False)
            client._sock = ours
            broker.sendall(stream)
            with pytest.raises(RuntimeError, match="boom"):
                _read_all(client)
            _read_all(client)
        finally:
            client._sock = None
            ours.close()
            broker.close()
        results[cls] = received
    assert results[FastClient] == results[paho.Client] == [b"0", b"1", b"2", b"2", b"3", b"4"]


def test_may_read_is_asked_before_each_packet(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    received: list[paho.MQTTMessage] = []
    client = _client(FastClient, received)
    client._sock = ours
    answers = iter([True, True, True])
    client.may_read = lambda: next(answers, False)  # type: ignore[attr-defined]
    broker.sendall(b"".join(_publish(b"t", str(i).encode(), i + 1) for i in range(10)))
    _read_all(client)
    assert [m.payload for m in received] == [b"0", b"1", b"2"]
    client.may_read = None  # type: ignore[attr-defined]
    _read_all(client)
    assert [m.payload for m in received] == [str(i).encode() for i in range(10)]
    client._sock = None


def test_keepalive_bookkeeping(pair: tuple[socket.socket, socket.socket]) -> None:
    """paho's time of the last bytes received moves on, and `_in_packet` is as paho leaves it between packets."""
    ours, broker = pair
    received: list[paho.MQTTMessage] = []
    client = _client(FastClient, received)
    client._sock = ours
    broker.sendall(b"".join(_publish(b"t", b"p", i + 1) for i in range(10)))
    answers = iter([True])
    client.may_read = lambda: next(answers, False)  # type: ignore[attr-defined]
    client.loop_read()  # the read that fills the buffer, and its first packet: paho's own _packet_read
    assert len(received) == 1
    setattr(client, mqttfast._LAST_IN, 0.0)
    client.may_read = None  # type: ignore[attr-defined]
    client.loop_read()  # the other nine, from the buffer
    assert len(received) == 10
    assert getattr(client, mqttfast._LAST_IN) > 0
    assert client._in_packet == _client(paho.Client, [])._in_packet
    client._sock = None


def test_puback_flushes(pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued PUBACKs are written every _WRITE_EVERY packets, so that the broker keeps sending."""
    ours, broker = pair
    client = _client(FastClient, [])
    client.manual_ack_set(False)
    client._thread = threading.Thread()  # as under loop_start(): PUBACKs are queued, not written at once
    client._sock = ours
    written: list[bytes] = []

    def loop_write() -> MQTTErrorCode:  # what would be sent, whatever room the socket has
        written.append(b"".join(bytes(p["packet"]) for p in client._out_packet))
        client._out_packet.clear()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    monkeypatch.setattr(client, "loop_write", loop_write)
    every = mqttfast._WRITE_EVERY
    broker.sendall(b"".join(_publish(b"t", b"p", i + 1) for i in range(2 * every + 88)))
    client.loop_read()
    assert written == [b"".join(b"\x40\x02" + struct.pack("!H", i + 1) for i in range(k * every, (k + 1) * every))
                       for k in range(2)]
    assert b"".join(bytes(p["packet"]) for p in client._out_packet) == b"".join(
        b"\x40\x02" + struct.pack("!H", i + 1) for i in range(2 * every, 2 * every + 88))
    client._thread = None
    client._sock = None


def test_after_a_reconnection_in_on_message_the_old_buffer_is_not_parsed() -> None:
    """A callback that replaces the socket (as `reconnect()` does) ends the batch: the rest of the buffer is the old
    connection's, which paho would never read either."""
    stream = b"".join(_publish(b"t", str(i).encode(), i + 1) for i in range(5))
    results = {}
    for cls in (paho.Client, FastClient):
        received: list[bytes] = []
        client = _client(cls, [])
        ours, broker = socket.socketpair()
        new, new_broker = socket.socketpair()
        try:
            ours.setblocking(False)
            new.setblocking(False)

            def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage, received: list[bytes] = received,
                           client: paho.Client = client, new: socket.socket = new) -> None:
                received.append(bytes(msg.payload))
                if msg.payload == b"1":  # the first packet is paho's (the read that fills the buffer), this one not
                    client._sock = new

            client.on_message = on_message
            client._sock = ours
            broker.sendall(stream)
            _read_all(client)
            new_broker.sendall(_publish(b"t", b"new", 1))
            _read_all(client)
        finally:
            client._sock = None
            for sock in (ours, broker, new, new_broker):
                sock.close()
        results[cls] = received
    assert results[FastClient] == results[paho.Client] == [b"0", b"1", b"new"]


def test_a_publish_at_qos_3_is_refused_as_paho_refuses_it() -> None:
    """QoS 3 does not exist: paho delivers nothing of it and ends the connection (protocol error)."""
    bad = bytes([0x36]) + _publish(b"t", b"bad", 2)[1:]
    stream = _publish(b"t", b"ok", 1) + bad + _publish(b"t", b"after", 3)
    results = {}
    for cls in (paho.Client, FastClient):
        received: list[paho.MQTTMessage] = []
        client = _client(cls, received)
        ours, broker = socket.socketpair()
        try:
            ours.setblocking(False)
            client._sock = ours
            broker.sendall(stream)
            codes = [client.loop_read() for _ in range(4)]
            results[cls] = ([m.payload for m in received], codes[-2:], client._sock is None)
        finally:
            client._sock = None
            ours.close()
            broker.close()
    assert results[FastClient] == results[paho.Client]
    assert results[paho.Client] == ([b"ok"], [MQTTErrorCode.MQTT_ERR_NO_CONN] * 2, True)

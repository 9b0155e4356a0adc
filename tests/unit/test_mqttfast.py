"""copeau/mqttfast.py: the paho overrides apply to the installed paho, parse the same packets as paho, acknowledge
with the same bytes, and fall back to paho's own code (with one warning) when paho's internals are not the expected
ones. If paho is upgraded and these tests fail, read the theory of operation at the top of copeau/mqttfast.py."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

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

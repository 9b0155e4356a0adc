"""The few MQTT 3.1.1 packets a load generator needs, encoded ahead of time: CONNECT, PUBLISH (QoS 1), PUBACK.

Why not paho: paho builds each packet in Python while publishing (tens of µs per message), so a paho publisher is
slower than the broker it is meant to load. The benchmark encodes every PUBLISH before the clock starts and then
only writes bytes to a socket and counts PUBACKs, which leaves the CPU to the pipeline being measured. The
publisher's own ceiling is measured in the same run (publishing to a broker with no subscriber).

MQTT 3.1.1, not 5: the broker acknowledges QoS 1 the same way, and the packets have no properties to encode.
"""

from __future__ import annotations

import struct

CONNACK = 0x20
PUBACK = 0x40
_PUBLISH_QOS1 = 0x32  # PUBLISH, DUP 0, QoS 1, RETAIN 0
_CONNECT = 0x10


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (1 to 4 bytes, 7 bits each, least significant first)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, *, keepalive_s: int = 60, clean_session: bool = True) -> bytes:
    """CONNECT for MQTT 3.1.1 (protocol level 4), no will, no credentials."""
    flags = 0x02 if clean_session else 0x00
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + _utf8(client_id)
    return bytes([_CONNECT]) + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH at QoS 1 with `packet_id` (1..65535)."""
    if not 1 <= packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} out of range")
    body = _utf8(topic) + struct.pack("!H", packet_id) + payload
    return bytes([_PUBLISH_QOS1]) + remaining_length(len(body)) + body


def connack_ok(data: bytes) -> bool:
    """Whether 4 bytes are a CONNACK that accepts the connection."""
    return len(data) == 4 and data[0] == CONNACK and data[1] == 2 and data[3] == 0


class PubackCounter:
    """Counts PUBACKs in a byte stream that may cut packets anywhere (feed it what recv() returns)."""

    def __init__(self) -> None:
        self.count = 0
        self._partial = b""

    def feed(self, data: bytes) -> int:
        """Add received bytes; return how many PUBACKs they completed. Raises ValueError on anything else."""
        buf = self._partial + data
        whole = len(buf) // 4 * 4
        for i in range(0, whole, 4):
            if buf[i] != PUBACK or buf[i + 1] != 2:
                raise ValueError(f"expected PUBACK, got {buf[i:i + 4]!r}")
        self._partial = buf[whole:]
        done = whole // 4
        self.count += done
        return done

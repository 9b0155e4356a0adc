"""Prototype behind a proposal for the gateway (not part of `python -m bench`): paho's receive-and-acknowledge
ceiling, stock against buffered socket reads. `python -m bench.paho_ceiling [--runs N] [--volume N]`.

Why: the gateway's profile at saturation (bench/profile.py) shows paho's network thread taking about 55–60 % of the
gateway's samples. paho reads each packet with several tiny `recv()` calls (1 byte of command, the length byte by
byte, then the rest) and goes back to `select()` after each packet (`loop_read` reads one packet when nothing is in
flight outbound). `BufferedClient` reads 64 KiB at a time and serves paho's small reads from that buffer, and drains
what is buffered before `select()` again. Both clients here do what the gateway's network thread does and no more:
an MQTT 5 persistent session, manual acknowledgement of each QoS 1 message, in a paho callback.

The gateway now uses the product version of this idea, with more (copeau/mqttfast.py); this prototype is kept as the
measurement behind it.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.broker import EVENTS, v5_session
from bench.publisher import PublisherGroup, PublishJob
from bench.stack import Stack
from bench.stats import summarize


class BufferedClient(paho.Client):
    """paho with its socket reads served from a 64 KiB buffer (a sketch for gateway/service.py or copeau/mqtt.py)."""

    _rbuf = b""

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self._rbuf:
            self._rbuf = super()._sock_recv(65536)
            if not self._rbuf:
                return b""
        out, self._rbuf = self._rbuf[:bufsize], self._rbuf[bufsize:]
        return out

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == paho.MQTTErrorCode.MQTT_ERR_SUCCESS and self._rbuf and self._sock is not None:
            rc = super().loop_read(max_packets)  # select() would not see what is already buffered here
        return rc


def ceiling(stack: Stack, cls: type[paho.Client], volume: int, tag: str) -> float:
    """Messages per second `cls` receives and acknowledges, `volume` messages published as fast as possible."""
    client_id = f"ceiling-{tag}"
    v5_session(stack.mqtt_port, client_id, subscribe=EVENTS, expiry_s=600)
    received = [0]
    done = threading.Event()
    client = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5,
                 manual_ack=True)

    def on_message(c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        received[0] += 1
        c.ack(msg.mid, msg.qos)
        if received[0] >= volume:
            done.set()

    client.on_message = on_message
    jobs = [PublishJob("127.0.0.1", stack.mqtt_port, f"pc-{tag}-{i}", f"{tag}{i}", 20, volume // 2, time.time_ns(),
                       end_marker=False) for i in range(2)]
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    try:
        with PublisherGroup(jobs) as group:
            client.connect("127.0.0.1", stack.mqtt_port, clean_start=False, properties=props)
            released = group.go()
            client.loop_start()
            if not done.wait(300):
                raise TimeoutError(f"{cls.__name__} received {received[0]} of {volume}")
            finished = time.monotonic_ns()
            group.results()
    finally:
        client.disconnect()
        client.loop_stop()
        v5_session(stack.mqtt_port, client_id, subscribe=None, expiry_s=0)
    return volume / ((finished - released) / 1e9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paho_ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--volume", type=int, default=100_000)
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {"stock": [], "buffered": []}
    with Stack() as stack:
        for run in range(args.runs):  # interleaved, so that a busy moment of the machine hits both alike
            for name, cls in (("stock", paho.Client), ("buffered", BufferedClient)):
                rates[name].append(ceiling(stack, cls, args.volume, f"{name}{run}"))
                print(f"  run {run + 1}: {name:8} {rates[name][-1]:>9,.0f} msg/s", flush=True)
    for name, values in rates.items():
        print(f"{name:8} {summarize(values).text(unit=' msg/s')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

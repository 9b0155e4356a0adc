"""The collector against a real broker: events are numbered at the source, survive a broker outage in the
outbox, and survive a collector restart without a gap or a duplicate."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collectors.core import Sample
from collectors.outbox import Outbox
from collectors.runner import Collector
from collectors.source import FunctionSource
from copeau.contract import (
    EVENT_SUBSCRIPTION,
    ControlKind,
    EventContext,
    JobContext,
    control_topic,
    decode_event,
    is_control_topic,
    status_topic,
)
from copeau.errors import MachineUnavailable
from copeau.services import ManagedProcess, free_port
from tests.conftest import make_workshop, modbus_machine, wait_until

pytestmark = pytest.mark.integration


class FakeMill:
    """A machine the test drives by hand; the collector reads it through a FunctionSource."""

    def __init__(self) -> None:
        self.counter = 100
        self.running = False
        self.reachable = True
        self.ts = 1_800_000_000_000_000_000
        self.lock = threading.Lock()

    def read(self) -> Sample:
        with self.lock:
            self.ts += 1_000_000  # each reading 1 ms later: times are the source's, not the wall clock's
            if not self.reachable:
                raise MachineUnavailable("off", machine="m1", address="fake")
            return Sample(self.ts, cycle_running=self.running, counter=self.counter)


class Subscriber:
    """A durable MQTT 5 subscriber that records every event it receives."""

    def __init__(self, port: int) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-sub", protocol=MQTTProtocolVersion.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.on_connect = lambda c, *_: c.subscribe(EVENT_SUBSCRIPTION, qos=1)
        client.on_message = self._on_message
        client.reconnect_delay_set(0.1, 0.5)
        client.connect_async("127.0.0.1", port, clean_start=False, properties=props)
        client.loop_start()
        self.client = client

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if is_control_topic(msg.topic):  # job contexts share the event subscription; they are not events
            return
        with self.lock:
            self.events.append(decode_event(msg.topic, msg.payload))

    def parts(self) -> int:
        """Parts in the distinct events received (a QoS 1 re-send may deliver an event twice)."""
        with self.lock:
            unique = {e.seq: e for e in self.events}
        return sum(e.data.count for e in unique.values() if e.kind == "part")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _run_until(collector: Collector, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")
    finally:
        stop.set()
        await task


def test_status_topic_is_retained_online_then_offline(tmp_path: Path, broker: ManagedProcess) -> None:
    workshop = make_workshop(tmp_path, mqtt_port=broker.port, machines=[modbus_machine("m1", 1, poll=0.01)])
    mill = FakeMill()
    collector = Collector(workshop, sources={"m1": FunctionSource("m1", mill.read)}, outbox=tmp_path / "o.sqlite")
    topic = status_topic("test-site", "collector-1")

    def retained_status() -> str | None:
        """What a newcomer subscribing now is told (the retained message), or None."""
        got: list[bytes] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        client.on_message = lambda _c, _u, msg: got.append(msg.payload)
        client.connect("127.0.0.1", broker.port)
        client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 2
        while not got and time.monotonic() < deadline:
            client.loop(0.05)
        client.disconnect()
        return json.loads(got[0])["status"] if got else None

    async def run() -> str | None:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        async with asyncio.timeout(10):
            while not collector.link.connected.is_set() or collector.stats.views["m1"].polls < 3:
                await asyncio.sleep(0.02)
        online = await asyncio.to_thread(retained_status)
        stop.set()
        await task
        return online

    assert asyncio.run(run()) == "online"
    assert retained_status() == "offline"


def test_broker_outage_and_collector_restart_lose_nothing(
    tmp_path: Path, broker_factory: Callable[..., ManagedProcess]
) -> None:
    port = free_port()
    broker = broker_factory(port=port, state_dir=tmp_path / "mq")
    sub = Subscriber(port)
    wait_until(sub.client.is_connected, timeout=10, what="subscriber connected")
    workshop = make_workshop(tmp_path, mqtt_port=port, machines=[modbus_machine("m1", 1, poll=0.01)])
    mill = FakeMill()
    outbox = tmp_path / "outbox.sqlite"

    # 1. Broker up: a first part, to get the baseline and one event through.
    c1 = Collector(workshop, sources={"m1": FunctionSource("m1", mill.read)}, outbox=outbox)

    async def phase1() -> None:
        await _run_until(c1, lambda: c1.stats.views["m1"].counter == 100, "the baseline reading")
        mill.counter += 1

    asyncio.run(phase1())

    # 2. Broker down (graceful stop keeps the subscriber's session); 30 parts are made meanwhile.
    broker.stop()
    c2 = Collector(workshop, sources={"m1": FunctionSource("m1", mill.read)}, outbox=outbox)

    async def phase2() -> None:
        async def make_parts() -> None:
            for _ in range(30):
                mill.counter += 1
                await asyncio.sleep(0.03)

        maker = asyncio.create_task(make_parts())
        await _run_until(
            c2,
            lambda: maker.done() and c2.stats.views["m1"].counter == mill.counter,
            "30 parts read while the broker is down",
        )

    asyncio.run(phase2())
    assert c2.stats.acknowledged == 0
    box = Outbox(outbox)
    waiting = box.depth()
    box.close()
    assert waiting >= 30  # the parts (and state events) wait on disk

    # 3. Broker back, collector restarted: everything is delivered, numbered without a gap.
    broker_factory(port=port, state_dir=tmp_path / "mq")
    c3 = Collector(workshop, sources={"m1": FunctionSource("m1", mill.read)}, outbox=outbox)
    asyncio.run(_run_until(c3, lambda: sub.parts() == 31, "31 parts delivered"))
    sub.close()
    seqs = sorted({e.seq for e in sub.events})
    assert seqs == list(range(len(seqs))), "sequence numbers have a gap"
    by_seq = {}
    for e in sub.events:  # a re-send after reconnect is byte-identical, hence harmless
        assert by_seq.setdefault(e.seq, e) == e
    assert sum(e.data.count for e in by_seq.values() if e.kind == "part") == 31


def test_events_are_stamped_with_the_job_context_even_across_a_restart_without_broker(
    tmp_path: Path, broker_factory: Callable[..., ManagedProcess]
) -> None:
    port = free_port()
    broker = broker_factory(port=port, state_dir=tmp_path / "mq")
    sub = Subscriber(port)
    wait_until(sub.client.is_connected, timeout=10, what="subscriber connected")
    job = EventContext(order="CMD-1", operation=10, apprentice="AP-42")
    retained = sub.client.publish(
        control_topic("test-site", "m1", ControlKind.CONTEXT),
        JobContext(site="test-site", machine="m1", ts=1_800_000_000_000_000_000, context=job).encode(),
        qos=1,
        retain=True,
    )
    retained.wait_for_publish(5)
    workshop = make_workshop(tmp_path, mqtt_port=port, machines=[modbus_machine("m1", 1, poll=0.01)])
    mill = FakeMill()
    outbox = tmp_path / "outbox.sqlite"

    c1 = Collector(workshop, sources={"m1": FunctionSource("m1", mill.read)}, outbox=outbox)

    async def phase1() -> None:
        async def one_part_once_the_context_is_known() -> None:
            while c1._current_context("m1") is None:
                await asyncio.sleep(0.01)
            mill.counter += 1

        maker = asyncio.create_task(one_part_once_the_context_is_known())
        await _run_until(c1, lambda: maker.done() and sub.parts() == 1, "1 part delivered")

    asyncio.run(phase1())
    broker.stop()  # the collector restarts while the broker is away: the context comes from its outbox
    c2 = Collector(workshop, sources={"m1": FunctionSource("m1", mill.read)}, outbox=outbox)
    mill.counter += 2

    async def phase2() -> None:
        await _run_until(c2, lambda: c2.stats.views["m1"].counter == mill.counter, "2 more parts read")

    asyncio.run(phase2())
    broker_factory(port=port, state_dir=tmp_path / "mq")
    c3 = Collector(workshop, sources={"m1": FunctionSource("m1", mill.read)}, outbox=outbox)
    asyncio.run(_run_until(c3, lambda: sub.parts() == 3, "3 parts delivered"))
    sub.close()
    parts = [e for e in sub.events if e.kind == "part"]
    assert {e.ctx for e in parts} == {job}  # every part says for which job it was made

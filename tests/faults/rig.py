"""The fault rig: a reference load of simulated Modbus mills, the collector and the gateway, real mosquitto and
influxd, and the measurements every fault scenario reports.

Theory of operation:

- **Reference load** (`Load`): `machines` simulated Modbus mills (8 by default: a typical École de production
  workshop), each making `parts` parts in a seeded scenario, polled every 50 ms. Time is compressed: a school's
  machine makes about one part a minute (`REAL_PART_PERIOD_S`); a simulated one makes one every
  `cycle_s + idle_s` seconds (0.5 s by default), so one simulated second stands for `compression` (120) real ones.
  Each part is five events (state running, cycle start, cycle end, part, state idle).
- **In-process rig** (`Rig`): simulators, collector (asyncio, in the test's event loop) and gateway (threads) in
  this process, like tests/integration/test_end_to_end.py, so that a scenario can stop, restart or starve each of
  them and read their counters. The collector's and the gateway's links may go through fault proxies
  (simulators/faultproxy.py): they then get their own port in their copy of the workshop.
- **Verdict** (`verdict()`): what InfluxDB holds against the simulators' ground truth. Per machine: parts stored
  (`sum("count")`) against parts made (truth); and every event's sequence number, over the four measurements,
  against `next_seq` in the collector's outbox: each of 0 … next_seq-1 must be stored exactly once. A part lost
  is a part missing from the sum; a part duplicated is one too many in it; a lost event of any kind is a missing
  sequence number; an event stored twice under two numbers would show in the sum or as an extra number.
- **Drain time**: from the moment a fault ends until InfluxDB holds the ground truth (or, while production goes
  on, the parts made before the fault ended), polled every 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collectors.outbox import Outbox
from collectors.runner import Collector, outbox_path
from copeau.config import Workshop
from copeau.contract import EVENT_SUBSCRIPTION, is_control_topic
from copeau.errors import StoreError
from copeau.influxql import InfluxQuery
from copeau.services import free_port
from gateway.service import Gateway, GatewayStats
from simulators.groundtruth import Truth, read_truth, truth_path
from simulators.modbus import ModbusMachineSimulator
from tests.conftest import make_workshop, modbus_machine, wait_for

REAL_PART_PERIOD_S = 60.0  # a school's CNC machine: about one part a minute (cycle and loading together)
MEASUREMENTS = ("state", "cycle", "part", "alarm")
RESULTS_DIR = Path(__file__).resolve().parents[2] / "test-output" / "faults"


@dataclass(frozen=True)
class Load:
    """The reference load: `machines` mills making `parts` parts each, time-compressed."""

    machines: int = 8
    parts: int = 12  # per machine
    poll_s: float = 0.05
    cycle_s: float = 0.25
    cycle_jitter_s: float = 0.05
    idle_s: float = 0.25  # drawn in 0.5-1.5 × idle_s
    power_cycle_after: tuple[int, ...] = ()  # per machine (cycled), parts before its module is power-cycled
    power_off_s: float = 1.0
    power_on_idle_s: float = 3.0
    seed: int = 100

    @property
    def part_period_s(self) -> float:
        """Mean time per part in the simulation."""
        return self.cycle_s + self.idle_s

    @property
    def compression(self) -> float:
        """Real seconds one simulated second stands for."""
        return REAL_PART_PERIOD_S / self.part_period_s

    def real_minutes(self, seconds: float) -> float:
        """How many minutes of a real workshop's production `seconds` of this simulation stand for."""
        return seconds * self.compression / 60

    def describe(self) -> dict[str, Any]:
        return {
            "machines": self.machines,
            "parts_per_machine": self.parts,
            "poll_s": self.poll_s,
            "part_period_s": self.part_period_s,
            "compression": round(self.compression, 1),
            "real_part_period_s": REAL_PART_PERIOD_S,
        }

    def machine_configs(self) -> list[dict[str, Any]]:
        configs = []
        for i in range(self.machines):
            simulation: dict[str, Any] = {
                "seed": self.seed + i,
                "cycle_s": self.cycle_s,
                "cycle_jitter_s": self.cycle_jitter_s,
                "idle_s": self.idle_s,
                "parts": self.parts,
                "power_on_idle_s": self.power_on_idle_s,
            }
            if self.power_cycle_after:
                simulation |= {
                    "power_cycle_after": self.power_cycle_after[i % len(self.power_cycle_after)],
                    "power_off_s": self.power_off_s,
                }
            configs.append(modbus_machine(f"mill-{i + 1}", free_port(), poll=self.poll_s, simulation=simulation))
        return configs


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def workshops(
    state_dir: Path,
    *,
    load: Load,
    mqtt_port: int,
    influx_port: int,
    database: str,
    collector_mqtt_port: int | None = None,
    gateway_mqtt_port: int | None = None,
    gateway_influx_port: int | None = None,
    **extra: Any,
) -> tuple[Workshop, Workshop]:
    """The workshop as the collector sees it (and the test queries InfluxDB with), and as the gateway sees it:
    the same machines and database, each link possibly through its own proxy."""
    machines = load.machine_configs()
    common = {"database": database, "machines": machines, **extra}
    collector = make_workshop(state_dir, mqtt_port=collector_mqtt_port or mqtt_port, influx_port=influx_port, **common)
    gateway = make_workshop(
        state_dir, mqtt_port=gateway_mqtt_port or mqtt_port, influx_port=gateway_influx_port or influx_port, **common
    )
    return collector, gateway


# -- the verdict ---------------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """InfluxDB against ground truth, for every machine of a run."""

    truth_parts: int = 0
    stored_parts: int = 0
    lost_parts: int = 0
    duplicated_parts: int = 0
    events: int = 0  # numbered by the collector (sum of next_seq)
    stored_events: int = 0  # distinct sequence numbers stored
    missing_events: int = 0  # sequence numbers below next_seq that InfluxDB does not hold
    duplicated_events: int = 0  # sequence numbers stored more than once, or beyond next_seq
    per_machine: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return (self.lost_parts, self.duplicated_parts, self.missing_events, self.duplicated_events) == (0, 0, 0, 0)

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "per_machine"}


def stored_parts(query: InfluxQuery) -> dict[str, int]:
    return {k: int(v) for k, v in query.by_tag('SELECT sum("count") FROM "part" GROUP BY "machine"', "machine").items()}


def stored_seqs(query: InfluxQuery) -> dict[str, list[int]]:
    """Every event's sequence number in InfluxDB, per machine, over the four measurements."""
    measurements = ", ".join(f'"{m}"' for m in MEASUREMENTS)
    seqs: dict[str, list[int]] = {}
    for series in query.series(f'SELECT "seq" FROM {measurements} GROUP BY "machine"'):
        seqs.setdefault(series["tags"]["machine"], []).extend(int(v[1]) for v in series["values"])
    return seqs


def truths(workshop: Workshop) -> dict[str, Truth]:
    return {m.id: read_truth(truth_path(workshop.state_dir, m.id)) for m in workshop.machines}


def next_seqs(workshop: Workshop, outbox: Path | None = None) -> tuple[dict[str, int], int]:
    """Each machine's next sequence number in the collector's outbox (read after the collector stopped), and the
    events still queued in it."""
    box = Outbox(outbox or outbox_path(workshop))
    try:
        numbers = {}
        for m in workshop.machines:
            record = box.machine(m.id)
            numbers[m.id] = record.next_seq if record else 0
        return numbers, box.depth()
    finally:
        box.close()


def shed_per_machine(workshop: Workshop, outbox: Path | None = None) -> dict[str, int]:
    """Events each machine's telemetry lost to the outbox's limit (read after the collector stopped)."""
    box = Outbox(outbox or outbox_path(workshop))
    try:
        shed: dict[str, int] = {}
        for (machine, _cls), n in box.stats().shed.items():
            shed[machine] = shed.get(machine, 0) + n
        return shed
    finally:
        box.close()


def wait_events_stored(
    workshop: Workshop, *, outbox: Path | None = None, timeout: float = 60.0, interval: float = 0.05
) -> dict[str, int]:
    """Wait until InfluxDB holds every event the collector numbered (each of 0 … next_seq-1, per machine), but
    for those its outbox counts as shed. The collector must have stopped (its last events drained to the broker);
    the gateway must still run: it drops its inbox when it stops, and the verdict would count what was in it as
    missing. Parts stored = truth is not enough: a state `idle` or a cycle end may trail the last part by a poll.

    Returns the events still missing per machine: {} once all are stored. It does not fail on timeout: the
    verdict that follows says what is missing, and the test asserts it."""
    numbers, _queued = next_seqs(workshop, outbox)
    shed = shed_per_machine(workshop, outbox)
    query = InfluxQuery(workshop.influxdb)
    deadline = time.monotonic() + timeout
    missing: dict[str, int] = dict(numbers)
    while True:
        try:
            seqs = stored_seqs(query)
        except StoreError:  # InfluxDB may be the thing the scenario broke: poll again
            pass
        else:
            missing = {}
            for machine, n in numbers.items():
                stored = sum(1 for seq in set(seqs.get(machine, [])) if 0 <= seq < n)
                if (left := n - shed.get(machine, 0) - stored) > 0:
                    missing[machine] = left
            if not missing:
                return missing
        if time.monotonic() > deadline:
            return missing
        time.sleep(interval)


def verdict(workshop: Workshop, *, outbox: Path | None = None) -> Verdict:
    """Compare InfluxDB with the ground truth and the collector's numbering (the collector must have stopped)."""
    query = InfluxQuery(workshop.influxdb)
    truth = truths(workshop)
    parts = stored_parts(query)
    seqs = stored_seqs(query)
    numbers, _queued = next_seqs(workshop, outbox)
    v = Verdict()
    for m in workshop.machines:
        made, stored = truth[m.id].parts, parts.get(m.id, 0)
        stored_seq = seqs.get(m.id, [])
        distinct = set(stored_seq)
        expected = set(range(numbers[m.id]))
        missing = len(expected - distinct)
        extra = len(stored_seq) - len(distinct) + len(distinct - expected)
        v.per_machine[m.id] = {"made": made, "stored": stored, "events": numbers[m.id], "missing": missing,
                               "extra": extra}
        v.truth_parts += made
        v.stored_parts += stored
        v.lost_parts += max(0, made - stored)
        v.duplicated_parts += max(0, stored - made)
        v.events += numbers[m.id]
        v.stored_events += len(distinct & expected)
        v.missing_events += missing
        v.duplicated_events += extra
    return v


def wait_stored(
    workshop: Workshop, *, target: Callable[[], int] | None = None, timeout: float = 60.0, interval: float = 0.05
) -> float:
    """Wait until InfluxDB holds every machine's ground-truth parts (or, with `target`, at least `target()` parts
    in all); return the monotonic time it did. Fails the test after `timeout` seconds."""
    query = InfluxQuery(workshop.influxdb)
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            parts = stored_parts(query)
        except StoreError as exc:  # InfluxDB may be the thing the scenario broke: poll again
            last = exc
        else:
            if target is not None:
                last = (sum(parts.values()), target())
                if last[0] >= last[1]:
                    return time.monotonic()
            else:
                expected = {k: t.parts for k, t in truths(workshop).items()}
                last = (parts, expected)
                if parts == expected:
                    return time.monotonic()
        time.sleep(interval)
    pytest.fail(f"InfluxDB did not hold the expected parts after {timeout:.0f} s (last: {last!r})")


def truth_parts_now(workshop: Workshop) -> int:
    return sum(t.parts for t in truths(workshop).values())


# -- the in-process rig --------------------------------------------------------------------------------------------


class Rig:
    """Simulated machines, the collector and the gateway of one scenario (see the module docstring)."""

    def __init__(self, collector_workshop: Workshop, gateway_workshop: Workshop, *, load: Load) -> None:
        self.workshop = collector_workshop
        self.gateway_workshop = gateway_workshop
        self.load = load
        self.sims = [
            ModbusMachineSimulator(m, truth_path=truth_path(collector_workshop.state_dir, m.id))
            for m in collector_workshop.machines
        ]
        self.collector: Collector | None = None
        self.gateway: Gateway | None = None
        self.gateways: list[Gateway] = []
        self._stop = asyncio.Event()
        self._collector_task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def running(self, *, gateway: bool = True) -> AsyncIterator[Rig]:
        """Serve the machines, start the gateway (unless told not to) and the collector; stop all on exit."""
        async with asyncio.TaskGroup() as tg:
            sim_tasks = [tg.create_task(s.run(), name=f"sim:{s.machine.id}") for s in self.sims]
            body_done = False
            try:
                await wait_for(
                    lambda: all(port_open(m.endpoint.port) for m in self.workshop.machines),
                    timeout=15,
                    what="simulated modules listening",
                )
                if gateway:
                    await self.start_gateway()
                self.collector = Collector(self.workshop)
                self._collector_task = tg.create_task(self.collector.run(self._stop), name="collector")
                yield self
                body_done = True
            finally:
                self._stop.set()
                if self._collector_task is not None:
                    await self._collector_task
                if body_done and self.gateway is not None:
                    # The collector drained its last events (state idle, cycle end: they may trail the last part
                    # by a poll) to the broker on its way out; the gateway must store them before it stops, or
                    # the verdict counts them missing. Not after a failure in the scenario: it is reported as is.
                    await asyncio.to_thread(wait_events_stored, self.workshop)
                for task in sim_tasks:
                    task.cancel()
                await asyncio.to_thread(self.stop_gateway)

    async def start_gateway(self, *, wait_ready: bool = True) -> Gateway:
        gateway = Gateway(self.gateway_workshop)
        self.gateways.append(gateway)
        self.gateway = gateway
        await asyncio.to_thread(gateway.start)
        if wait_ready:
            await wait_for(lambda: gateway.wait_ready(0), timeout=30, what="the gateway's subscription")
        return gateway

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None

    def gateway_stats(self) -> GatewayStats:
        """The counters of every gateway this rig started, added up."""
        total: dict[str, int] = {}
        for gw in self.gateways:
            for k, v in asdict(gw.stats).items():
                total[k] = total.get(k, 0) + v
        return GatewayStats(**total)

    def parts_made(self) -> int:
        return sum(s.parts_made for s in self.sims)

    async def production_done(self, *, timeout: float = 120) -> None:
        """Wait until every scenario has ended, the collector has read every final counter, and its outbox is
        empty (every event acknowledged by the broker)."""
        await wait_for(lambda: all(s.finished.is_set() for s in self.sims), timeout=timeout, what="scenarios ended")
        assert self.collector is not None
        views = self.collector.stats.views
        await wait_for(
            lambda: all(views[s.machine.id].counter == s.counter for s in self.sims),
            timeout=30,
            what="the collector reading the final counters",
        )
        collector = self.collector
        await wait_for(lambda: collector.outbox.depth() == 0, timeout=60, what="the outbox to drain")


# -- results -------------------------------------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def write_result(scenario: str, figures: dict[str, Any]) -> Path:
    """Write one scenario's figures to test-output/faults/<scenario>.json (docs/reliability.md is updated from
    these files)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{scenario}.json"
    record = {"scenario": scenario, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": machine_description(), **figures}
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def summary(values: list[float]) -> dict[str, float]:
    """min / median / max of a list of durations, rounded to the millisecond."""
    if not values:
        return {}
    return {"n": len(values), "min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


# -- raw MQTT clients for injected traffic -------------------------------------------------------------------------


class RawPublisher:
    """A plain paho client that publishes at QoS 1 on any topic (poison, copies), outside Copeau's code."""

    def __init__(self, port: int, *, client_id: str = "fault-injector") -> None:
        self._connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda *_args: self._connected.set()
        self.client.max_inflight_messages_set(200)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10):
            pytest.fail("the injector could not connect to mosquitto")

    def publish(self, messages: list[tuple[str, bytes]], *, timeout: float = 30.0) -> None:
        """Publish and wait until the broker has acknowledged every message. Each carries the MQTT 5 user
        property `fault-injected` (the gateway ignores it; the `Spy` does not copy such messages)."""
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("fault-injected", "1")
        infos = [self.client.publish(topic, payload, qos=1, properties=props) for topic, payload in messages]
        deadline = time.monotonic() + timeout  # for the whole batch, not per message
        for i, info in enumerate(infos):
            info.wait_for_publish(timeout=max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                pytest.fail(f"the broker acknowledged {i} of {len(infos)} injected messages in {timeout:.0f} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Spy:
    """A durable subscriber that keeps a copy of every event message (topic, exact payload bytes), except those a
    `RawPublisher` injected."""

    def __init__(self, port: int, *, client_id: str = "fault-spy") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.on_connect = lambda c, *_: c.subscribe(EVENT_SUBSCRIPTION, qos=1)
        client.on_subscribe = lambda *_args: self._subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", port, clean_start=False, properties=props)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(10):
            pytest.fail("the spy could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        injected = any(k == "fault-injected" for k, _ in getattr(msg.properties, "UserProperty", []))
        if injected or is_control_topic(msg.topic):
            return
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def taken(self, start: int = 0) -> list[tuple[str, bytes]]:
        with self._lock:
            return self.messages[start:]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

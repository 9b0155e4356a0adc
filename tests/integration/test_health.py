"""Copeau's own health, end to end: a collector and a gateway on a real mosquitto and a real influxd publish their
health reports, and the gateway stores them in the `copeau_health` measurement with the right numbers.

The machine is a fake the test drives by hand (`FakeMill`), so that every number is known exactly: the dead
letters injected, the events made while the broker was down (the outbox depth the collector reported then,
published once the broker was back), the reconnects, each machine's last event and sequence number.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from collectors.runner import Collector
from collectors.source import FunctionSource
from copeau.config import Workshop
from copeau.contract import ServiceKind, health_topic
from copeau.influxql import InfluxQuery
from copeau.services import ManagedProcess, free_port
from gateway.service import Gateway
from tests.conftest import Influx, make_workshop, modbus_machine, wait_until
from tests.integration.test_collector import FakeMill

pytestmark = pytest.mark.integration

WAIT_S = 30.0
HEALTH_S = 0.2
KINDS = ("state", "cycle", "part", "alarm")


class CollectorThread:
    """The collector on its own event loop in a thread, so that the test can block on InfluxDB queries.
    It is built in that thread too: its SQLite connection belongs to the thread that made it."""

    def __init__(self, make: Callable[[], Collector]) -> None:
        self._make = make
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT_S), "the collector was not built"
        self.collector = self._collector

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._collector = self._make()
            self._ready.set()
            self._loop.run_until_complete(self._collector.run(self._stop))
        finally:
            self._loop.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the collector did not stop"


def _publish_raw(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for info in [client.publish(t, p, qos=1) for t, p in messages]:
            info.wait_for_publish(WAIT_S)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def setup(
    tmp_path: Path, broker_factory: Callable[..., ManagedProcess], influx: Influx
) -> tuple[Workshop, Callable[[], ManagedProcess], Callable[[], None]]:
    port = free_port()
    state = tmp_path / "mq"
    broker = [broker_factory(port=port, state_dir=state)]
    workshop = make_workshop(
        tmp_path,
        mqtt_port=port,
        influx_port=influx.process.port,
        database=influx.new_database("health"),
        machines=[modbus_machine("m1", 1, poll=0.01)],
        collector={"health_interval_s": HEALTH_S},
        gateway={"health_interval_s": HEALTH_S, "client_id": "gw-health"},
    )

    def stop_broker() -> None:
        broker[0].stop()

    def start_broker() -> ManagedProcess:
        broker[0] = broker_factory(port=port, state_dir=state)
        return broker[0]

    return workshop, start_broker, stop_broker


def test_collector_and_gateway_health_is_stored_with_exact_numbers(
    setup: tuple[Workshop, Callable[[], ManagedProcess], Callable[[], None]], tmp_path: Path
) -> None:
    workshop, start_broker, stop_broker = setup
    q = InfluxQuery(workshop.influxdb)
    gateway = Gateway(workshop, retry_cap_s=0.5)
    gateway.start()
    assert gateway.wait_ready(10), "gateway did not subscribe"
    mill = FakeMill()
    runner = CollectorThread(
        lambda: Collector(workshop, sources={"m1": FunctionSource("m1", mill.read)}, outbox=tmp_path / "o.sqlite")
    )
    collector = runner.collector
    view = collector.stats.views["m1"]

    def parts() -> int:
        return int(q.scalar('SELECT sum("count") FROM "part"') or 0)

    def last(field: str, kind: ServiceKind, machine: str | None = None) -> Any:
        where = f"\"kind\" = '{kind.value}'" + (f" AND \"machine\" = '{machine}'" if machine else "")
        return q.scalar(f'SELECT last("{field}") FROM "copeau_health" WHERE {where}')

    try:
        # 1. A baseline reading and three parts, through to InfluxDB.
        wait_until(lambda: view.counter == 100 and collector.link.connected.is_set(), timeout=WAIT_S,
                   what="the collector's baseline reading")
        with mill.lock:
            mill.counter += 3
        wait_until(lambda: parts() == 3, timeout=WAIT_S, what="3 parts in InfluxDB")

        # 2. The machine cannot be read for a moment: one reconnect of that machine.
        with mill.lock:
            mill.reachable = False
        wait_until(lambda: view.readable is False, timeout=WAIT_S, what="the machine seen unreachable")
        with mill.lock:
            mill.reachable = True
        wait_until(lambda: view.readable, timeout=WAIT_S, what="the machine readable again")

        # 3. Five messages that break the contract: four on an event topic, one on the health topic.
        bad_health = health_topic(workshop.site.id, ServiceKind.COLLECTOR, "intruder")
        _publish_raw(workshop.mqtt.port, [(f"copeau/v1/{workshop.site.id}/m1/part", b"{not json")] * 4
                     + [(bad_health, b'{"v":1}')])
        wait_until(lambda: last("dead_letters", ServiceKind.GATEWAY) == 5, timeout=WAIT_S,
                   what="the gateway's health saying 5 dead letters")
        wait_until(lambda: collector.outbox.depth() == 0, timeout=WAIT_S, what="an empty outbox")

        # 4. The broker goes away; a cycle and two parts are made meanwhile: five events wait in the outbox.
        stop_broker()
        wait_until(lambda: not collector.link.connected.is_set(), timeout=WAIT_S, what="the collector offline")
        with mill.lock:
            mill.running = True
        wait_until(lambda: view.state == "running", timeout=WAIT_S, what="the cycle seen running")
        with mill.lock:
            mill.running = False
            mill.counter += 2
        wait_until(lambda: collector.outbox.depth() == 5, timeout=WAIT_S,
                   what="state, cycle start, cycle end, part and state in the outbox")
        reports = len(collector._health_backlog)
        wait_until(lambda: len(collector._health_backlog) >= reports + 3, timeout=WAIT_S,
                   what="three health reports taken while the outbox held the five events")

        # 5. The broker is back: everything lands, and so do the reports made during the outage.
        start_broker()
        wait_until(lambda: parts() == 5, timeout=WAIT_S, what="5 parts in InfluxDB")

        # The kept reports are published on reconnection, but the events may go first (the publisher may wake
        # before the reconnection's callbacks run) and be stored in an earlier batch: wait for the reports too.
        def outage() -> list[Any] | None:
            """[deepest outbox, reports] of the collector's reports taken offline, once all those kept are stored."""
            series = q.series('SELECT max("outbox_events"), count("outbox_events") FROM "copeau_health" '
                              "WHERE \"kind\" = 'collector' AND \"mqtt_connected\" = false")
            values = series[0]["values"][0][1:] if series else None
            return values if values and values[1] >= reports + 3 else None

        deepest, _ = wait_until(outage, timeout=WAIT_S, what="the health reports kept during the outage in InfluxDB")
        assert deepest == 5

        wait_until(lambda: collector.outbox.depth() == 0, timeout=WAIT_S, what="the outbox to drain")
        next_seq = view.next_seq

        # Every event the collector numbered is in InfluxDB, once: stored + shed (none here) = next_seq.
        def stored() -> int:
            return sum(int(q.scalar(f'SELECT count("seq") FROM "{k}" WHERE "machine" = \'m1\'') or 0)
                       for k in KINDS)

        wait_until(lambda: stored() == next_seq, timeout=WAIT_S, what=f"{next_seq} events of m1 in InfluxDB")
        newest = max(s["values"][0][0] for k in KINDS for s in q.series(f'SELECT last("seq") FROM "{k}"'))
        wait_until(lambda: last("next_seq", ServiceKind.COLLECTOR, "m1") == next_seq
                   and last("outbox_events", ServiceKind.COLLECTOR) == 0
                   and last("last_event_ts", ServiceKind.GATEWAY, "m1") == newest
                   and last("mqtt_reconnects", ServiceKind.GATEWAY) == 1
                   # a report taken after the gateway wrote them (it may have received them and not yet stored them)
                   and (last("stored", ServiceKind.GATEWAY) or 0) >= next_seq, timeout=WAIT_S,
                   what="fresh health reports from both services after the outage")
    finally:
        runner.stop()
        gateway.stop()

    collector_m1 = q.series('SELECT last("readable"), last("reconnects"), last("last_event_ts"), '
                            'last("last_read_ts"), last("shed_state"), last("next_seq") FROM "copeau_health" '
                            "WHERE \"kind\" = 'collector' AND \"machine\" = 'm1'")[0]["values"][0][1:]
    assert collector_m1[0] is True
    assert collector_m1[1] == 1  # the one time the machine came back
    assert collector_m1[2] == newest  # the time of the newest event, as stored
    assert collector_m1[3] >= newest
    assert collector_m1[4:] == [0, next_seq]
    assert last("mqtt_reconnects", ServiceKind.COLLECTOR) == 1
    assert last("shed_events", ServiceKind.COLLECTOR) == 0
    assert last("spool_level", ServiceKind.COLLECTOR) == 0

    gateway_m1 = q.series('SELECT last("received"), last("last_event_ts") FROM "copeau_health" '
                          "WHERE \"kind\" = 'gateway' AND \"machine\" = 'm1'")[0]["values"][0][1:]
    assert gateway_m1[0] >= next_seq  # re-deliveries count again
    assert gateway_m1[1] == newest
    assert last("dead_letters", ServiceKind.GATEWAY) == 5
    assert last("stored", ServiceKind.GATEWAY) >= next_seq
    assert last("influx_ok", ServiceKind.GATEWAY) is True
    # Health reports are not dead letters, and not counted as events.
    letters = [json.loads(line) for line in (workshop.state_dir / "deadletter" / "gateway.jsonl").read_text()
               .splitlines()]
    assert [d["topic"] for d in letters] == [f"copeau/v1/{workshop.site.id}/m1/part"] * 4 + [bad_health]
    stats = gateway.stats
    assert stats.health_stored > 0 and stats.health_received > 0
    assert stats.received >= gateway_m1[0] + 4  # the events of m1 and the 4 bad event messages

    # The alert queries of docs/operations.md run on InfluxDB 1.6 and say what they should here.
    answers = {query: q.series(query) for query in ALERT_QUERIES}
    assert all(answers.values()), [query for query, series in answers.items() if not series]
    by_text = {query.split(" FROM ")[0]: series for query, series in answers.items()}
    assert by_text['SELECT last("outbox_events")'][0]["values"][0][1] == 0
    assert {s["tags"]["kind"] for s in by_text['SELECT count("uptime_s")']} == {"collector", "gateway"}
    assert by_text['SELECT max("spool_level")'][0]["values"][0][1] == 0
    assert by_text['SELECT last("last_read_age_s")'][0]["values"][0][1] < 300
    assert by_text['SELECT last("last_received_age_s")'][0]["values"][0][1] < 300
    assert by_text['SELECT last("dead_letters")'][0]["values"][0][1] == 5
    assert by_text['SELECT last("write_retries")'][0]["values"][0][1] == 0


ALERT_QUERIES = [
    query.replace("\\|", "|")
    for query in re.findall(r"^\| [^|]+ \| `(SELECT [^`]+)` \|", (Path(__file__).parents[2] / "docs" / "operations.md")
                            .read_text(encoding="utf-8"), flags=re.MULTILINE)
    if "copeau_health" in query
]
assert len(ALERT_QUERIES) == 7, ALERT_QUERIES

"""Simulated Modbus mills → collector → real mosquitto → gateway → real InfluxDB, checked against ground truth.

Two mills make 200 parts: one has a 32-bit counter that wraps past 2**32, the other is power-cycled (its counter
restarts at 0). InfluxDB must hold exactly the parts of the ground truth, and every cycle time within one poll
interval of the truth. The second test stops the broker for 10 s in the middle of production.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from collectors.runner import Collector
from copeau.config import Workshop
from copeau.influxql import InfluxQuery
from copeau.services import ManagedProcess, free_port
from gateway.service import Gateway
from simulators.groundtruth import Truth, read_truth, truth_path
from simulators.modbus import ModbusMachineSimulator
from tests.conftest import Influx, make_workshop, modbus_machine, wait_for

# Each test plays 200 parts in real time (about 70 s alone); give a loaded machine room before timing out.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

POLL_S = 0.05
PARTS_PER_MACHINE = 100
SCENARIO = {"cycle_s": 0.4, "cycle_jitter_s": 0.1, "idle_s": 0.2, "parts": PARTS_PER_MACHINE, "power_on_idle_s": 1.0}
# Retry an unreachable module at least every 0.25 s, so that it is read again well within the 1 s the machine
# needs after a power cut before its next cycle: every cycle is then seen from its start.
RECONNECT_MAX_S = 0.25
LITTLE_ENDIAN_COUNTER = {
    "table": "input_register",
    "address": 16,
    "type": "uint32",
    "count": 2,
    "word_order": "little",
}


def workshop_for(tmp_path: Path, *, mqtt_port: int, influx: Influx) -> Workshop:
    db = influx.new_database("e2e")
    wrap = modbus_machine(
        "mill-wrap", free_port(), poll=POLL_S, simulation={**SCENARIO, "seed": 3, "counter_start": 2**32 - 30}
    )
    power = modbus_machine(
        "mill-power",
        free_port(),
        poll=POLL_S,
        simulation={**SCENARIO, "seed": 4, "power_cycle_after": 40, "power_off_s": 1.0},
    )
    power["registers"] = {**power["registers"], "parts": LITTLE_ENDIAN_COUNTER}
    return make_workshop(
        tmp_path,
        mqtt_port=mqtt_port,
        influx_port=int(influx.url.rsplit(":", 1)[1]),
        database=db,
        machines=[wrap, power],
        collector={"reconnect_max_s": RECONNECT_MAX_S},
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def run_workshop(
    workshop: Workshop,
    *,
    during: Callable[[list[ModbusMachineSimulator]], Awaitable[None]],
    check: Callable[[], object],
) -> tuple[Collector, Gateway]:
    """Play every machine's finite scenario to its end, with `during` running alongside. Once every part the
    simulators made has been read and acknowledged by the broker, run `check` (in a thread) while the gateway is
    still storing, then stop."""
    gateway = Gateway(workshop)
    gateway.start()
    sims = [ModbusMachineSimulator(m, truth_path=truth_path(workshop.state_dir, m.id)) for m in workshop.machines]
    collector = Collector(workshop)
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            sim_tasks = [tg.create_task(s.run(), name=f"sim:{s.machine.id}") for s in sims]
            # The scenario opens with an idle gap: the collector's first reading (the counter's baseline) comes
            # before the first part as long as it starts as soon as the modules answer.
            await wait_for(
                lambda: all(port_open(m.endpoint.port) for m in workshop.machines),
                timeout=10,
                what="simulated modules listening",
            )
            collector_task = tg.create_task(collector.run(stop), name="collector")
            await during(sims)
            await wait_for(lambda: all(s.finished.is_set() for s in sims), timeout=180, what="scenarios finished")
            views = collector.stats.views
            await wait_for(
                lambda: all(views[s.machine.id].counter == s.counter for s in sims),
                timeout=10,
                what="the collector reading the final counters",
            )
            await wait_for(lambda: collector.outbox.depth() == 0, timeout=30, what="the outbox to drain")
            stop.set()
            await collector_task
            for task in sim_tasks:
                task.cancel()
            await asyncio.to_thread(check)
    finally:
        gateway.stop()
    return collector, gateway


def stored_parts(q: InfluxQuery) -> dict[str, int]:
    return {k: int(v) for k, v in q.by_tag('SELECT sum("count") FROM "part" GROUP BY "machine"', "machine").items()}


def check_against_truth(workshop: Workshop) -> dict[str, Truth]:
    q = InfluxQuery(workshop.influxdb)
    truths = {m.id: read_truth(truth_path(workshop.state_dir, m.id)) for m in workshop.machines}
    expected = {k: t.parts for k, t in truths.items()}
    assert sum(expected.values()) >= 200
    deadline = time.monotonic() + 30  # the gateway's last batch may still be on its way to InfluxDB
    while stored_parts(q) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored_parts(q) == expected

    for m in workshop.machines:
        rows = q.series(
            f'SELECT "duration_s", "started_ts", "outcome" FROM "cycle" '
            f"WHERE \"machine\" = '{m.id}' AND \"phase\" = 'end'"
        )
        measured = rows[0]["values"] if rows else []
        truth_cycles = [c for c in truths[m.id].cycles if c.completed]
        assert len(measured) == len(truth_cycles) == PARTS_PER_MACHINE, m.id
        for (_, duration, _started, outcome), truth in zip(measured, truth_cycles, strict=True):
            assert outcome == "completed"
            assert abs(duration - truth.duration_s) <= m.poll_interval_s, (m.id, duration, truth)
        # No part point twice: one point per counted reading, each with its own sequence number.
        points = q.series(f'SELECT "seq" FROM "part" WHERE "machine" = \'{m.id}\'')[0]["values"]
        assert len({seq for _, seq in points}) == len(points)
    assert q.scalar('SELECT count("count") FROM "part" WHERE "machine" = \'mill-wrap\' AND "wrapped" = true') == 1
    # The power cut is seen as one outage (its reset adds no part: the counter reads 0 before the next one).
    offline = 'SELECT count("state") FROM "state" WHERE "machine" = \'mill-power\' AND "state" = \'offline\''
    assert q.scalar(offline) == 1
    assert truths["mill-power"].power_cycles == 1
    return truths


def test_two_mills_200_parts_with_wrap_and_power_cut(tmp_path: Path, broker: ManagedProcess, influx: Influx) -> None:
    workshop = workshop_for(tmp_path, mqtt_port=broker.port, influx=influx)

    async def nothing(_sims: list[ModbusMachineSimulator]) -> None:
        return None

    _, gateway = asyncio.run(run_workshop(workshop, during=nothing, check=lambda: check_against_truth(workshop)))
    assert gateway.stats.dead_letters == 0


def test_broker_stopped_for_10_s_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path, broker_factory: Callable[..., ManagedProcess], influx: Influx
) -> None:
    port = free_port()
    broker = broker_factory(port=port, state_dir=tmp_path / "mq")
    workshop = workshop_for(tmp_path, mqtt_port=port, influx=influx)
    made_during_outage: list[int] = []

    async def outage(sims: list[ModbusMachineSimulator]) -> None:
        await wait_for(lambda: sum(s.parts_made for s in sims) >= 60, timeout=120, what="60 parts made")
        before = sum(s.parts_made for s in sims)
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(10)  # the outage itself: production goes on for 10 s without a broker
        made_during_outage.append(sum(s.parts_made for s in sims) - before)
        await asyncio.to_thread(broker_factory, port=port, state_dir=tmp_path / "mq")

    collector, gateway = asyncio.run(run_workshop(workshop, during=outage, check=lambda: check_against_truth(workshop)))
    assert made_during_outage[0] >= 20  # the outage really happened in the middle of production
    assert collector.link.reconnects >= 1
    assert gateway.stats.dead_letters == 0

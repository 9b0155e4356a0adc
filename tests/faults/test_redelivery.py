"""(e) Every event delivered three times: a spy subscriber copies each event the collector publishes, byte for
byte, and publishes it twice more while production goes on (as a broker or a collector re-sending after a lost
acknowledgement would). InfluxDB keeps each event once: the stored counts do not move."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from copeau.services import ManagedProcess
from tests.conftest import Influx, wait_for
from tests.faults.rig import Load, RawPublisher, Rig, Spy, Verdict, verdict, wait_stored, workshops, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LOAD = Load(parts=12, seed=550)
COPIES = 3


def test_every_event_delivered_three_times_is_stored_once(
    tmp_path: Path, broker: ManagedProcess, influx: Influx
) -> None:
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=broker.port, influx_port=influx.process.port,
        database=influx.new_database("fe"),
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)
    spy = Spy(broker.port)
    copier = RawPublisher(broker.port, client_id="fault-copier")
    copied = 0

    async def copy_again() -> None:
        """Publish what the spy saw, COPIES - 1 more times, in batches of what came since the last round."""
        nonlocal copied
        taken = spy.taken(copied)
        if taken:
            await asyncio.to_thread(copier.publish, taken * (COPIES - 1))
            copied += len(taken)

    async def scenario() -> Verdict:
        async with rig.running():
            collector = rig.collector
            gateway = rig.gateway
            assert collector is not None
            assert gateway is not None
            while not all(s.finished.is_set() for s in rig.sims):
                await copy_again()
                await asyncio.sleep(0.2)
            await rig.production_done()
            await wait_for(lambda: len(spy.taken()) >= collector.stats.acknowledged, timeout=30,
                           what="the spy to see every event")
            await copy_again()
            await wait_for(lambda: gateway.stats.received >= COPIES * copied, timeout=60,
                           what="the gateway to receive every copy")
            await asyncio.to_thread(wait_stored, collector_ws, timeout=60)
            await wait_for(lambda: gateway.stats.batches and gateway.stats.received == gateway.stats.stored_points,
                           timeout=30, what="the gateway to write every copy")
        return await asyncio.to_thread(verdict, collector_ws)

    try:
        result = asyncio.run(scenario())
    finally:
        spy.close()
        copier.close()
    stats = rig.gateway_stats()
    figures = {
        "load": LOAD.describe(),
        "distinct_events": copied,
        "deliveries": stats.received,
        "points_written": stats.stored_points,
        **result.figures(),
        "dead_letters": stats.dead_letters,
    }
    write_result("e_redelivery", figures)

    assert result.exact, result
    assert result.truth_parts == LOAD.machines * LOAD.parts
    assert copied == result.events  # the spy saw every event the collector numbered
    assert stats.received == COPIES * copied  # every event really went through the gateway three times
    assert stats.stored_points == COPIES * copied  # and InfluxDB accepted every copy: it merged them
    assert stats.dead_letters == 0

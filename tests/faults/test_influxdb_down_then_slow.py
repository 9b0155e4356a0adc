"""(c) InfluxDB goes away (influxd stopped) in the middle of production, comes back, then answers slowly (a fault
proxy between the gateway and influxd adds latency each way): the gateway holds, retries, batches, and stores
every event once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from copeau.services import ManagedProcess, free_port, influxd_process
from simulators.faultproxy import FaultProxy
from tests.conftest import wait_for
from tests.faults.rig import Load, Rig, Verdict, truth_parts_now, verdict, wait_stored, workshops, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LOAD = Load(parts=24, seed=400)
DOWN_S = 4.0  # InfluxDB stopped this long (8 minutes of a real workshop's production)
SLOW_MS = 250  # then each request and each answer is held this long (a 0.5 s round trip)


@pytest.fixture
def own_influxd(tmp_path: Path) -> Iterator[Callable[[], ManagedProcess]]:
    """An influxd of this test's own (the session one must not be stopped): call to (re)start it, same ports and
    data."""
    port, rpc, state = free_port(), free_port(), tmp_path / "influx"
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        proc = influxd_process(host="127.0.0.1", port=port, rpc_port=rpc, state_dir=state)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_influxdb_down_then_slow(
    tmp_path: Path,
    broker: ManagedProcess,
    own_influxd: Callable[[], ManagedProcess],
    proxies: Callable[..., FaultProxy],
) -> None:
    influxd = own_influxd()
    link = proxies(influxd.port, name="gateway-influxdb")
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=broker.port, influx_port=influxd.port, gateway_influx_port=link.port,
        database="fc",
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)
    figures: dict[str, object] = {}

    async def scenario() -> Verdict:
        nonlocal influxd
        async with rig.running():
            gateway = rig.gateway
            assert gateway is not None
            await wait_for(lambda: rig.parts_made() >= 2 * LOAD.machines, timeout=60, what="2 parts per machine")

            # Down: influxd stopped; the gateway holds its batch, unacknowledged, and retries.
            await asyncio.to_thread(influxd.stop)
            down_at = time.monotonic()
            await asyncio.sleep(DOWN_S)  # the outage itself: production goes on
            held = gateway.stats.received - gateway.stats.stored_points
            influxd = await asyncio.to_thread(own_influxd)
            back_at = time.monotonic()
            target = await asyncio.to_thread(truth_parts_now, collector_ws)
            done = await asyncio.to_thread(wait_stored, collector_ws, target=lambda: target, timeout=60)
            figures.update({
                "down_s": round(back_at - down_at, 2),
                "events_held_by_gateway": held,
                "write_retries_while_down": gateway.stats.write_retries,
                "drain_after_down_s": round(done - back_at, 3),
            })

            # Slow: every request and answer delayed; production goes on to its end.
            await asyncio.to_thread(link.delay, SLOW_MS)
            batches_before, received_before = gateway.stats.batches, gateway.stats.received
            await rig.production_done()
            ended_at = time.monotonic()
            done = await asyncio.to_thread(wait_stored, collector_ws, timeout=60)
            stats = gateway.stats
            figures.update({
                "slow_round_trip_ms": 2 * SLOW_MS,
                "drain_after_production_while_slow_s": round(done - ended_at, 3),
                "mean_batch_while_slow": round(
                    (stats.received - received_before) / max(1, stats.batches - batches_before), 1
                ),
            })
            await asyncio.to_thread(link.heal)

        # Still in the event loop: servers restarted from its worker threads are still up (PDEATHSIG).
        return await asyncio.to_thread(verdict, collector_ws)
    result = asyncio.run(scenario())
    stats = rig.gateway_stats()
    figures |= {"load": LOAD.describe(), **result.figures(), "dead_letters": stats.dead_letters}
    write_result("c_influxdb_down_then_slow", figures)

    assert result.exact, result
    assert result.truth_parts == LOAD.machines * LOAD.parts
    assert figures["write_retries_while_down"] > 0  # type: ignore[operator]  # the outage was felt
    assert figures["events_held_by_gateway"] > 0  # type: ignore[operator]
    assert stats.dead_letters == 0

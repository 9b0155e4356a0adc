"""(b) The gateway is away for about ten minutes of a workshop's production (time-compressed): the broker queues
every event in the gateway's persistent session, and the gateway stores the backlog when it comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from copeau.services import ManagedProcess, free_port
from tests.conftest import Influx, wait_for
from tests.faults.rig import Load, Rig, Verdict, verdict, wait_stored, workshops, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# 8 mills × 14 parts, one part every 0.5 s: the gateway leaves after about 2 parts per machine and misses the
# rest, about 6 s of simulation, i.e. 12 minutes of real production at one part a minute per machine.
LOAD = Load(parts=14, seed=200)


def test_gateway_away_for_ten_minutes_of_production(
    tmp_path: Path, broker_factory: Callable[..., ManagedProcess], influx: Influx
) -> None:
    port = free_port()
    broker_factory(port=port, state_dir=tmp_path / "mq")
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=port, influx_port=influx.process.port, database=influx.new_database("fb")
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)
    figures: dict[str, object] = {}

    async def scenario() -> Verdict:
        async with rig.running():
            await wait_for(lambda: rig.parts_made() >= 2 * LOAD.machines, timeout=60, what="2 parts per machine")
            await asyncio.to_thread(rig.stop_gateway)
            assert rig.collector is not None
            away_at, made_before, acked_before = time.monotonic(), rig.parts_made(), rig.collector.stats.acknowledged
            await rig.production_done()
            figures["parts_made_while_away"] = rig.parts_made() - made_before
            figures["away_s"] = round(time.monotonic() - away_at, 2)
            # Acknowledged by the broker while nobody took them: the backlog queued in the gateway's session.
            figures["events_queued_at_broker"] = rig.collector.stats.acknowledged - acked_before
            back_at = time.monotonic()
            gateway = await rig.start_gateway()
            done = await asyncio.to_thread(wait_stored, collector_ws, timeout=60)
            figures["drain_s"] = round(done - back_at, 3)
            figures["events_delivered_after_return"] = gateway.stats.received

        # Still in the event loop: servers restarted from its worker threads are still up (PDEATHSIG).
        return await asyncio.to_thread(verdict, collector_ws)
    result = asyncio.run(scenario())
    stats = rig.gateway_stats()
    figures |= {
        "load": LOAD.describe(),
        "real_minutes_away": round(LOAD.real_minutes(float(figures["away_s"])), 1),  # type: ignore[arg-type]
        **result.figures(),
        "dead_letters": stats.dead_letters,
    }
    write_result("b_gateway_away", figures)

    assert result.exact, result
    assert result.truth_parts == LOAD.machines * LOAD.parts
    assert figures["real_minutes_away"] >= 10  # about ten minutes of a real workshop's production
    # The returning gateway got the whole backlog from the broker (and maybe a few it had not acknowledged).
    assert figures["events_delivered_after_return"] >= figures["events_queued_at_broker"] > 0  # type: ignore[operator]
    assert stats.dead_letters == 0

"""(f) Modbus modules power-cycle: each module's server goes away (connections dropped, new ones refused), comes
back after `power_off_s` with its counter reset to 0. The collector, with its default reconnect settings, must
read the module again within 5 s of its return, count every part across the reset, and see one outage.

The time from the module's return (ground truth `power_on`) to the first good read is measured from the
collector's `state` event that leaves `offline`, whose time is the time of that reading."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from copeau.influxql import InfluxQuery
from copeau.services import ManagedProcess
from tests.conftest import Influx
from tests.faults.rig import Load, Rig, Verdict, summary, truths, verdict, wait_stored, workshops, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# Each of the 8 modules loses power once, after its 3rd to 6th part, for 3 s: longer than the collector's
# backoff cap (collector.reconnect_max_s, 2 s by default), so that the measured delay includes a full backoff.
LOAD = Load(parts=10, power_cycle_after=(3, 4, 5, 6), power_off_s=3.0, power_on_idle_s=3.0, seed=600)
FIRST_READ_WITHIN_S = 5.0


def outage_times(workshop_q: InfluxQuery, machine: str) -> tuple[list[int], list[int]]:
    """Times (ns) of the collector's `offline` events and of its first reading after each."""
    rows = workshop_q.series(f'SELECT "state", "previous" FROM "state" WHERE "machine" = \'{machine}\'')
    values = rows[0]["values"] if rows else []
    went = [int(t) for t, state, _ in values if state == "offline"]
    back = [int(t) for t, _, previous in values if previous == "offline"]
    return went, back


def test_modules_power_cycle_and_are_read_again_within_5_s(
    tmp_path: Path, broker: ManagedProcess, influx: Influx
) -> None:
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=broker.port, influx_port=influx.process.port,
        database=influx.new_database("ff"),
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)

    async def scenario() -> Verdict:
        async with rig.running():
            await rig.production_done()
            await asyncio.to_thread(wait_stored, collector_ws, timeout=60)
        return await asyncio.to_thread(verdict, collector_ws)

    result = asyncio.run(scenario())
    query = InfluxQuery(collector_ws.influxdb)
    first_read, detected, outages = [], [], {}
    for machine, truth in truths(collector_ws).items():
        (off,) = [r["ts"] for r in truth.records if r["event"] == "power_off"]
        (on,) = [r["ts"] for r in truth.records if r["event"] == "power_on"]
        went, back = outage_times(query, machine)
        outages[machine] = len(went)
        detected.append((went[0] - off) / 1e9 if went else float("inf"))
        first_read.append((min(t for t in back if t >= on) - on) / 1e9 if any(t >= on for t in back) else float("inf"))
    figures = {
        "load": LOAD.describe(),
        "power_off_s": LOAD.power_off_s,
        "reconnect_max_s": collector_ws.collector.reconnect_max_s,
        "return_to_first_good_read_s": summary(first_read),
        "power_off_to_offline_event_s": summary(detected),
        "outages_seen": sum(outages.values()),
        **result.figures(),
    }
    write_result("f_power_cycle", figures)

    assert result.exact, result
    assert result.truth_parts == LOAD.machines * LOAD.parts
    assert all(t.power_cycles == 1 for t in truths(collector_ws).values())
    assert outages == dict.fromkeys(outages, 1), outages  # each cut seen as one outage
    assert max(first_read) <= FIRST_READ_WITHIN_S, first_read

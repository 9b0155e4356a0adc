"""Issue #6, "the spool disk nearly full": two simulated Modbus mills keep producing while the broker is down, and
the collector's outbox limit (`collector.outbox_max_mb`) is far too small for what they make. Telemetry is shed,
oldest first; after the broker returns, InfluxDB's part count equals the ground truth exactly, every alarm is
there, and for each machine the events stored plus the events shed equal its sequence numbers: the gaps in `seq`
are exactly what the collector says it shed (in its health report, stored in InfluxDB too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from collectors.outbox import ShedClass
from collectors.runner import Collector
from copeau.contract import SpoolLevel
from copeau.influxql import InfluxQuery
from copeau.services import ManagedProcess, free_port
from gateway.service import Gateway
from simulators.groundtruth import read_truth, truth_path
from simulators.modbus import ModbusMachineSimulator
from tests.conftest import Influx, make_workshop, modbus_machine, wait_for
from tests.integration.test_end_to_end import port_open

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

POLL_S = 0.05
PARTS = 30
SCENARIO = {"cycle_s": 0.3, "cycle_jitter_s": 0.05, "idle_s": 0.2, "parts": PARTS, "alarm_every": 4, "alarm_s": 0.3}
# 30 kB: the parts and alarms made during the outage take about 14 kB and the cycle ends about 10 kB; the cycle
# starts (about 6 kB) and most state transitions (about 18 kB) do not fit.
LIMIT_MB = 0.03
KINDS = ("state", "cycle", "part", "alarm")


def test_a_tiny_outbox_limit_sheds_telemetry_but_never_a_part(
    tmp_path: Path, broker_factory: Callable[..., ManagedProcess], influx: Influx, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    broker = broker_factory(port=port, state_dir=tmp_path / "mq")
    workshop = make_workshop(
        tmp_path,
        mqtt_port=port,
        influx_port=influx.process.port,
        database=influx.new_database("spool"),
        machines=[
            modbus_machine("mill-a", free_port(), poll=POLL_S, simulation={**SCENARIO, "seed": 5}),
            modbus_machine("mill-b", free_port(), poll=POLL_S, simulation={**SCENARIO, "seed": 6}),
        ],
        collector={"reconnect_max_s": 0.25, "outbox_max_mb": LIMIT_MB, "health_interval_s": 0.5},
        gateway={"health_interval_s": 0.5},
    )
    made_offline: list[int] = []
    seen: dict[str, object] = {}

    async def scenario() -> None:
        gateway = Gateway(workshop, retry_cap_s=0.5)
        gateway.start()
        sims = [ModbusMachineSimulator(m, truth_path=truth_path(workshop.state_dir, m.id))
                for m in workshop.machines]
        collector = Collector(workshop)
        stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                sim_tasks = [tg.create_task(s.run(), name=f"sim:{s.machine.id}") for s in sims]
                await wait_for(lambda: all(port_open(m.endpoint.port) for m in workshop.machines), timeout=10,
                               what="simulated modules listening")
                run = tg.create_task(collector.run(stop), name="collector")
                await wait_for(lambda: sum(s.parts_made for s in sims) >= 4 and collector.stats.acknowledged > 0,
                               timeout=60, what="4 parts made and delivered")
                before = sum(s.parts_made for s in sims)
                await asyncio.to_thread(broker.stop)
                await wait_for(lambda: all(s.finished.is_set() for s in sims), timeout=120, what="scenarios done")
                views = collector.stats.views
                await wait_for(lambda: all(views[s.machine.id].counter == s.counter for s in sims), timeout=10,
                               what="the collector reading the final counters")
                made_offline.append(sum(s.parts_made for s in sims) - before)
                stats = collector.outbox.stats()
                seen.update(level=stats.level, shed=stats.shed_events, bytes=stats.bytes)
                await asyncio.to_thread(broker_factory, port=port, state_dir=tmp_path / "mq")
                await wait_for(lambda: collector.outbox.depth() == 0, timeout=60, what="the outbox to drain")
                seen["next_seq"] = {m: v.next_seq for m, v in views.items()}
                seen["shed_by_machine"] = {
                    m: {cls: collector.outbox.stats().shed.get((m, cls), 0) for cls in ShedClass} for m in views
                }
                # A last health report, after the drain, for the checks below.
                await asyncio.sleep(1.2)
                stop.set()
                await run
                for task in sim_tasks:
                    task.cancel()
        finally:
            await asyncio.to_thread(gateway.stop)

    with caplog.at_level(logging.ERROR, logger="collectors.outbox"):
        asyncio.run(scenario())

    assert made_offline[0] >= 40, "the outage did not cover most of the production"
    assert seen["level"] is SpoolLevel.LIMIT
    assert seen["shed"] > 0
    limit_errors = [r for r in caplog.records if "reached its limit" in r.getMessage()]
    assert len(limit_errors) == 1, "the limit is logged once, as an ERROR"

    q = InfluxQuery(workshop.influxdb)
    next_seq: dict[str, int] = seen["next_seq"]  # type: ignore[assignment]
    shed_by_machine: dict[str, dict[ShedClass, int]] = seen["shed_by_machine"]  # type: ignore[assignment]
    for m in workshop.machines:
        truth = read_truth(truth_path(workshop.state_dir, m.id))
        where = f"\"machine\" = '{m.id}'"

        def count(kind: str, extra: str = "", where: str = where) -> int:
            return int(q.scalar(f'SELECT count("seq") FROM "{kind}" WHERE {where}{extra}') or 0)

        # Every part, exactly; every alarm raised.
        assert int(q.scalar(f'SELECT sum("count") FROM "part" WHERE {where}')) == truth.parts == PARTS
        assert count("alarm", ' AND "active" = true') == truth.alarms > 0
        # No seq twice, and the seqs missing are exactly those shed.
        seqs = [row[1] for k in KINDS for s in q.series(f'SELECT "seq" FROM "{k}" WHERE {where}')
                for row in s["values"]]
        assert len(seqs) == len(set(seqs))
        shed = shed_by_machine[m.id]
        assert shed[ShedClass.NEVER] == 0
        assert len(seqs) + sum(shed.values()) == next_seq[m.id]
        assert max(seqs) < next_seq[m.id]
        # Cycle starts went first: with this limit, no cycle end had to go.
        assert shed[ShedClass.CYCLE_START] > 0 and shed[ShedClass.STATE] > 0 and shed[ShedClass.CYCLE_END] == 0
        # The collector's health, in InfluxDB, says the same.
        health = q.series(
            'SELECT last("shed_cycle_start"), last("shed_state"), last("shed_cycle_end"), last("next_seq") '
            f"FROM \"copeau_health\" WHERE \"kind\" = 'collector' AND {where}"
        )[0]["values"][0][1:]
        assert health == [shed[ShedClass.CYCLE_START], shed[ShedClass.STATE], shed[ShedClass.CYCLE_END],
                          next_seq[m.id]]
    levels = q.series("SELECT max(\"spool_level\"), last(\"shed_events\") FROM \"copeau_health\" "
                      "WHERE \"kind\" = 'collector'")[0]["values"][0][1:]
    assert levels == [int(SpoolLevel.LIMIT), seen["shed"]]

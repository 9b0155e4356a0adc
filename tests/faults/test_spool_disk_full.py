"""(i) The spool disk is nearly full while the broker is away: the collector's outbox may not grow, so it sheds
telemetry, oldest first (cycle starts, then state changes, then cycle ends), but never a part or an alarm, and
raises the alarm: an ERROR in its log, and `spool_level` = LIMIT in its health report, which the gateway stores
in InfluxDB (`copeau_health`) for an alert to fire on.

"Nearly full" is what the collector measures: the free space of the outbox's filesystem is below
`collector.spool_min_free_mb`. The test sets that reserve 1 MB above the real free space, so the disk is nearly
full as far as the product can tell, without filling a real disk. Like time, the disk is compressed: the outbox
may then hold its floor (`collectors.outbox.LOW_DISK_FLOOR`, 1 MB in production, about 4,000 events) before it
sheds; the test lowers that floor to 96 kB, about 400 of the reference load's events, so that a few seconds of
outage reach it.

The verdict: every part made is in InfluxDB once; for each machine, the events stored plus the events the
collector says it shed equal its sequence numbers, and none of the shed events was a part or an alarm.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import collectors.outbox
from collectors.outbox import MB, Outbox, ShedClass
from collectors.runner import outbox_path
from copeau.contract import SpoolLevel
from copeau.influxql import InfluxQuery
from copeau.services import ManagedProcess, free_port
from tests.conftest import Influx, wait_for
from tests.faults.rig import Load, Rig, Verdict, verdict, wait_stored, workshops, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LOAD = Load(parts=20, seed=900)
FLOOR_BYTES = 96_000  # the outbox's floor on a nearly full disk, compressed (1 MB in production)
HEALTH_S = 0.5


def test_spool_disk_nearly_full_sheds_telemetry_never_a_part_and_raises_the_alarm(
    tmp_path: Path,
    broker_factory: Callable[..., ManagedProcess],
    influx: Influx,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(collectors.outbox, "LOW_DISK_FLOOR", FLOOR_BYTES)
    free_mb = shutil.disk_usage(tmp_path).free / MB
    port, mq = free_port(), tmp_path / "mq"
    broker = broker_factory(port=port, state_dir=mq)
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=port, influx_port=influx.process.port, database=influx.new_database("fi"),
        collector={"spool_min_free_mb": round(free_mb + 1), "health_interval_s": HEALTH_S},
        gateway={"health_interval_s": HEALTH_S},
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)
    figures: dict[str, object] = {}

    async def scenario() -> Verdict:
        nonlocal broker
        async with rig.running():
            collector = rig.collector
            assert collector is not None
            await wait_for(lambda: rig.parts_made() >= 2 * LOAD.machines, timeout=60, what="2 parts per machine")
            await asyncio.to_thread(broker.stop)
            made_before = rig.parts_made()
            await wait_for(lambda: all(s.finished.is_set() for s in rig.sims), timeout=120, what="scenarios ended")
            views = collector.stats.views
            await wait_for(lambda: all(views[s.machine.id].counter == s.counter for s in rig.sims), timeout=30,
                           what="the collector reading the final counters")
            stats = collector.outbox.stats()
            figures.update({
                "parts_made_while_broker_away": rig.parts_made() - made_before,
                "level_at_end_of_outage": stats.level.name,
                "outbox_bytes_at_end_of_outage": stats.bytes,
                "outbox_limit_bytes": stats.limit_bytes,
                "disk_free_mb": round(free_mb),
            })
            broker = await asyncio.to_thread(broker_factory, port=port, state_dir=mq)
            back_at = time.monotonic()
            await rig.production_done()
            done = await asyncio.to_thread(wait_stored, collector_ws, timeout=60)
            figures["drain_s"] = round(done - back_at, 3)
            # The alarm, as an alert would read it: the collector's spool level in InfluxDB. The LIMIT reports are
            # those kept during the outage and published on reconnection; the reports from before the outage (OK)
            # are there long before, so waiting for any report would not wait for them.
            query = InfluxQuery(collector_ws.influxdb)
            level_q = 'SELECT max("spool_level") FROM "copeau_health" WHERE "kind" = \'collector\''
            await wait_for(lambda: query.scalar(level_q) == int(SpoolLevel.LIMIT), timeout=30,
                           what="the LIMIT health reports in InfluxDB")
            figures["spool_level_in_influxdb"] = query.scalar(level_q)
            # The last health report stored must say what the outbox says; asserted below, once the gateway has
            # stopped, so it must be stored before. The outbox is empty now: nothing more can be shed.
            shed_q = 'SELECT last("shed_events") FROM "copeau_health" WHERE "kind" = \'collector\''
            await wait_for(lambda: query.scalar(shed_q) == collector.outbox.stats().shed_events, timeout=30,
                           what="a health report with every event shed in InfluxDB")
        return await asyncio.to_thread(verdict, collector_ws)

    with caplog.at_level(logging.ERROR, logger="collectors.outbox"):
        result = asyncio.run(scenario())
    box = Outbox(outbox_path(collector_ws))
    try:
        shed = box.stats().shed
    finally:
        box.close()
    shed_by_class = {cls.name.lower(): sum(n for (_m, c), n in shed.items() if c is cls) for cls in ShedClass}
    limit_errors = [r.getMessage() for r in caplog.records if "reached its limit" in r.getMessage()]
    figures |= {
        "load": LOAD.describe(),
        "floor_bytes": FLOOR_BYTES,
        "shed": shed_by_class,
        "alarm_logged": len(limit_errors),
        **result.figures(),
    }
    write_result("i_spool_disk_full", figures)

    assert figures["level_at_end_of_outage"] == "LIMIT"
    assert figures["spool_level_in_influxdb"] == int(SpoolLevel.LIMIT)
    assert len(limit_errors) == 1 and "free on the disk" in limit_errors[0], limit_errors
    assert shed_by_class["never"] == 0  # no part, no alarm
    assert shed_by_class["cycle_start"] > 0  # the oldest class went first
    # Parts: every one, once. Events: every number is either stored once or counted as shed.
    assert (result.lost_parts, result.duplicated_parts, result.duplicated_events) == (0, 0, 0), result
    assert result.truth_parts == LOAD.machines * LOAD.parts
    assert result.missing_events == sum(shed.values()) > 0, (result, shed)
    for machine, counts in result.per_machine.items():
        assert counts["missing"] == sum(n for (m, _c), n in shed.items() if m == machine), (machine, counts)
    # The health report says what the outbox says.
    q = InfluxQuery(collector_ws.influxdb)
    last_shed = q.scalar('SELECT last("shed_events") FROM "copeau_health" WHERE "kind" = \'collector\'')
    assert last_shed == sum(shed.values())

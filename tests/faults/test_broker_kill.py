"""(a) The broker is killed with `kill -9` while the gateway is away and events are queued for it.

mosquitto keeps its queue in memory and saves it to `mosquitto.db` every `autosave_interval` (1 in Copeau's
configuration, which mosquitto 2.0 turns into a save every 2 s: it saves when more than one whole second has
passed since the last save). A `kill -9` therefore loses what the broker acknowledged since its last save.

- The first test kills the broker after the collector has been cut off (fault proxy refusing its connections)
  and the broker has saved since: everything queued must survive. The collector's outbox keeps what it makes
  meanwhile.
- The second test measures the known gap: the broker is killed right after it acknowledged events and before it
  saved them. What is lost must be exactly confined to what it acknowledged since its last save (the figure is
  recorded for docs/reliability.md); anything older lost would fail the test.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from copeau.services import ManagedProcess, free_port
from simulators.faultproxy import FaultProxy
from tests.conftest import Influx, wait_for
from tests.faults.rig import Load, Rig, Verdict, truth_parts_now, verdict, wait_stored, workshops, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LOAD = Load(parts=16, seed=300)
SAVE_MARGIN_NS = 200_000_000  # a save that ends this long after an instant started after it (saves take ~1 ms)


def db_mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def test_broker_killed_after_its_last_save_loses_nothing_queued(
    tmp_path: Path,
    broker_factory: Callable[..., ManagedProcess],
    influx: Influx,
    proxies: Callable[..., FaultProxy],
) -> None:
    port, mq = free_port(), tmp_path / "mq"
    broker = broker_factory(port=port, state_dir=mq)
    db_file = mq / "mosquitto" / "mosquitto.db"
    link = proxies(port, name="collector-broker")
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=port, collector_mqtt_port=link.port, influx_port=influx.process.port,
        database=influx.new_database("fa"),
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)
    figures: dict[str, object] = {}

    async def scenario() -> Verdict:
        nonlocal broker
        async with rig.running():
            collector = rig.collector
            assert collector is not None
            await wait_for(lambda: rig.parts_made() >= 2 * LOAD.machines, timeout=60, what="2 parts per machine")
            await asyncio.to_thread(rig.stop_gateway)
            acked_before = collector.stats.acknowledged
            await wait_for(lambda: rig.parts_made() >= 8 * LOAD.machines, timeout=60, what="8 parts per machine")

            # Quiet: the collector is cut off (its outbox keeps what the machines make), then the broker saves.
            cut_ns, cut_at = time.time_ns(), time.monotonic()
            await asyncio.to_thread(link.refuse)
            await wait_for(lambda: db_mtime(db_file) > cut_ns + SAVE_MARGIN_NS, timeout=10,
                           what="the broker's first save after the cut")
            figures["quiet_before_kill_s"] = round(time.monotonic() - cut_at, 3)
            figures["events_queued_at_kill"] = collector.stats.acknowledged - acked_before
            broker.kill()
            broker = await asyncio.to_thread(broker_factory, port=port, state_dir=mq)
            back_at = time.monotonic()
            target = await asyncio.to_thread(truth_parts_now, collector_ws)
            await asyncio.to_thread(link.heal)
            gateway = await rig.start_gateway()
            done = await asyncio.to_thread(wait_stored, collector_ws, target=lambda: target, timeout=60)
            figures["drain_s"] = round(done - back_at, 3)
            figures["events_delivered_after_restart"] = gateway.stats.received
            await rig.production_done()
            await asyncio.to_thread(wait_stored, collector_ws, timeout=60)
            figures["collector_reconnects"] = collector.link.reconnects

        # Still in the event loop: servers restarted from its worker threads are still up (PDEATHSIG).
        return await asyncio.to_thread(verdict, collector_ws)
    result = asyncio.run(scenario())
    stats = rig.gateway_stats()
    figures |= {"load": LOAD.describe(), **result.figures(), "dead_letters": stats.dead_letters}
    write_result("a_broker_kill", figures)

    assert result.exact, result
    assert result.truth_parts == LOAD.machines * LOAD.parts
    assert figures["events_queued_at_kill"] > 100  # type: ignore[operator]  # the kill really hit a queue
    # The restarted broker delivered its saved queue: at least what was queued at the kill.
    assert figures["events_delivered_after_restart"] >= figures["events_queued_at_kill"]  # type: ignore[operator]
    assert stats.dead_letters == 0


def test_broker_killed_before_its_next_save_loses_only_what_it_acknowledged_since(
    tmp_path: Path, broker_factory: Callable[..., ManagedProcess], influx: Influx
) -> None:
    port, mq = free_port(), tmp_path / "mq"
    broker = broker_factory(port=port, state_dir=mq)
    db_file = mq / "mosquitto" / "mosquitto.db"
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=port, influx_port=influx.process.port, database=influx.new_database("fw")
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)
    figures: dict[str, object] = {}

    async def scenario() -> Verdict:
        nonlocal broker
        async with rig.running():
            collector = rig.collector
            assert collector is not None
            await wait_for(lambda: rig.parts_made() >= 2 * LOAD.machines, timeout=60, what="2 parts per machine")
            await asyncio.to_thread(rig.stop_gateway)
            # Acknowledgements as they come: (time ns, acknowledged so far), to count those after the last save.
            times: list[int] = []
            counts: list[int] = []

            def acked_since(ns: int) -> int:
                i = bisect.bisect_right(times, ns) - 1
                assert i >= 0, "the record of acknowledgements starts after the instant asked for"
                return counts[-1] - counts[i]

            async def record() -> None:
                while True:
                    times.append(time.time_ns())
                    counts.append(collector.stats.acknowledged)
                    await asyncio.sleep(0.005)

            recorder = asyncio.create_task(record())
            await wait_for(lambda: rig.parts_made() >= 6 * LOAD.machines, timeout=60, what="6 parts per machine")
            # Kill as soon as at least 20 events were acknowledged after the broker's last save.
            await wait_for(lambda: times[0] < db_mtime(db_file) and acked_since(db_mtime(db_file)) >= 20,
                           timeout=30, interval=0.005, what="20 events acknowledged since the broker's last save")
            broker.kill()
            last_save = db_mtime(db_file)
            await asyncio.sleep(0.02)  # the acknowledgements already received are counted by the collector
            recorder.cancel()
            figures["acknowledged_since_last_save"] = acked_since(last_save)
            figures["ms_since_last_save"] = round((times[-1] - last_save) / 1e6, 1)
            broker = await asyncio.to_thread(broker_factory, port=port, state_dir=mq)
            await rig.start_gateway()
            await rig.production_done()
            await asyncio.sleep(1.0)  # nothing more is coming: give the last batch time to be stored

        # Still in the event loop: servers restarted from its worker threads are still up (PDEATHSIG).
        return await asyncio.to_thread(verdict, collector_ws)
    result = asyncio.run(scenario())
    figures |= {"load": LOAD.describe(), **result.figures()}
    write_result("a_broker_kill_window", figures)

    assert result.duplicated_parts == result.duplicated_events == 0
    # What is lost is what the broker acknowledged since its last save, no more (each lost part is in a lost event).
    assert result.missing_events <= figures["acknowledged_since_last_save"]  # type: ignore[operator]
    assert result.lost_parts <= result.missing_events

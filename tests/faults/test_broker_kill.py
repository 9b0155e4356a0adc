"""(a) The broker is killed with `kill -9` right after it acknowledged events, before it could save them.

mosquitto keeps its queue in memory and saves it to `mosquitto.db` every `autosave_interval` (1 in Copeau's
configuration, which mosquitto 2.0.11 turns into a save about every 2 s: it saves when more than one whole second
has passed since the last save). A `kill -9` therefore loses what the broker acknowledged since its last save. The
collector keeps acknowledged events for `collector.replay_window_s` and publishes them again after every new
connection (collectors/outbox.py), so nothing may be lost.

The kill is strict: production goes on, and the broker is killed as soon as at least 20 events were acknowledged
after its last save (and within 0.5 s of that save, so that no other save slips in before the kill), within
0.2 s of the last PUBACK the collector saw (no quiet period). Two variants:

- the gateway is away (stopped after 2 parts per machine): the events are queued in its session at the broker,
  and those acknowledged since the last save die with the broker;
- the gateway is online but lags behind: its InfluxDB is 300 ms away (a fault proxy, healed once the broker is
  back) and it takes batches of 10 (receive maximum 20), so it stores fewer events per second than 8 machines
  make: the broker holds a queue for it, and the part of the queue acknowledged since the last save dies with the
  broker. (With a gateway that keeps up, the broker has forwarded nearly everything before the kill, and the
  test could not fail: measured, 0 lost with the replay off.)

Each must end with 0 parts lost or duplicated and 0 events missing or twice, against ground truth. To check that
the test can fail, run it with the replay switched off: `COPEAU_FAULT_REPLAY_WINDOW_S=0` (it then loses what the
broker acknowledged since its last save, as before the fix).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from copeau.influxql import InfluxQuery
from copeau.services import ManagedProcess, free_port
from simulators.faultproxy import FaultProxy
from tests.conftest import Influx, wait_for
from tests.faults.rig import (
    Load,
    Rig,
    Verdict,
    stored_seqs,
    truth_parts_now,
    verdict,
    wait_stored,
    workshops,
    write_result,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LOAD = Load(parts=16, seed=300)
UNSAVED_AT_KILL = 20  # events the broker acknowledged since its last save, at least, when it is killed
GATEWAY_INFLUX_DELAY_MS = 300  # the online variant: each way, between the gateway and InfluxDB
PUBACK_TO_KILL_S = 0.2  # the kill comes at most this long after the last PUBACK the collector saw
# The kill comes at most this long after the broker's last save, so that no save can complete between the check
# and the kill (which would leave fewer unsaved events than checked). mosquitto saves when the second (an integer)
# is more than one past that of its last save: saves come 2 s apart under steady traffic (measured: 1.996-2.004 s),
# never less than 1 s apart.
SAVE_TO_KILL_S = 0.5
# The replay window: the product's default, unless the run asks otherwise (0 = replay off, to see the test fail).
REPLAY_WINDOW_S = float(os.environ.get("COPEAU_FAULT_REPLAY_WINDOW_S", "10"))


def db_mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def stored_events(query: InfluxQuery) -> int:
    return sum(len(set(s)) for s in stored_seqs(query).values())


@pytest.mark.parametrize("gateway", ["away", "online"])
def test_broker_killed_right_after_acknowledging_loses_nothing(
    gateway: str,
    tmp_path: Path,
    broker_factory: Callable[..., ManagedProcess],
    influx: Influx,
    proxies: Callable[..., FaultProxy],
) -> None:
    port, mq = free_port(), tmp_path / "mq"
    slow = None
    if gateway == "online":
        slow = proxies(influx.process.port, name="gateway-influxdb")
    broker = broker_factory(port=port, state_dir=mq)
    db_file = mq / "mosquitto" / "mosquitto.db"
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=port, influx_port=influx.process.port,
        database=influx.new_database(f"fa{gateway[0]}"), collector={"replay_window_s": REPLAY_WINDOW_S},
        gateway_influx_port=slow.port if slow else None,
        gateway={"max_batch_lines": 10} if slow else {},
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)
    figures: dict[str, object] = {"gateway": gateway, "replay_window_s": REPLAY_WINDOW_S}

    async def scenario() -> Verdict:
        nonlocal broker
        async with rig.running():
            collector = rig.collector
            assert collector is not None
            await wait_for(lambda: rig.parts_made() >= 2 * LOAD.machines, timeout=60, what="2 parts per machine")
            if gateway == "away":
                await asyncio.to_thread(rig.stop_gateway)
            if slow is not None:
                # Only now: a gateway slow to start would let the machines make parts before the collector's first
                # reading (its baseline), which it rightly does not count.
                await asyncio.to_thread(slow.delay, GATEWAY_INFLUX_DELAY_MS)
            acked_before = collector.stats.acknowledged
            # Acknowledgements as the collector counts them: (time ns, acknowledged so far), sampled every 5 ms.
            times: list[int] = []
            counts: list[int] = []
            last_puback: list[int] = [0]

            def acked_since(ns: int) -> int:
                i = bisect.bisect_right(times, ns) - 1
                assert i >= 0, "the record of acknowledgements starts after the instant asked for"
                return counts[-1] - counts[i]

            async def record() -> None:
                while True:
                    now, acked = time.time_ns(), collector.stats.acknowledged
                    if counts and acked > counts[-1]:
                        last_puback[0] = now
                    times.append(now)
                    counts.append(acked)
                    await asyncio.sleep(0.005)

            recorder = asyncio.create_task(record())
            await wait_for(lambda: rig.parts_made() >= 6 * LOAD.machines, timeout=60, what="6 parts per machine")

            def kill_now() -> bool:
                saved, now = db_mtime(db_file), time.time_ns()
                return (bool(times) and times[0] < saved and now - saved <= SAVE_TO_KILL_S * 1e9
                        and acked_since(saved) >= UNSAVED_AT_KILL and now - last_puback[0] <= PUBACK_TO_KILL_S * 1e9)

            await wait_for(kill_now, timeout=30, interval=0.005,
                           what=f"{UNSAVED_AT_KILL} events acknowledged within {SAVE_TO_KILL_S} s of the broker's "
                                f"last save, the last within {PUBACK_TO_KILL_S} s")
            kill_ns = time.time_ns()
            broker.kill()
            last_save = db_mtime(db_file)
            figures["ms_from_last_puback_to_kill"] = round((kill_ns - last_puback[0]) / 1e6, 1)
            await asyncio.sleep(0.02)  # PUBACKs already received are counted by the collector
            recorder.cancel()
            # What the broker lost: it had acknowledged these and never saved them.
            figures["acknowledged_since_last_save"] = acked_since(last_save)
            figures["ms_from_last_save_to_kill"] = round((kill_ns - last_save) / 1e6, 1)
            figures["events_acknowledged_before_kill"] = collector.stats.acknowledged - acked_before
            figures["gateway_behind_at_kill"] = collector.stats.acknowledged - rig.gateway_stats().received
            replayed_before = collector.stats.replayed
            figures["kept_for_replay_at_kill"] = collector.outbox.stats().replay_events

            broker = await asyncio.to_thread(broker_factory, port=port, state_dir=mq)
            back_at = time.monotonic()
            target = await asyncio.to_thread(truth_parts_now, collector_ws)
            if gateway == "away":
                await rig.start_gateway()
            if slow is not None:
                await asyncio.to_thread(slow.heal)
            done = await asyncio.to_thread(wait_stored, collector_ws, target=lambda: target, timeout=60)
            figures["drain_s"] = round(done - back_at, 3)
            await rig.production_done()
            figures["replayed_after_restart"] = collector.stats.replayed - replayed_before
            figures["collector_reconnects"] = collector.link.reconnects
            # Every event numbered is stored, or the deadline passes and the verdict says what is missing.
            query = InfluxQuery(collector_ws.influxdb)
            numbered = sum(v.next_seq for v in collector.stats.views.values())
            with contextlib.suppress(pytest.fail.Exception):  # what is missing is measured by the verdict below
                await wait_for(lambda: stored_events(query) >= numbered, timeout=20, what="every event stored")

        # Still in the event loop: servers restarted from its worker threads are still up (PDEATHSIG).
        return await asyncio.to_thread(verdict, collector_ws)

    result = asyncio.run(scenario())
    stats = rig.gateway_stats()
    figures |= {"load": LOAD.describe(), **result.figures(), "dead_letters": stats.dead_letters,
                "gateway_received": stats.received}
    write_result(f"a_broker_kill_{gateway}", figures)

    # The kill really hit events the broker had acknowledged and not saved.
    assert figures["acknowledged_since_last_save"] >= UNSAVED_AT_KILL  # type: ignore[operator]
    assert result.truth_parts == LOAD.machines * LOAD.parts
    assert result.exact, result
    assert stats.dead_letters == 0

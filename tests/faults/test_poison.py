"""(d) Poison: 1 % of the messages on the event topics are malformed (published raw, among the collector's good
events). Each one is dead-lettered exactly once, with its exact bytes, and the good events all flow."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from copeau.contract import event_topic
from copeau.services import ManagedProcess
from gateway.deadletter import payload_bytes
from tests.conftest import Influx, wait_for
from tests.faults.rig import Load, RawPublisher, Rig, Verdict, verdict, wait_stored, workshops, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LOAD = Load(parts=20, seed=500)  # about 800 events: 8 poison messages, every kind of breakage at least once
GOOD_PER_POISON = 99  # one malformed message for 99 good ones: 1 %
TS0 = 1_790_000_000_000_000_000


def poison(i: int, site: str, machines: list[str]) -> tuple[str, bytes]:
    """The i-th malformed message: seven kinds of breakage in turn, each payload unique."""
    machine, other = machines[i % len(machines)], machines[(i + 1) % len(machines)]
    event = {"v": 1, "site": site, "machine": machine, "kind": "part", "seq": 10**9 + i, "ts": TS0 + i,
             "data": {"count": 1}}
    part = event_topic(site, machine, "part")
    match i % 7:
        case 0:
            return part, f"pas du JSON {{ {i}".encode()
        case 1:
            return part, json.dumps({**event, "kind": "broche"}).encode()
        case 2:  # a valid event, on another machine's topic
            return event_topic(site, other, "part"), json.dumps(event).encode()
        case 3:
            return part, json.dumps({**event, "data": {"count": "beaucoup"}}).encode()
        case 4:
            return part, b"\xff\xfe\x00 binaire " + i.to_bytes(4, "big")
        case 5:  # json.dumps writes an infinite float as `Infinity`
            cycle = {**event, "kind": "cycle", "data": {"phase": "end", "started_ts": TS0, "duration_s": 1e999}}
            return event_topic(site, machine, "cycle"), json.dumps(cycle).encode()
        case _:
            return event_topic(site, machine, "state"), json.dumps({**event, "kind": "state", "ts": i,
                                                                  "data": {"state": "idle"}}).encode()


def test_one_percent_poison_is_dead_lettered_exactly(
    tmp_path: Path, broker: ManagedProcess, influx: Influx
) -> None:
    collector_ws, gateway_ws = workshops(
        tmp_path, load=LOAD, mqtt_port=broker.port, influx_port=influx.process.port,
        database=influx.new_database("fd"),
    )
    rig = Rig(collector_ws, gateway_ws, load=LOAD)
    machines = [m.id for m in collector_ws.machines]
    injected: list[tuple[str, bytes]] = []
    injector = RawPublisher(broker.port)

    async def inject_alongside(stop: asyncio.Event) -> None:
        """One poison message per GOOD_PER_POISON events acknowledged, until `stop`; then one last round, so that
        the relation holds for every event acknowledged before the stop. Never cancelled: a batch handed to the
        publishing thread reaches the broker whatever happens to this task, and must be in `injected`."""
        assert rig.collector is not None
        while True:
            stopping = stop.is_set()  # read before `acknowledged`: the last round sees every ack before the stop
            due = rig.collector.stats.acknowledged // GOOD_PER_POISON
            batch = [poison(i, collector_ws.site.id, machines) for i in range(len(injected), due)]
            if batch:
                await asyncio.to_thread(injector.publish, batch)  # returns once the broker acknowledged them all
                injected.extend(batch)
            if stopping:
                return
            await asyncio.sleep(0.02)

    async def scenario() -> Verdict:
        async with rig.running():
            stop_injecting = asyncio.Event()
            task = asyncio.create_task(inject_alongside(stop_injecting))
            await rig.production_done()
            stop_injecting.set()
            await task  # every poison message published is acknowledged by the broker and counted in `injected`
            await asyncio.to_thread(wait_stored, collector_ws, timeout=60)
            gateway = rig.gateway
            assert gateway is not None
            await wait_for(lambda: gateway.stats.dead_letters >= len(injected), timeout=30,
                           what="every poison message dead-lettered")
        return await asyncio.to_thread(verdict, collector_ws)

    try:
        result = asyncio.run(scenario())
    finally:
        injector.close()
    stats = rig.gateway_stats()
    path = gateway_ws.state_dir / "deadletter" / "gateway.jsonl"
    letters = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    good = stats.received - len(injected)
    figures = {
        "load": LOAD.describe(),
        "good_messages": good,
        "poison_injected": len(injected),
        "poison_share_pct": round(100 * len(injected) / stats.received, 2),
        "dead_letters_counted": stats.dead_letters,
        "dead_letters_in_file": len(letters),
        **result.figures(),
    }
    write_result("d_poison", figures)

    assert result.exact, result
    assert len(injected) >= 7  # 1 % of the run's ~800 events
    assert 0.8 <= figures["poison_share_pct"] <= 1.2  # type: ignore[operator]
    assert stats.dead_letters == len(letters) == len(injected)
    # The very messages injected, byte for byte, each once, each with a reason.
    assert Counter((x["topic"], payload_bytes(x["payload"])) for x in letters) == Counter(injected)
    assert all(x["reason"] for x in letters)

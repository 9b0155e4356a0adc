"""(g) The network flaps every 10 s: fault proxies on both MQTT links (collector → broker and gateway → broker)
go down for half of every period and up again, while production goes on. Nothing may be lost or duplicated, and
there must be no reconnect storm: per flap, each client makes one connection that holds (two at most) and a
handful of attempts while the link is down (its backoff schedule, capped at 5 s), not hundreds.

In the CI variant the link is *reset* when it goes down (every connection gets an RST, and so does every attempt
until it is up again): the harshest form, each flap breaks every connection. The long variants (`faults_long`)
flap for two minutes, in reset mode and in blackhole mode (connections stall, as when a Wi-Fi access point is
lost; MQTT's keepalive of 15 s outlasts a 5 s stall, so there should be no reconnection at all).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from copeau.services import ManagedProcess
from simulators.faultproxy import DownMode, FaultProxy, ProxyStats
from tests.conftest import Influx, wait_for
from tests.faults.rig import Load, Rig, Verdict, truth_parts_now, verdict, wait_stored, workshops, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PERIOD_S = 10.0
DOWN_S = 5.0
MAX_HOLDING_CONNECTIONS_PER_FLAP = 2  # per client: the connection made when the link is back (and one spare)
MAX_ATTEMPTS_PER_FLAP = 12  # per client: full-jitter backoff from 0.2 s doubling to a 5 s cap, over 5 s down


def per_flap(before: ProxyStats, after: ProxyStats, flaps: int) -> dict[str, float]:
    return {
        "connections_per_flap": round((after.forwarded - before.forwarded) / flaps, 2),
        "attempts_per_flap": round((after.accepted - before.accepted) / flaps, 2),
    }


def run_flaps(
    tmp_path: Path,
    broker: ManagedProcess,
    influx: Influx,
    proxies: Callable[..., FaultProxy],
    *,
    flaps: int,
    mode: DownMode,
    scenario_name: str,
) -> tuple[Verdict, dict[str, object]]:
    # Production outlasts the flapping by a few seconds: parts = (flapping time + 4 s) / 0.5 s per part.
    load = Load(parts=int((flaps * PERIOD_S + 4) / 0.5), seed=700)
    collector_link = proxies(broker.port, name="collector-broker")
    gateway_link = proxies(broker.port, name="gateway-broker")
    collector_ws, gateway_ws = workshops(
        tmp_path, load=load, mqtt_port=broker.port, collector_mqtt_port=collector_link.port,
        gateway_mqtt_port=gateway_link.port, influx_port=influx.process.port, database=influx.new_database("fg"),
    )
    rig = Rig(collector_ws, gateway_ws, load=load)
    figures: dict[str, object] = {"load": load.describe(), "mode": mode, "period_s": PERIOD_S, "down_s": DOWN_S}

    async def scenario() -> Verdict:
        async with rig.running():
            collector, gateway = rig.collector, rig.gateway
            assert collector is not None
            assert gateway is not None
            await wait_for(lambda: rig.parts_made() >= load.machines, timeout=60, what="1 part per machine")
            before = collector_link.stats, gateway_link.stats
            for link in (collector_link, gateway_link):
                await asyncio.to_thread(link.flap, PERIOD_S, down_s=DOWN_S, down=mode)
            started = time.monotonic()
            # The flapping itself: it ends in the middle of the last up phase. The proxies flap on absolute deadlines
            # from their own start (just before `started`), so healing half an up phase (2.5 s) away from both the
            # last down phase and the next one keeps the count of down phases exact under a late wake-up.
            await asyncio.sleep((flaps - 1) * PERIOD_S + DOWN_S + (PERIOD_S - DOWN_S) / 2)
            for link in (collector_link, gateway_link):
                await asyncio.to_thread(link.heal)
            healed_at = time.monotonic()
            after = collector_link.stats, gateway_link.stats
            target = await asyncio.to_thread(truth_parts_now, collector_ws)
            done = await asyncio.to_thread(wait_stored, collector_ws, target=lambda: target, timeout=60)
            figures.update({
                "flapping_s": round(healed_at - started, 1),
                "flaps": after[0].flaps,
                "collector_link": per_flap(before[0], after[0], after[0].flaps),
                "gateway_link": per_flap(before[1], after[1], after[1].flaps),
                "collector_reconnects": collector.link.reconnects,
                "gateway_reconnects": gateway.link.reconnects,
                "drain_s": round(done - healed_at, 3),
            })
            await rig.production_done()
            await asyncio.to_thread(wait_stored, collector_ws, timeout=60)
        return await asyncio.to_thread(verdict, collector_ws)

    result = asyncio.run(scenario())
    stats = rig.gateway_stats()
    figures |= {**result.figures(), "dead_letters": stats.dead_letters}
    write_result(scenario_name, figures)
    assert result.exact, result
    assert result.truth_parts == load.machines * load.parts
    assert figures["flaps"] == flaps
    assert stats.dead_letters == 0
    return result, figures


def assert_no_storm(figures: dict[str, object], *, reconnect: bool) -> None:
    for link in ("collector_link", "gateway_link"):
        counts = figures[link]
        assert isinstance(counts, dict)
        assert counts["connections_per_flap"] <= MAX_HOLDING_CONNECTIONS_PER_FLAP, (link, counts)
        assert counts["attempts_per_flap"] <= MAX_ATTEMPTS_PER_FLAP, (link, counts)
        if reconnect:  # the flaps really broke the link, and it came back
            # Not "at least once per flap": the backoff's cap (5 s, full jitter) equals the up phase (5 s), so a
            # client may sleep through a whole up phase and reconnect in the next one (seen: 2 connections in 3
            # flaps). Nothing is lost meanwhile (checked by run_flaps); at least one reconnection must happen.
            assert counts["connections_per_flap"] * int(figures["flaps"]) >= 1, (link, counts)


def test_network_flapping_every_10_s_loses_nothing_without_a_reconnect_storm(
    tmp_path: Path, broker: ManagedProcess, influx: Influx, proxies: Callable[..., FaultProxy]
) -> None:
    _, figures = run_flaps(tmp_path, broker, influx, proxies, flaps=3, mode="reset", scenario_name="g_flaps")
    assert_no_storm(figures, reconnect=True)


@pytest.mark.faults_long
@pytest.mark.timeout(600, method="thread")
@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_long_flapping_for_two_minutes(
    tmp_path: Path, broker: ManagedProcess, influx: Influx, proxies: Callable[..., FaultProxy], mode: DownMode
) -> None:
    _, figures = run_flaps(tmp_path, broker, influx, proxies, flaps=12, mode=mode, scenario_name=f"g_flaps_long_{mode}")
    assert_no_storm(figures, reconnect=mode == "reset")

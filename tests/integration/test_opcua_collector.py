"""OPC UA machine tools → collector (subscriptions) → real mosquitto → gateway → real InfluxDB, against ground truth.

Two lathes and a mill on one simulated OPC 40501-1 server: parts, good and scrap counts are exact; cycle times
match the truth within 0.1 s. A server restart mid-run loses and duplicates nothing, and the collector is back
within 10 s. Security, and errors that concern one machine only, are checked against real servers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Server

from collectors.opcua import OpcUaSource
from collectors.runner import Collector
from copeau.config import Workshop
from copeau.errors import MachineError
from copeau.influxql import InfluxQuery
from copeau.services import ManagedProcess, free_port
from gateway.service import Gateway
from simulators.groundtruth import Truth, read_truth, truth_path
from simulators.opcua import OpcUaWorkshopSimulator, make_self_signed
from tests.conftest import Influx, make_workshop, wait_for

pytestmark = pytest.mark.integration

SAMPLING_MS = 50
SCENARIO = {"cycle_s": 0.5, "cycle_jitter_s": 0.1, "idle_s": 0.4, "parts": 8, "bad_every": 3}


def opcua_machine(machine_id: str, kind: str, url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "id": machine_id,
        "name": machine_id,
        "kind": kind,
        "protocol": "opcua",
        "url": url,
        "sampling_interval_ms": SAMPLING_MS,
        **overrides,
    }


@contextlib.asynccontextmanager
async def serving(sim: OpcUaWorkshopSimulator) -> AsyncIterator[asyncio.Task[None]]:
    await sim.prepare()  # builds the address space (2–3 s, blocking) before anything else runs
    task = asyncio.create_task(sim.run())
    try:
        await wait_for(sim.serving.is_set, timeout=20, what="the OPC UA simulator to listen")
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def collect(
    workshop: Workshop,
    sim: OpcUaWorkshopSimulator,
    *,
    check: Callable[[], Any],
    during: Callable[[Collector], Awaitable[None]] | None = None,
) -> Collector:
    """Run the scenario to its end with a collector and a gateway; once the broker holds every event, run `check`
    (in a thread) while the gateway is still storing them, then stop."""
    gateway = Gateway(workshop)
    gateway.start()
    collector = Collector(workshop)
    stop = asyncio.Event()
    try:
        async with serving(sim):
            task = asyncio.create_task(collector.run(stop))
            if during is not None:
                await during(collector)
            await wait_for(sim.finished.is_set, timeout=120, what="the scenarios to finish")
            views = collector.stats.views
            await wait_for(
                lambda: all(views[m.id].counter == sim.machines[m.id].counter for m in workshop.machines),
                timeout=15,
                what="the collector to see the final counters",
            )
            await wait_for(lambda: collector.outbox.depth() == 0, timeout=15, what="the outbox to drain")
            stop.set()
            await task
            await asyncio.to_thread(check)
    finally:
        gateway.stop()
    return collector


def check_parts_and_quality(workshop: Workshop) -> dict[str, Truth]:
    q = InfluxQuery(workshop.influxdb)
    truths = {m.id: read_truth(truth_path(workshop.state_dir, m.id)) for m in workshop.machines}
    expected = {m: (t.parts, t.good) for m, t in truths.items()}

    def stored() -> dict[str, tuple[int, int]]:
        rows = q.series('SELECT sum("count"), sum("good") FROM "part" GROUP BY "machine"')
        return {r["tags"]["machine"]: (int(r["values"][0][1]), int(r["values"][0][2])) for r in rows}

    deadline = time.monotonic() + 20  # the gateway's last batch may still be on its way
    while stored() != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored() == expected
    for t in truths.values():
        assert t.bad == t.parts - t.good > 0  # scrap = parts − good, and the scenario made some
    return truths


def measured_cycles(workshop: Workshop, machine: str) -> list[tuple[int, float]]:
    rows = InfluxQuery(workshop.influxdb).series(
        f'SELECT "started_ts", "duration_s" FROM "cycle" WHERE "machine" = \'{machine}\' AND "phase" = \'end\''
    )
    return [(int(started), float(duration)) for _, started, duration in rows[0]["values"]] if rows else []


def test_two_lathes_and_a_mill_counted_exactly(tmp_path: Path, broker: ManagedProcess, influx: Influx) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    machines = [
        opcua_machine("tour-1", "lathe", url, simulation={**SCENARIO, "seed": 1}),
        opcua_machine("tour-2", "lathe", url, browse_name="Tour 2", simulation={**SCENARIO, "seed": 2}),
        opcua_machine("fraiseuse-3", "mill", url, simulation={**SCENARIO, "seed": 3, "counter_start": 2**32 - 3}),
    ]
    workshop = make_workshop(
        tmp_path,
        mqtt_port=broker.port,
        influx_port=influx.process.port,
        database=influx.new_database("opc"),
        machines=machines,
    )
    sim = OpcUaWorkshopSimulator(list(workshop.machines), url=url, state_dir=tmp_path)  # type: ignore[arg-type]
    checked: list[dict[str, Truth]] = []
    asyncio.run(collect(workshop, sim, check=lambda: checked.append(check_parts_and_quality(workshop))))
    truths = checked[0]
    for m in workshop.machines:
        truth = [c for c in truths[m.id].cycles if c.completed]
        got = measured_cycles(workshop, m.id)
        assert len(got) == len(truth) == SCENARIO["parts"], m.id
        for (started, duration), expected in zip(got, truth, strict=True):
            assert abs(started - expected.start_ns) <= 100_000_000
            assert expected.duration_s is not None
            assert abs(duration - expected.duration_s) <= 0.1, (m.id, duration, expected)


def test_server_restart_mid_run_loses_nothing_and_reconnects_within_10_s(
    tmp_path: Path, broker: ManagedProcess, influx: Influx
) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    restart = {"server_restart_after": 3, "server_down_s": 3.0, "parts": 12}
    machines = [
        opcua_machine("tour-1", "lathe", url, simulation={**SCENARIO, "seed": 4, **restart}),
        opcua_machine("fraiseuse-2", "mill", url, simulation={**SCENARIO, "seed": 5, "parts": 12}),
    ]
    workshop = make_workshop(
        tmp_path,
        mqtt_port=broker.port,
        influx_port=influx.process.port,
        database=influx.new_database("opc"),
        machines=machines,
    )
    sim = OpcUaWorkshopSimulator(list(workshop.machines), url=url, state_dir=tmp_path)  # type: ignore[arg-type]
    checked: list[dict[str, Truth]] = []
    collector = asyncio.run(collect(workshop, sim, check=lambda: checked.append(check_parts_and_quality(workshop))))
    truths = checked[0]
    restarted = [r["ts"] for r in truths["tour-1"].records if r["event"] == "server_start"]
    stopped = [r["ts"] for r in truths["tour-1"].records if r["event"] == "server_stop"]
    assert len(restarted) == len(stopped) == 1
    for m in workshop.machines:
        source = collector._sources[m.id]
        assert isinstance(source, OpcUaSource)
        assert len(source.recovered_at_ns) == 1, m.id
        assert 0 <= (source.recovered_at_ns[0] - restarted[0]) / 1e9 <= 10.0, m.id
        # Parts made while the server was away came from the counter, and say so: at least those made between
        # the server's stop and start, at most those from just before the stop until the collector was back.
        rebuilt = (
            InfluxQuery(workshop.influxdb).scalar(
                f'SELECT sum("count") FROM "part" WHERE "machine" = \'{m.id}\' AND "rebuilt" = true'
            )
            or 0
        )
        parts = [r["ts"] for r in truths[m.id].records if r["event"] == "part"]
        down = sum(stopped[0] <= ts <= restarted[0] for ts in parts)
        around = sum(stopped[0] - 1e9 <= ts <= source.recovered_at_ns[0] for ts in parts)
        assert down >= 1  # the restart really happened during production
        assert down <= rebuilt <= around
        # Cycles made while the server was away cannot be seen; every other one is timed within 0.1 s.
        visible = [
            c
            for c in truths[m.id].cycles
            if c.completed
            and c.end_ns is not None
            and (c.end_ns < stopped[0] or c.start_ns > source.recovered_at_ns[0])
        ]
        got = dict(measured_cycles(workshop, m.id))
        assert len(visible) >= 6
        for cycle in visible:
            started = min(got, key=lambda s, c=cycle: abs(s - c.start_ns))
            assert abs(started - cycle.start_ns) <= 100_000_000, (m.id, cycle)
            assert abs(got[started] - (cycle.duration_s or 0)) <= 0.1, (m.id, cycle)


def test_encrypted_endpoint_connects_only_to_a_trusted_server(tmp_path: Path) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    server_cert, server_key = make_self_signed(tmp_path / "server", "simulator", "urn:copeau:test:simulator")
    client_cert, client_key = make_self_signed(tmp_path / "client", "collector", "urn:copeau:test:collector")
    trusted, untrusted = tmp_path / "trusted", tmp_path / "untrusted"
    trusted.mkdir()
    untrusted.mkdir()
    (trusted / "simulator.der").write_bytes(server_cert.read_bytes())
    stranger, _ = make_self_signed(tmp_path / "stranger", "stranger", "urn:copeau:test:stranger")
    (untrusted / "stranger.der").write_bytes(stranger.read_bytes())

    def machine(trust_dir: Path) -> Any:
        security = {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "username": "atelier",
            "password": {"env": "COPEAU_TEST_OPCUA_PASSWORD"},
            "certificate": str(client_cert),
            "private_key": str(client_key),
            "trust_dir": str(trust_dir),
        }
        return make_workshop(
            tmp_path,
            mqtt_port=1,
            machines=[opcua_machine("tour-1", "lathe", url, security=security, simulation={**SCENARIO, "seed": 9})],
        ).machines[0]

    sim = OpcUaWorkshopSimulator(
        [machine(trusted)],
        url=url,
        state_dir=tmp_path,
        certificate=server_cert,
        private_key=server_key,
        security="encrypted",
        users={"atelier": "s3cret"},
    )

    async def first_sample(source: OpcUaSource) -> Any:
        async for sample in source.samples():
            return sample
        return None

    async def scenario() -> tuple[Any, Any, MachineError | None]:
        async with serving(sim):
            good = await asyncio.wait_for(first_sample(OpcUaSource(machine(trusted))), 20)
            refused_source = OpcUaSource(machine(untrusted))
            refused = await asyncio.wait_for(first_sample(refused_source), 20)
            return good, refused, refused_source.last_error

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COPEAU_TEST_OPCUA_PASSWORD", "s3cret")
        good, refused, error = asyncio.run(scenario())
    assert good.available
    assert good.counter is not None
    assert not refused.available  # the first sample from an untrusted server is "offline", never data
    assert error is not None
    assert "certificat du serveur refusé" in str(error)
    assert "tour-1" in str(error)


def test_each_machine_fails_on_its_own_with_a_clear_error(
    tmp_path: Path, broker: ManagedProcess, influx: Influx
) -> None:
    good_url = f"opc.tcp://127.0.0.1:{free_port()}"
    bare_url = f"opc.tcp://127.0.0.1:{free_port()}"
    machines = [
        opcua_machine("tour-ok", "lathe", good_url, simulation={**SCENARIO, "seed": 6, "parts": 4}),
        opcua_machine("tour-absent", "lathe", f"opc.tcp://127.0.0.1:{free_port()}"),  # nothing listens there
        opcua_machine(
            "tour-noeud",
            "lathe",
            good_url,
            nodes={"parts": "ns=2;s=/Channel/State/actParts", "program_state": "ns=2;s=/Channel/State/progStatus"},
        ),
        opcua_machine("tour-nu", "lathe", bare_url),  # a server without the Machine Tools model
    ]
    workshop = make_workshop(
        tmp_path,
        mqtt_port=broker.port,
        influx_port=influx.process.port,
        database=influx.new_database("opc"),
        machines=machines,
    )
    sim = OpcUaWorkshopSimulator([workshop.machines[0]], url=good_url, state_dir=tmp_path)  # type: ignore[list-item]

    async def scenario() -> dict[str, str]:
        bare = Server()
        await bare.init()
        bare.set_endpoint(bare_url)
        async with bare:
            gateway = Gateway(workshop)
            gateway.start()
            collector = Collector(workshop)
            stop = asyncio.Event()
            try:
                async with serving(sim):
                    task = asyncio.create_task(collector.run(stop))
                    sources = {m.id: collector._sources[m.id] for m in workshop.machines}
                    failing = ("tour-absent", "tour-noeud", "tour-nu")
                    await wait_for(
                        lambda: all(sources[m].last_error for m in failing),  # type: ignore[union-attr]
                        timeout=30,
                        what="an error for each broken machine",
                    )
                    await wait_for(sim.finished.is_set, timeout=60, what="the good machine's scenario")
                    await wait_for(
                        lambda: collector.stats.views["tour-ok"].counter == sim.machines["tour-ok"].counter,
                        timeout=15,
                        what="the good machine's final counter",
                    )
                    errors = {m: str(sources[m].last_error) for m in failing}  # type: ignore[union-attr]
                    await wait_for(lambda: collector.outbox.depth() == 0, timeout=15, what="the outbox to drain")
                    stop.set()
                    await task
                    truth = read_truth(truth_path(tmp_path, "tour-ok"))
                    await wait_for(
                        lambda: (
                            InfluxQuery(workshop.influxdb).scalar(
                                'SELECT sum("count") FROM "part" WHERE "machine" = \'tour-ok\''
                            )
                            == truth.parts
                        ),
                        timeout=20,
                        what="the good machine's parts in InfluxDB",
                    )
            finally:
                gateway.stop()
        return errors

    errors = asyncio.run(scenario())
    assert "tour-absent" in errors["tour-absent"]
    assert "ns=2;s=/Channel/State/actParts" in errors["tour-noeud"]
    assert "http://opcfoundation.org/UA/Machinery/" in errors["tour-nu"]
    for m in ("tour-absent", "tour-noeud", "tour-nu"):  # each is seen offline, nothing else
        assert (
            InfluxQuery(workshop.influxdb).scalar(f'SELECT count("count") FROM "part" WHERE "machine" = \'{m}\'')
            is None
        )


def test_browse_command_prints_a_config_entry_that_works(tmp_path: Path) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    machines = [opcua_machine("tour-1", "lathe", url, browse_name="Tour 1", simulation={**SCENARIO, "seed": 1})]
    workshop = make_workshop(tmp_path, mqtt_port=1, machines=machines)
    sim = OpcUaWorkshopSimulator(list(workshop.machines), url=url, state_dir=tmp_path)  # type: ignore[arg-type]

    async def browse() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        async with serving(sim):
            found = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "copeau", "opcua-browse", url],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        nothing = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "copeau", "opcua-browse", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return found, nothing

    found, nothing = asyncio.run(browse())
    assert found.returncode == 0, found.stderr
    entries = yaml.safe_load(found.stdout)
    assert [(e["id"], e["browse_name"], e["kind"], e["url"]) for e in entries] == [("tour-1", "Tour 1", "lathe", url)]
    assert "PartsProducedInLifetime" in found.stdout
    make_workshop(tmp_path, mqtt_port=1, machines=entries)  # the printed entry is a valid configuration
    assert nothing.returncode == 1  # the server is gone: an error, not an empty list
    assert url in nothing.stderr


def test_a_server_that_refuses_subscriptions_is_polled(tmp_path: Path, broker: ManagedProcess, influx: Influx) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    machines = [opcua_machine("tour-1", "lathe", url, simulation={**SCENARIO, "seed": 8, "parts": 5})]
    workshop = make_workshop(
        tmp_path,
        mqtt_port=broker.port,
        influx_port=influx.process.port,
        database=influx.new_database("opc"),
        machines=machines,
    )
    sim = OpcUaWorkshopSimulator(
        list(workshop.machines),
        url=url,
        state_dir=tmp_path,  # type: ignore[arg-type]
        subscriptions=False,
    )
    checked: list[dict[str, Truth]] = []
    collector = asyncio.run(collect(workshop, sim, check=lambda: checked.append(check_parts_and_quality(workshop))))
    source = collector._sources["tour-1"]
    assert isinstance(source, OpcUaSource)
    assert source.polling  # the server said no: the collector polled, and the counts are still exact
    assert checked[0]["tour-1"].parts == 5

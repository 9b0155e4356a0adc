"""The OPC UA simulator, read by a real asyncua client, serves OPC 40501-1 machine tools and says what its ground
truth says.

The simulator stamps each change once, in whole microseconds: the SourceTimestamp of the values it writes is the
`ts` of its truth record. So the state changes a subscription sees are compared with the truth exactly, time
included, not "about right".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.common.subscription import DataChangeNotif
from asyncua.crypto.security_policies import SecurityPolicyAes128Sha256RsaOaep, SecurityPolicyBasic256Sha256
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from copeau.config import OpcUaMachine
from copeau.services import free_port
from simulators.groundtruth import Truth, read_truth, truth_path
from simulators.nodesets import DI, MACHINE_TOOL, MACHINERY, MODELS, nodeset_xml
from simulators.opcua import COPEAU_NAMESPACE, OpcUaWorkshopSimulator, make_self_signed

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Type ids fixed by the companion specifications (their namespace index is the server's).
MACHINE_TOOL_TYPE, CHANNEL_TYPE, SPINDLE_TYPE, JOB_TYPE, ALERT_TYPE = 13, 16, 22, 29, 39


def machine(
    machine_id: str, kind: str, port: int, *, browse_name: str | None = None, **simulation: Any
) -> OpcUaMachine:
    return OpcUaMachine.model_validate(
        {
            "id": machine_id,
            "name": machine_id,
            "kind": kind,
            "protocol": "opcua",
            "url": f"opc.tcp://{HOST}:{port}",
            "browse_name": browse_name,
            "sampling_interval_ms": 50,
            "simulation": {"cycle_s": 0.5, "cycle_jitter_s": 0.1, "idle_s": 0.3, "bad_every": 3, **simulation},
        }
    )


async def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` (a function, sync or async) until it returns a truthy value; fail naming `what`."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            # Polling: a truth file and a listening socket signal nothing that could be awaited instead.
            while True:
                last = condition()
                if inspect.isawaitable(last):
                    last = await last
                if last:
                    return last
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:.1f} s waiting for {what} (last value: {last!r})")


@contextlib.asynccontextmanager
async def simulating(sim: OpcUaWorkshopSimulator) -> AsyncIterator[None]:
    """Run the simulator in a task until it listens; cancel it at the end and surface any failure of its own."""
    task = asyncio.create_task(sim.run(), name="opcua-simulator-under-test")
    try:
        await wait_for(lambda: sim.serving.is_set() or task.done(), 30, "the simulator to listen")
        if task.done():
            task.result()
        yield
    finally:
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.result()


def ns_of(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1) * 1000


def events(path: Path) -> list[str]:
    return [r["event"] for r in read_truth(path).records]


def counter_at(truth: Truth, ts: int, start: int) -> int:
    """PartsProducedInLifetime as the truth says it was at `ts`."""
    counter = start
    for r in truth.records:
        if r["ts"] <= ts and r["event"] in ("part", "power_on"):
            counter = r["counter"]
    return counter


@dataclass(frozen=True)
class Namespaces:
    di: int
    machinery: int
    mt: int
    copeau: int

    @classmethod
    async def of(cls, client: Client) -> Namespaces:
        uris = await client.get_namespace_array()
        return cls(uris.index(DI), uris.index(MACHINERY), uris.index(MACHINE_TOOL), uris.index(COPEAU_NAMESPACE))

    def lifetime(self) -> list[str]:
        return [
            f"{self.mt}:Monitoring",
            f"{self.mt}:MachineTool",
            f"{self.di}:OperationCounters",
            f"{self.mt}:PartsProducedInLifetime",
        ]


async def derives_from(client: Client, type_id: ua.NodeId, base: ua.NodeId) -> bool:
    node = client.get_node(type_id)
    while node.nodeid != base:
        parents = await node.get_referenced_nodes(refs=ua.ObjectIds.HasSubtype, direction=ua.BrowseDirection.Inverse)
        if not parents:
            return False
        node = parents[0]
    return True


async def machines_by_type(client: Client, ns: Namespaces) -> dict[str, Node]:
    """The objects under Objects/Machines whose type is MachineToolType or a subtype, by browse name."""
    folder = await client.nodes.objects.get_child(f"{ns.machinery}:Machines")
    found = {}
    for child in await folder.get_children(nodeclassmask=ua.NodeClass.Object):
        if await derives_from(client, await child.read_type_definition(), ua.NodeId(MACHINE_TOOL_TYPE, ns.mt)):
            found[(await child.read_browse_name()).Name] = child
    return found


async def child_of_type(client: Client, parent: Node, type_id: ua.NodeId) -> Node:
    """The one child object of `parent` of that type: names left to the vendor are found by type."""
    matches = [
        child
        for child in await parent.get_children(nodeclassmask=ua.NodeClass.Object)
        if await derives_from(client, await child.read_type_definition(), type_id)
    ]
    assert len(matches) == 1, matches
    return matches[0]


Reading = tuple[int, dict[str, int], int]  # t0, PartsProducedInLifetime by machine, t1


class Recorder:
    """Data changes (DataValues, by node) and events, as a subscription delivers them."""

    def __init__(self) -> None:
        self.changes: dict[ua.NodeId, list[ua.DataValue]] = defaultdict(list)
        self.events: list[Any] = []

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        self.changes[node.nodeid].append(data.monitored_item.Value)

    def event_notification(self, event: Any) -> None:
        self.events.append(event)


def as_subscribed(seen: list[ua.DataValue], changes: list[tuple[Any, int]], initial: Any) -> list[tuple[Any, int]]:
    """What a subscription shows of `changes` (value, ts) in the truth: first the value current when it was made
    (the last write before it, or `initial`), then every later change of value. Rewriting the same value is not
    a change (the default trigger is StatusValue)."""
    first_ts = ns_of(seen[0].SourceTimestamp)
    before = [c for c in changes if c[1] <= first_ts]
    # Subscribed before the first change: the first value is the one the machine starts with, stamped earlier.
    shown = [before[-1] if before else (initial, first_ts)]
    for value, ts in changes:
        if ts > first_ts and value != shown[-1][0]:
            shown.append((value, ts))
    return shown


def observed(seen: list[ua.DataValue], value: Callable[[Any], Any] = lambda v: v) -> list[tuple[Any, int]]:
    return [(value(v.Value.Value), ns_of(v.SourceTimestamp)) for v in seen]


def test_the_nodesets_are_the_official_models_without_parentless_design_objects() -> None:
    uanodeset = "{http://opcfoundation.org/UA/2011/03/UANodeSet.xsd}"
    for uri in MODELS:
        root = ET.fromstring(nodeset_xml(uri))
        assert [m.get("ModelUri") for m in root.iter(f"{uanodeset}Model")] == [uri]
        orphans = [
            o.get("NodeId")
            for o in root.iter(f"{uanodeset}UAObject")
            if o.get("DesignToolOnly") == "true"
            and o.get("ParentNodeId") is None
            and not any(r.get("IsForward") == "false" for r in o.iter(f"{uanodeset}Reference"))
        ]
        assert orphans == [], uri  # asyncua's strict importer refuses them (FIELD-NOTES)
    assert nodeset_xml(DI) is nodeset_xml(DI)  # read once per process


def test_machines_are_found_by_type_and_follow_their_ground_truth(tmp_path: Path) -> None:
    port = free_port()
    url = f"opc.tcp://{HOST}:{port}"
    lathe = machine("tour-1", "lathe", port, seed=3, parts=5, alarm_every=2, alarm_s=0.4)
    # Past 2**32: PartsProducedInLifetime is a UInt64 (Statistics' UInt32 copy wraps); the power cut keeps counters.
    mill = machine(
        "fraiseuse-1",
        "mill",
        port,
        seed=4,
        parts=5,
        counter_start=2**32 - 2,
        power_cycle_after=2,
        power_off_s=0.5,
        browse_name="Fraiseuse 1",
    )
    sim = OpcUaWorkshopSimulator([lathe, mill], url=url, state_dir=tmp_path)
    machines = {"tour-1": lathe, "Fraiseuse 1": mill}  # by browse name
    recorder = Recorder()

    async def scenario() -> tuple[dict[str, dict[str, Node]], dict[str, dict[str, Any]]]:
        async with simulating(sim), Client(url) as client:
            ns = await Namespaces.of(client)
            found = await machines_by_type(client, ns)
            assert set(found) == set(machines)
            assert found["tour-1"].nodeid == ua.NodeId("tour-1", ns.copeau)  # the documented node id scheme
            nodes = {name: await machine_nodes(client, ns, m) for name, m in found.items()}
            subscription = await client.create_subscription(50, recorder)
            for watched in nodes.values():
                changing = [watched["program"], watched["item"], watched["part_quality"], watched["operation_mode"]]
                await subscription.subscribe_data_change(changing, queuesize=100)
                await subscription.subscribe_events(watched["messages"], ua.NodeId(ALERT_TYPE, ns.mt), queuesize=100)
            async with asyncio.timeout(30):
                await sim.finished.wait()
            # The last notifications may still be on their way: the last cycle's end, then Manual once it is over.
            for name, watched in nodes.items():
                end = read_truth(truth_path(tmp_path, machines[name].id)).cycles[-1].end_ns
                for key in ("program", "item", "part_quality"):
                    got = recorder.changes[watched[key].nodeid]
                    await wait_for(lambda v=got, e=end: ns_of(v[-1].SourceTimestamp) == e, 10, f"{name}'s last {key}")
                modes = recorder.changes[watched["operation_mode"].nodeid]
                await wait_for(lambda v=modes: v[-1].Value.Value == 0, 10, f"{name} in Manual mode")
            alarm_records = sum(
                r["event"].startswith("alarm_") for r in read_truth(truth_path(tmp_path, "tour-1")).records
            )
            await wait_for(lambda: len(recorder.events) == alarm_records, 10, "the alarm events")
            return nodes, {name: await read_machine(client, ns, watched) for name, watched in nodes.items()}

    nodes, seen = asyncio.run(scenario())
    for name, m in machines.items():
        truth = read_truth(truth_path(tmp_path, m.id))
        assert m.simulation is not None
        parts = [r for r in truth.records if r["event"] == "part"]
        assert truth.parts == 5 == len(truth.cycles) and all(c.completed for c in truth.cycles)
        assert [r["good"] for r in parts] == [True, True, False, True, True]  # every 3rd part is scrap
        assert (truth.good, truth.bad) == (4, 1)
        values = seen[name]
        assert values["lifetime"] == parts[-1]["counter"] == m.simulation.counter_start + 5
        assert values["statistics"] == values["lifetime"] % 2**32
        assert values["parts_completed"] == values["runs_completed"] == truth.parts
        assert values["parts_good"] == truth.good
        assert values["identification"] == ("Copeau simulator", m.id, m.kind.value)
        assert values["job_state"] == "Ended"
        assert values["operation_mode"] == 0  # Manual: production is over
        assert values["channel_state"] == 2  # Reset: idle
        assert values["is_rotating"] is False
        assert values["spindle_speed_node"] == f"{m.id}.Monitoring.Spindle1.SpindleSpeed"

        # One Running (1) → Ended (2) per cycle, stamped as the truth stamps the cycle.
        program = recorder.changes[nodes[name]["program"].nodeid]
        cycles = [step for c in truth.cycles for step in ((1, c.start_ns), (2, c.end_ns))]
        assert observed(program) == as_subscribed(program, cycles, initial=0)  # 0: Initializing
        assert len(program) >= len(cycles) - 1, "subscribed before the first cycle ended"
        # Each part is NotYetMeasured (3) while it is cut, then Good (1) or Bad (2).
        quality = recorder.changes[nodes[name]["part_quality"].nodeid]
        qualities = [
            (3 if r["event"] == "cycle_start" else 1 if r["good"] else 2, r["ts"])
            for r in truth.records
            if r["event"] in ("cycle_start", "part")
        ]
        assert observed(quality) == as_subscribed(quality, qualities, initial=3)
        # MachineryItemState follows cycles, alarms and the power cut.
        expected_item = {
            "cycle_start": "Executing",
            "cycle_end": "NotExecuting",
            "alarm_on": "OutOfService",
            "alarm_off": "NotExecuting",
            "power_off": "NotAvailable",
            "power_on": "NotExecuting",
        }
        item = recorder.changes[nodes[name]["item"].nodeid]
        states = [(expected_item[r["event"]], r["ts"]) for r in truth.records if r["event"] in expected_item]
        assert observed(item, lambda text: text.Text) == as_subscribed(item, states, initial="NotExecuting")

    lathe_truth = read_truth(truth_path(tmp_path, lathe.id))
    assert lathe_truth.alarms == 2  # after parts 2 and 4
    alarms = [(getattr(e, "ActiveState/Id"), ns_of(e.Time), e.SourceNode) for e in recorder.events]
    assert alarms == [
        (r["event"] == "alarm_on", r["ts"], nodes["tour-1"]["root"].nodeid)
        for r in lathe_truth.records
        if r["event"] in ("alarm_on", "alarm_off")
    ]
    # OperationMode: Automatic (1) while producing; during the power cut it has no value for "off" and turns Bad;
    # Manual (0) once production is over (a change the truth does not record).
    for name, cut in (("tour-1", []), ("Fraiseuse 1", ["power_off", "power_on"])):
        modes = recorder.changes[nodes[name]["operation_mode"].nodeid]
        shown = [v.StatusCode.name if v.StatusCode.is_bad() else v.Value.Value for v in modes]
        assert shown == [1, *(["BadOutOfService", 1] if cut else []), 0]
        truth_ts = [r["ts"] for r in read_truth(truth_path(tmp_path, machines[name].id)).records if r["event"] in cut]
        assert [ns_of(v.SourceTimestamp) for v in modes[1:-1]] == truth_ts
    mill_truth = read_truth(truth_path(tmp_path, mill.id))
    power = [
        (r["event"], r.get("counter")) for r in mill_truth.records if r["event"] in ("part", "power_off", "power_on")
    ]
    assert power[2:5] == [("power_off", None), ("power_on", 2**32), ("part", 2**32 + 1)]  # the counter is kept


async def machine_nodes(client: Client, ns: Namespaces, m: Node) -> dict[str, Node]:
    """The nodes a collector watches, found by browse path, or by type where the vendor names them."""
    mt = ns.mt
    job = await child_of_type(
        client, await m.get_child([f"{mt}:Production", f"{mt}:ProductionPlan"]), ua.NodeId(JOB_TYPE, mt)
    )
    [part_set] = await (await job.get_child(f"{mt}:PartSets")).get_children(nodeclassmask=ua.NodeClass.Object)
    [part] = await (await part_set.get_child(f"{mt}:PartsPerRun")).get_children(nodeclassmask=ua.NodeClass.Object)
    program = [f"{mt}:Production", f"{mt}:ActiveProgram", f"{mt}:State", "0:CurrentState", "0:Number"]
    item = [f"{mt}:Monitoring", f"{mt}:MachineTool", f"{ns.machinery}:MachineryItemState", "0:CurrentState"]
    return {
        "root": m,
        "job": job,
        "part_quality": await part.get_child(f"{mt}:PartQuality"),
        "program": await m.get_child(program),
        "item": await m.get_child(item),
        "operation_mode": await m.get_child([f"{mt}:Monitoring", f"{mt}:MachineTool", f"{mt}:OperationMode"]),
        "messages": await m.get_child([f"{mt}:Notification", f"{mt}:Messages"]),
    }


async def read_machine(client: Client, ns: Namespaces, nodes: dict[str, Node]) -> dict[str, Any]:
    """What a collector would read at the end, each value found by browse path or by type."""
    mt, m, job = ns.mt, nodes["root"], nodes["job"]

    async def value(node: Node, *path: str) -> Any:
        return await (await node.get_child(list(path))).read_value()

    monitoring = await m.get_child(f"{mt}:Monitoring")
    channel = await child_of_type(client, monitoring, ua.NodeId(CHANNEL_TYPE, mt))
    spindle = await child_of_type(client, monitoring, ua.NodeId(SPINDLE_TYPE, mt))
    lifetime = await (await m.get_child(ns.lifetime())).read_data_value()
    assert lifetime.Value.VariantType == ua.VariantType.UInt64
    return {
        "lifetime": lifetime.Value.Value,
        "statistics": await value(m, f"{mt}:Production", f"{mt}:Statistics", f"{mt}:PartsProducedInLifetime"),
        "parts_completed": await value(job, f"{mt}:PartsCompleted"),
        "parts_good": await value(job, f"{mt}:PartsGood"),
        "runs_completed": await value(job, f"{mt}:RunsCompleted"),
        "job_state": (await value(job, f"{mt}:State", "0:CurrentState")).Text,
        "identification": (
            (await value(m, f"{ns.di}:Identification", f"{ns.di}:Manufacturer")).Text,
            await value(m, f"{ns.di}:Identification", f"{ns.di}:SerialNumber"),
            (await value(m, f"{ns.di}:Identification", f"{ns.di}:Model")).Text,
        ),
        "operation_mode": await value(monitoring, f"{mt}:MachineTool", f"{mt}:OperationMode"),
        "channel_state": await value(channel, f"{mt}:ChannelState"),
        "is_rotating": await value(spindle, f"{mt}:IsRotating"),
        "spindle_speed_node": (await spindle.get_child(f"{ns.copeau}:SpindleSpeed")).nodeid.Identifier,
    }


def test_a_server_restart_drops_sessions_while_machines_keep_producing(tmp_path: Path) -> None:
    port = free_port()
    url = f"opc.tcp://{HOST}:{port}"
    lathe = machine("tour-1", "lathe", port, seed=5, parts=6, server_restart_after=2, server_down_s=1.5)
    mill = machine("fraiseuse-1", "mill", port, seed=6, parts=6)
    sim = OpcUaWorkshopSimulator([lathe, mill], url=url, state_dir=tmp_path)
    paths = {m.id: truth_path(tmp_path, m.id) for m in (lathe, mill)}

    async def read_lifetimes(client: Client, node_ids: dict[str, ua.NodeId]) -> Reading:
        t0 = time.time_ns()
        values = {name: await client.get_node(node_id).read_value() for name, node_id in node_ids.items()}
        return t0, values, time.time_ns()

    async def scenario() -> tuple[Reading, Reading]:
        async with simulating(sim):
            before = Client(url, timeout=2)
            await before.connect()
            try:
                ns = await Namespaces.of(before)
                found = await machines_by_type(before, ns)
                node_ids = {name: (await m.get_child(ns.lifetime())).nodeid for name, m in found.items()}
                reader, writer = await asyncio.open_connection(HOST, port)  # a connection open before the restart
                try:
                    await wait_for(lambda: "server_stop" in events(paths[lathe.id]), 20, "the server to stop")
                    async with asyncio.timeout(2):
                        assert await reader.read() == b"", "the open connection is dropped by the restart"
                    with pytest.raises(ConnectionRefusedError):
                        await asyncio.open_connection(HOST, port)
                    with pytest.raises(ConnectionError):  # the session went with the connection
                        await before.get_node(node_ids["tour-1"]).read_value()
                    assert "server_start" not in events(paths[lathe.id]), "the server was down for these checks"
                finally:
                    writer.close()
                    await writer.wait_closed()
            finally:
                # Closing the session may fail on a connection that is gone; that is the point of the test.
                with contextlib.suppress(ConnectionError, ua.UaError):
                    await before.disconnect()
            await wait_for(sim.restarted.is_set, 20, "the server to come back")
            async with Client(url) as after:
                ns_after = await Namespaces.of(after)
                assert ns_after == ns
                # Found again by type and browse path: the same node ids, so a collector's ids stay valid.
                found = await machines_by_type(after, ns_after)
                assert {name: (await m.get_child(ns.lifetime())).nodeid for name, m in found.items()} == node_ids
                reading = await read_lifetimes(after, node_ids)
                async with asyncio.timeout(30):
                    await sim.finished.wait()
                final = await read_lifetimes(after, node_ids)
        return reading, final

    reading, final = asyncio.run(scenario())
    for m in (lathe, mill):
        truth = read_truth(paths[m.id])
        kinds = [r["event"] for r in truth.records]
        assert kinds.count("server_stop") == kinds.count("server_start") == 1, "recorded for every machine"
        stop = next(r["ts"] for r in truth.records if r["event"] == "server_stop")
        start = next(r["ts"] for r in truth.records if r["event"] == "server_start")
        made_while_down = [r for r in truth.records if r["event"] == "part" and stop < r["ts"] < start]
        assert made_while_down, f"{m.id} kept producing while the server was down"
        t0, values, t1 = reading
        assert values[m.id] in {counter_at(truth, t0, 0), counter_at(truth, t1, 0)}
        assert values[m.id] >= made_while_down[-1]["counter"]
        assert final[1][m.id] == truth.parts == 6
    lathe_truth = read_truth(paths[lathe.id])
    restart_after = next(i for i, r in enumerate(lathe_truth.records) if r["event"] == "server_stop")
    assert sum(r["event"] == "part" for r in lathe_truth.records[:restart_after]) == 2  # right after part 2


def test_encrypted_endpoint_needs_a_trusted_server_and_a_password(tmp_path: Path) -> None:
    port = free_port()
    url = f"opc.tcp://{HOST}:{port}"
    server_cert, server_key = make_self_signed(tmp_path / "server", "copeau-simulator", "urn:copeau:test:simulator")
    client_cert, client_key = make_self_signed(tmp_path / "client", "collector", "urn:copeau:test:collector")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "simulator.der").write_bytes(server_cert.read_bytes())
    stranger = tmp_path / "stranger"  # trusts only a certificate that is not the server's
    make_self_signed(stranger, "someone-else", "urn:copeau:test:someone-else")
    (stranger / "someone-else-key.pem").unlink()  # a trust list holds certificates only
    m = machine("tour-1", "lathe", port, seed=7, parts=1)
    sim = OpcUaWorkshopSimulator(
        [m],
        url=url,
        state_dir=tmp_path,
        certificate=server_cert,
        private_key=server_key,
        security="encrypted",
        users={"atelier": "copeau-test"},
    )

    async def client(
        trust_dir: Path, *, password: str = "copeau-test", policy: type = SecurityPolicyBasic256Sha256
    ) -> Client:
        c = Client(url, timeout=4)
        c.application_uri = "urn:copeau:test:collector"  # as in the client's certificate
        c.set_user("atelier")
        c.set_password(password)
        await c.set_security(policy, str(client_cert), str(client_key), server_certificate=str(server_cert))
        store = TrustStore([trust_dir], [])
        await store.load()
        c.certificate_validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER, store
        )
        return c

    async def scenario() -> None:
        async with simulating(sim):
            endpoints = await Client(url).connect_and_get_server_endpoints()
            assert {(e.SecurityPolicyUri.rsplit("#")[-1], e.SecurityMode) for e in endpoints} == {
                ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt),
                ("Aes128_Sha256_RsaOaep", ua.MessageSecurityMode.SignAndEncrypt),
            }
            assert {t.TokenType for e in endpoints for t in e.UserIdentityTokens} == {ua.UserTokenType.UserName}
            for policy in (SecurityPolicyBasic256Sha256, SecurityPolicyAes128Sha256RsaOaep):
                async with await client(trusted, policy=policy) as c:
                    ns = await Namespaces.of(c)
                    [found] = (await machines_by_type(c, ns)).values()
                    serial = await found.get_child([f"{ns.di}:Identification", f"{ns.di}:SerialNumber"])
                    assert await serial.read_value() == "tour-1"
            with pytest.raises(ua.UaStatusCodeError) as untrusted:
                async with await client(stranger):
                    pass
            assert untrusted.value.code == ua.StatusCodes.BadCertificateUntrusted
            with pytest.raises(ua.UaStatusCodeError) as refused:
                async with await client(trusted, password="wrong"):
                    pass
            assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
            with pytest.raises(ua.UaError, match="No matching endpoints"):  # none without encryption
                async with Client(url, timeout=2):
                    pass
            # A client may still open an unencrypted channel (to ask for the endpoints) and make a session on it,
            # asyncua's server allows that; the simulator refuses to activate it with a password sent in clear.
            rogue = Client(url, timeout=2)
            await rogue.connect_socket()
            try:
                await rogue.send_hello()
                await rogue.open_secure_channel()
                with pytest.raises(ua.UaError, match="No matching endpoints"):
                    await rogue.create_session()  # the session exists on the server; the client is told no endpoint
                with pytest.raises(ua.UaStatusCodeError) as in_clear:
                    await rogue.activate_session("atelier", "copeau-test")
                assert in_clear.value.code == ua.StatusCodes.BadUserAccessDenied
            finally:
                rogue.disconnect_socket()

    asyncio.run(scenario())

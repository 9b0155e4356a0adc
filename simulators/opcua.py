"""OPC UA for Machine Tools (OPC 40501-1 v1.02): one asyncua server that serves several simulated machine tools.

Theory of operation
-------------------
- The address space is built from the official NodeSets (`nodesets.py`). Each machine is a `MachineToolType`
  object under Objects/Machines, made with its mandatory parts, plus the optional parts a collector reads (the
  MachineryItemState machine, the operation counters, a channel, a spindle, a job, statistics, messages). Each
  optional part is added as its type declares it: browse name, data type and type definition come from the NodeSet.
- Instance node ids are strings in the Copeau namespace, made of the machine id and the browse path:
  ``ns=<copeau>;s=tour-1.Monitoring.MachineTool.OperationMode`` (see `instance_node_id`). They do not change when
  the server restarts. Names the standard leaves to the vendor (the channel, the spindle, the job...) and the
  vendor variable ``SpindleSpeed`` are in the Copeau namespace too.
- Each machine keeps what it shows (every variable's DataValue) in memory, plays `plan(machine.simulation)` in its
  own task (the same steps as the Modbus simulator) and writes each change into the address space while the server
  is up. A server restart brings up a second server, built beforehand (building one blocks the event loop for
  seconds), so sessions and subscriptions are gone as on a real control; the machines keep producing while it is
  down, and the new address space is filled from their memory before it listens.
- Each change is stamped once: that instant is the SourceTimestamp of the values written and the `ts` of the
  ground-truth record. It is whole microseconds, the finest time both an OPC UA DateTime in asyncua and the truth
  can hold, so a collector that uses SourceTimestamp can be compared with the truth exactly.
- What the scenario's steps look like: a cycle is ActiveProgram Running → Ended, MachineryItemState Executing →
  NotExecuting, ChannelState Active → Reset, the spindle turning, then the counters and the part's quality; an alarm
  is MachineryItemState OutOfService, ChannelState Interrupted and an AlertType event raised, then cleared; a power
  cut ("the machine is switched off", the server stays up) is MachineryItemState NotAvailable and OperationMode
  Bad_OutOfService, counters kept. OperationMode is Automatic while producing, Manual once production is over.

Not modelled: the program goes Ended → Running directly (the type's transitions go through Initializing); the
scenario puts alarms between cycles, so a program is never Interrupted or Aborted; no transition events (their types
are abstract and deprecated in 1.02); one part per run; no tools, no prognoses.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from asyncua import Node, Server, ua
from asyncua.common.copy_node_util import copy_node
from asyncua.crypto.cert_gen import generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.event_generator import EventGenerator
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

from copeau.config import OpcUaMachine, SecurityMode, SecurityPolicy
from copeau.errors import ServiceError
from copeau.i18n import t
from simulators.groundtruth import GroundTruthWriter, truth_path
from simulators.nodesets import MACHINE_TOOL, MACHINERY, import_machine_tool_models
from simulators.scenario import Step, plan

COPEAU_NAMESPACE = "urn:copeau:opcua-simulator"

Security = Literal["none", "encrypted", "both"]

# What each `security` choice offers. Only SignAndEncrypt: a channel that is only signed shows the machine's data
# to anyone on the network.
_ENCRYPTED = [
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
]
_POLICIES: dict[str, list[ua.SecurityPolicyType]] = {
    "none": [ua.SecurityPolicyType.NoSecurity],
    "encrypted": _ENCRYPTED,
    "both": [ua.SecurityPolicyType.NoSecurity, *_ENCRYPTED],
}
# asyncua offers the same user tokens on every endpoint: with "both", anonymous is accepted on the encrypted
# endpoints too. A user name is accepted on an encrypted channel only (see _Users).
_TOKENS: dict[str, list[type]] = {
    "none": [ua.AnonymousIdentityToken],
    "encrypted": [ua.UserNameIdentityToken],
    "both": [ua.AnonymousIdentityToken, ua.UserNameIdentityToken],
}

# Type NodeIds are fixed by the companion specifications; only their namespace index is the server's choice.
_MACHINES_FOLDER = 1001  # Machinery: Objects/Machines
_ITEM_STATE_MACHINE = 1002  # Machinery: MachineryItemState_StateMachineType
_MACHINE_TOOL_TYPE = 13
_OPERATION_MONITORING_TYPE = 26
_CHANNEL_MONITORING_TYPE = 16
_SPINDLE_MONITORING_TYPE = 22
_IDENTIFICATION_TYPE = 11
_NOTIFICATION_TYPE = 7
_PRODUCTION_TYPE = 21
_STATISTICS_TYPE = 20
_JOB_TYPE = 29
_PROGRAM_TYPE = 59
_PART_SET_TYPE = 34
_PART_TYPE = 56
_PROGRAM_STATE_MACHINE = 15
_JOB_STATE_MACHINE = 28
_ALERT_TYPE = 39


class OperationMode(IntEnum):
    """MachineTool `MachineOperationMode` (the values the simulator uses)."""

    MANUAL = 0
    AUTOMATIC = 1


class ChannelState(IntEnum):
    """MachineTool `ChannelState`."""

    ACTIVE = 0
    INTERRUPTED = 1
    RESET = 2


class PartQuality(IntEnum):
    """MachineTool `PartQuality` (the values the simulator uses)."""

    GOOD = 1
    BAD = 2
    NOT_YET_MEASURED = 3


_CHANNEL_MODE_AUTOMATIC = 0  # MachineTool ChannelMode
_IRREGULARITY_NOT_MEASURED = 0  # MachineTool ProcessIrregularity: CapabilityUnavailable
_SPINDLE_RPM = {"lathe": 1800.0, "mill": 9000.0}  # a plausible speed while cutting, for the vendor variable

# Where things are, as browse names relative to the machine ("/"-separated, without namespaces).
OPERATION_MODE = "Monitoring/MachineTool/OperationMode"
ITEM_STATE = "Monitoring/MachineTool/MachineryItemState/CurrentState"
PARTS_IN_LIFETIME = "Monitoring/MachineTool/OperationCounters/PartsProducedInLifetime"
POWER_ON_DURATION = "Monitoring/MachineTool/OperationCounters/PowerOnDuration"
CHANNEL = "Monitoring/Channel1"
SPINDLE = "Monitoring/Spindle1"
PROGRAM_STATE = "Production/ActiveProgram/State/CurrentState"
STATISTICS_PARTS = "Production/Statistics/PartsProducedInLifetime"
JOB = "Production/ProductionPlan/Job1"
PART = f"{JOB}/PartSets/PartSet1/PartsPerRun/Part1"
MESSAGES = "Notification/Messages"


def instance_node_id(machine_id: str, path: str, namespace_index: int) -> ua.NodeId:
    """The NodeId of the node at browse path `path` (e.g. "Monitoring/MachineTool/OperationMode", "" for the
    machine itself) of machine `machine_id`: ``ns=<copeau>;s=<machine id>.Monitoring.MachineTool.OperationMode``.

    asyncua names the children of a node with a string id ``<parent id>.<browse name>``; the simulator follows
    the same rule for the parts it adds, so every id follows from the path. Machine ids are slugs (no dots)."""
    return ua.NodeId(".".join([machine_id, *path.split("/")]) if path else machine_id, namespace_index)


def _stamp(clock_ns: Callable[[], int]) -> int:
    """Now, in whole microseconds (as ns since the epoch)."""
    return clock_ns() // 1000 * 1000


def _as_datetime(ts_ns: int) -> datetime:
    # Exact: no float on the way (a float of ns since the epoch cannot hold every microsecond).
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_ns // 1000)


@dataclass(frozen=True)
class _State:
    """A state of a finite state machine type: the values its CurrentState shows."""

    name: str
    node_id: ua.NodeId
    number: int | None


# The state machines the simulator drives: (model, type id), and whether its CurrentState has a Number.
_STATE_MACHINES: dict[str, tuple[str, int, bool]] = {
    "item": (MACHINERY, _ITEM_STATE_MACHINE, False),
    "program": (MACHINE_TOOL, _PROGRAM_STATE_MACHINE, True),
    "job": (MACHINE_TOOL, _JOB_STATE_MACHINE, True),
}


@dataclass
class _AddressSpace:
    """One asyncua server and its machines. Built at start, and built again after a restart."""

    server: Server
    namespaces: dict[str, int]  # model URI → namespace index, COPEAU_NAMESPACE included
    states: dict[str, dict[str, _State]]  # state machine → state name → state
    alarms: dict[str, EventGenerator]  # machine id → its Messages' alert events
    clock: asyncio.Task[None] | None = None  # keeps ServerStatus/CurrentTime current while the server listens

    @property
    def copeau(self) -> int:
        return self.namespaces[COPEAU_NAMESPACE]

    def node(self, machine_id: str, path: str) -> Node:
        return self.server.get_node(instance_node_id(machine_id, path, self.copeau))

    async def write(self, machine_id: str, path: str, value: ua.DataValue) -> None:
        # Through the internal session: a value of the wrong type is refused with an error, not dropped.
        await self.node(machine_id, path).write_value(value)

    async def alarm(self, machine_id: str, *, active: bool, ts: int) -> None:
        """Raise or clear the machine's alarm: an AlertType event from its Messages object."""
        generator = self.alarms[machine_id]
        event = generator.event
        event.ActiveState = ua.LocalizedText("Active" if active else "Inactive")
        setattr(event, "ActiveState/Id", active)
        # Retain: a client that calls ConditionRefresh is told about an alarm that is still active.
        event.Retain = active
        event.Severity = 700 if active else 100
        message = "Alarme machine (simulée)" if active else "Alarme terminée (simulée)"
        await generator.trigger(time_attr=_as_datetime(ts), message=message)


class _Builder:
    """Makes the nodes of the machines in a fresh server (before it starts)."""

    def __init__(self, server: Server, namespaces: dict[str, int]) -> None:
        self.server = server
        self.namespaces = namespaces
        self.copeau = namespaces[COPEAU_NAMESPACE]
        self._declarations: dict[tuple[ua.NodeId, str], ua.ReferenceDescription] = {}

    def type_id(self, model: str, identifier: int) -> ua.NodeId:
        return ua.NodeId(identifier, self.namespaces[model])

    def mt(self, identifier: int) -> ua.NodeId:
        return self.type_id(MACHINE_TOOL, identifier)

    async def machine(self, machine: OpcUaMachine) -> None:
        """Make one machine tool under Objects/Machines, with every node the simulator writes."""
        mid = machine.id
        folder = self.server.get_node(self.type_id(MACHINERY, _MACHINES_FOLDER))
        await self._object(
            folder, instance_node_id(mid, "", self.copeau), machine.browse_name or mid, self.mt(_MACHINE_TOOL_TYPE)
        )
        await self.declared(mid, "Identification", self.mt(_IDENTIFICATION_TYPE), "Model")
        monitoring = self.mt(_OPERATION_MONITORING_TYPE)
        await self.declared(mid, "Monitoring/MachineTool", monitoring, "MachineryItemState")
        await self.declared(mid, "Monitoring/MachineTool", monitoring, "OperationCounters")
        # The MachineTool model adds PartsProducedInLifetime (UInt64) to the Machinery operation counters: it is
        # declared on the OperationCounters of MachineOperationMonitoringType, not on the counters' own type.
        await self.declared(
            mid, "Monitoring/MachineTool/OperationCounters", monitoring, "OperationCounters/PartsProducedInLifetime"
        )
        await self.vendor_object(mid, CHANNEL, self.mt(_CHANNEL_MONITORING_TYPE))
        await self.vendor_object(mid, SPINDLE, self.mt(_SPINDLE_MONITORING_TYPE))
        await self.declared(mid, SPINDLE, self.mt(_SPINDLE_MONITORING_TYPE), "Override")
        speed = self.server.get_node(instance_node_id(mid, SPINDLE, self.copeau))
        await speed.add_variable(
            instance_node_id(mid, f"{SPINDLE}/SpindleSpeed", self.copeau),
            ua.QualifiedName("SpindleSpeed", self.copeau),
            0.0,
            ua.VariantType.Double,
        )
        production = self.mt(_PRODUCTION_TYPE)
        await self.declared(mid, "Production", production, "ProductionPlan")
        await self.declared(mid, "Production", production, "Statistics")
        await self.declared(mid, "Production/Statistics", self.mt(_STATISTICS_TYPE), "PartsProducedInLifetime")
        job = self.mt(_JOB_TYPE)
        await self.vendor_object(mid, JOB, job)
        for name in ("PartsCompleted", "PartsGood", "PartSets"):
            await self.declared(mid, JOB, job, name)
        await self.vendor_object(mid, f"{JOB}/ProductionPrograms/Program1", self.mt(_PROGRAM_TYPE))
        part_set = f"{JOB}/PartSets/PartSet1"
        await self.vendor_object(mid, part_set, self.mt(_PART_SET_TYPE))
        await self.declared(mid, part_set, self.mt(_PART_SET_TYPE), "PartsPerRun")
        await self.vendor_object(mid, PART, self.mt(_PART_TYPE))
        await self.declared(mid, "Notification", self.mt(_NOTIFICATION_TYPE), "Messages")

    async def _object(self, parent: Node, node_id: ua.NodeId, name: str | ua.QualifiedName, type_id: ua.NodeId) -> None:
        bname = name if isinstance(name, ua.QualifiedName) else ua.QualifiedName(name, self.copeau)
        node = await parent.add_object(node_id, bname, objecttype=type_id, instantiate_optional=False)
        await self._drop_placeholders(node)

    async def _drop_placeholders(self, node: Node) -> None:
        """asyncua makes a MandatoryPlaceholder such as ``<OrderedObject>`` as a node of that very name; the
        placeholder stands for nodes the vendor names, so it is removed (the simulator adds its own)."""
        for child in await node.get_children():
            name = (await child.read_browse_name()).Name
            if name.startswith("<") and name.endswith(">"):
                await self.server.delete_nodes([child], recursive=True)
            else:
                await self._drop_placeholders(child)

    async def vendor_object(self, machine_id: str, path: str, type_id: ua.NodeId) -> None:
        """An object whose browse name the standard leaves to the vendor (a placeholder): Copeau namespace."""
        parent_path, _, name = path.rpartition("/")
        parent = self.server.get_node(instance_node_id(machine_id, parent_path, self.copeau))
        await self._object(parent, instance_node_id(machine_id, path, self.copeau), name, type_id)

    async def declared(self, machine_id: str, parent_path: str, type_id: ua.NodeId, declaration: str) -> None:
        """Add to the node at `parent_path` the optional child that `type_id` declares at `declaration` (a browse
        path in the type, e.g. "OperationCounters/PartsProducedInLifetime"), as the type declares it."""
        await self._from_declaration(machine_id, parent_path, await self._declaration(type_id, declaration))

    async def _from_declaration(self, machine_id: str, parent_path: str, desc: ua.ReferenceDescription) -> None:
        """Make a node from its instance declaration: its attributes (data type, access level...) and type
        definition from the declaration, then its mandatory children, those of the declaration first (it may
        make an optional child of its type mandatory, or add one), then those of its type."""
        path = f"{parent_path}/{desc.BrowseName.Name}"
        parent = self.server.get_node(instance_node_id(machine_id, parent_path, self.copeau))
        node_id = instance_node_id(machine_id, path, self.copeau)
        declaration = self.server.get_node(desc.NodeId)
        if desc.TypeDefinition == ua.NodeId(ua.ObjectIds.PropertyType):
            # copy_node would link a property with HasComponent; a property needs HasProperty.
            await parent.add_property(node_id, desc.BrowseName, None, datatype=await declaration.read_data_type())
        else:
            await copy_node(parent, declaration, node_id, recursive=False)
        seen: set[str] = set()
        for source in [declaration, *await self._type_and_supertypes(self.server.get_node(desc.TypeDefinition))]:
            for child in await source.get_children_descriptions():
                name = child.BrowseName.Name
                if name in seen or child.NodeClass not in (ua.NodeClass.Object, ua.NodeClass.Variable):
                    continue
                seen.add(name)
                rules = await self.server.get_node(child.NodeId).get_referenced_nodes(
                    refs=ua.ObjectIds.HasModellingRule
                )
                if rules and rules[0].nodeid == ua.NodeId(ua.ObjectIds.ModellingRule_Mandatory):
                    await self._from_declaration(machine_id, path, child)

    async def _declaration(self, type_id: ua.NodeId, path: str) -> ua.ReferenceDescription:
        """The instance declaration at `path` in type `type_id` or one of its supertypes."""
        key = (type_id, path)
        if key not in self._declarations:
            nodes = await self._type_and_supertypes(self.server.get_node(type_id))
            found: ua.ReferenceDescription | None = None
            for name in path.split("/"):
                found = None
                for node in nodes:
                    found = next(
                        (
                            d
                            for d in await node.get_children_descriptions()
                            if d.BrowseName.Name == name and d.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable)
                        ),
                        None,
                    )
                    if found is not None:
                        break
                if found is None:
                    raise LookupError(f"{type_id.to_string()} declares no {path}")
                nodes = [self.server.get_node(found.NodeId)]
            assert found is not None  # a path has at least one name
            self._declarations[key] = found
        return self._declarations[key]

    async def _type_and_supertypes(self, node: Node) -> list[Node]:
        chain = [node]
        while parents := await chain[-1].get_referenced_nodes(
            refs=ua.ObjectIds.HasSubtype, direction=ua.BrowseDirection.Inverse
        ):
            chain.append(parents[0])
        return chain

    async def states(self) -> dict[str, dict[str, _State]]:
        """The states of each state machine the simulator drives, read from its type and supertypes."""
        tables: dict[str, dict[str, _State]] = {}
        for key, (model, identifier, numbered) in _STATE_MACHINES.items():
            table: dict[str, _State] = {}
            for type_node in await self._type_and_supertypes(self.server.get_node(self.type_id(model, identifier))):
                for desc in await type_node.get_children_descriptions(refs=ua.ObjectIds.HasComponent):
                    kinds = (ua.NodeId(ua.ObjectIds.StateType), ua.NodeId(ua.ObjectIds.InitialStateType))
                    if desc.TypeDefinition not in kinds or desc.BrowseName.Name in table:
                        continue  # a transition, or a state a subtype already defines
                    number = None
                    if numbered:
                        number_node = await self.server.get_node(desc.NodeId).get_child("0:StateNumber")
                        number = int(await number_node.read_value())
                    table[desc.BrowseName.Name] = _State(desc.BrowseName.Name, desc.NodeId, number)
            tables[key] = table
        return tables

    async def alarm_generator(self, machine: OpcUaMachine) -> EventGenerator:
        """An AlertType event generator whose events come from the machine's Messages, the machine as source."""
        messages = self.server.get_node(instance_node_id(machine.id, MESSAGES, self.copeau))
        generator = await self.server.get_event_generator(self.mt(_ALERT_TYPE), messages.nodeid)
        event = generator.event
        event.SourceNode = instance_node_id(machine.id, "", self.copeau)
        event.SourceName = machine.browse_name or machine.id
        # The condition is not a node of the address space (OPC 10000-9 allows it); its id is stable anyway.
        event.NodeId = instance_node_id(machine.id, f"{MESSAGES}/Alarm", self.copeau)
        event.ConditionName = "Alarme"
        event.ConditionClassId = ua.NodeId(ua.ObjectIds.BaseConditionClassType)
        event.ConditionClassName = ua.LocalizedText("BaseConditionClass")
        event.EnabledState = ua.LocalizedText("Enabled")
        setattr(event, "EnabledState/Id", True)
        event.ErrorCode = "COPEAU-SIM"
        return generator


class _Users(UserManager):
    """User names and passwords from the simulator's settings; anonymous users when the endpoints allow them."""

    def __init__(self, users: dict[str, str], *, anonymous: bool) -> None:
        self._users = dict(users)
        self._anonymous = anonymous

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        """The user for a session being activated, or None to refuse it. `certificate` is the client's certificate
        on the secure channel: empty (b"" in asyncua 2.1) or None when the channel is not encrypted."""
        if username is None:
            # asyncua gives the Anonymous role no right at all (not even Browse): readers are Users.
            return User(role=UserRole.User) if self._anonymous else None
        if not certificate:
            # asyncua lets a client make a session on an unencrypted channel even when no endpoint offers one
            # (the channel exists for GetEndpoints): refuse a user name there, its traffic is readable.
            return None
        expected = self._users.get(username)
        if expected is None or password is None:
            return None
        if not hmac.compare_digest(expected.encode("utf-8"), password.encode("utf-8")):
            return None
        return User(role=UserRole.User, name=username)


class SimulatedMachineTool:
    """One machine tool: plays its scenario, remembers what it shows, writes it into the server while it is up."""

    def __init__(
        self,
        machine: OpcUaMachine,
        *,
        truth: Path,
        clock_ns: Callable[[], int],
        on_part: Callable[[SimulatedMachineTool], None],
    ) -> None:
        if machine.simulation is None:
            raise ValueError(f"{machine.id}: no simulation block, nothing to simulate")
        self.machine = machine
        self.simulation = machine.simulation
        self.finished = asyncio.Event()  # set when a finite plan has been played, or production stopped
        self._stop_production = asyncio.Event()
        self._truth_path = truth
        self._truth: GroundTruthWriter | None = None
        self._clock_ns = clock_ns
        self._on_part = on_part
        self._counter = machine.simulation.counter_start
        self._parts_made = 0
        self._good = 0
        self._values: dict[str, ua.DataValue] = {}
        self._states: dict[str, dict[str, _State]] = {}
        self._space: _AddressSpace | None = None
        # Held while values go into the address space, so that filling a new server and a change made at the
        # same time cannot leave an older value behind.
        self._lock = asyncio.Lock()
        self._alarm_since: int | None = None  # when the active alarm was raised
        self._powered_ns = 0  # time powered before `_powered_since`
        self._powered_since: int | None = None

    @property
    def parts_made(self) -> int:
        """Parts made since `run()` started."""
        return self._parts_made

    @property
    def parts_good(self) -> int:
        """Good parts among them."""
        return self._good

    @property
    def counter(self) -> int:
        """PartsProducedInLifetime (UInt64, kept across power cuts and server restarts)."""
        return self._counter

    def stop_production(self) -> None:
        """Make no more parts: a cycle in progress completes, then the machine stays idle. Sets `finished`."""
        self._stop_production.set()

    def open(self, states: dict[str, dict[str, _State]]) -> None:
        """Open the truth file and set the values a machine shows when it starts (idle, in automatic)."""
        self._truth = GroundTruthWriter(self._truth_path)
        self._states = states
        ts = _stamp(self._clock_ns)
        self._powered_since = ts
        sim, machine = self.simulation, self.machine
        program = f"{machine.id.upper()}.MPF"
        percent = ua.EUInformation(
            NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
            UnitId=20529,
            DisplayName=ua.LocalizedText("%"),
            Description=ua.LocalizedText("percent"),
        )
        overrides = ua.Range(Low=0.0, High=120.0)
        self._remember(
            ts,
            {
                "Identification/Manufacturer": ua.Variant(ua.LocalizedText("Copeau simulator")),
                "Identification/SerialNumber": ua.Variant(machine.id),
                "Identification/ProductInstanceUri": ua.Variant(f"urn:copeau:machine:{machine.id}"),
                "Identification/Model": ua.Variant(ua.LocalizedText(machine.kind.value)),
                OPERATION_MODE: _enum(OperationMode.AUTOMATIC),
                **self._state(ITEM_STATE, "item", "NotExecuting"),
                PARTS_IN_LIFETIME: ua.Variant(self._counter, ua.VariantType.UInt64),
                POWER_ON_DURATION: ua.Variant(0.0, ua.VariantType.Double),
                f"{CHANNEL}/Name": ua.Variant("Channel 1"),
                f"{CHANNEL}/ChannelMode": _enum(_CHANNEL_MODE_AUTOMATIC),
                f"{CHANNEL}/ChannelState": _enum(ChannelState.RESET),
                f"{CHANNEL}/FeedOverride": ua.Variant(100.0, ua.VariantType.Double),
                f"{CHANNEL}/FeedOverride/EngineeringUnits": ua.Variant(percent),
                f"{CHANNEL}/FeedOverride/EURange": ua.Variant(overrides),
                f"{SPINDLE}/Name": ua.Variant("S1"),
                f"{SPINDLE}/IsRotating": ua.Variant(False),
                f"{SPINDLE}/Override": ua.Variant(100.0, ua.VariantType.Double),
                f"{SPINDLE}/Override/EngineeringUnits": ua.Variant(percent),
                f"{SPINDLE}/Override/EURange": ua.Variant(overrides),
                f"{SPINDLE}/SpindleSpeed": ua.Variant(0.0, ua.VariantType.Double),
                "Production/ActiveProgram/Name": ua.Variant(program),
                "Production/ActiveProgram/NumberInList": ua.Variant(0, ua.VariantType.UInt16),
                **self._state(PROGRAM_STATE, "program", "Initializing"),
                STATISTICS_PARTS: self._lifetime_uint32(),
                f"{JOB}/Identifier": ua.Variant(f"OF-{machine.id}"),
                f"{JOB}/NumberInList": ua.Variant(0, ua.VariantType.UInt16),
                f"{JOB}/RunsPlanned": ua.Variant(sim.parts, ua.VariantType.UInt32),
                f"{JOB}/RunsPlanned/IsValid": ua.Variant(sim.parts > 0),  # 0 parts: run until stopped, no plan
                f"{JOB}/RunsCompleted": ua.Variant(0, ua.VariantType.UInt32),
                f"{JOB}/PartsCompleted": ua.Variant(0, ua.VariantType.UInt32),
                f"{JOB}/PartsGood": ua.Variant(0, ua.VariantType.UInt32),
                **self._state(f"{JOB}/State/CurrentState", "job", "Initializing"),
                f"{JOB}/ProductionPrograms/Program1/Name": ua.Variant(program),
                f"{JOB}/ProductionPrograms/Program1/NumberInList": ua.Variant(0, ua.VariantType.UInt16),
                f"{JOB}/PartSets/PartSet1/ContainsMixedParts": ua.Variant(False),
                f"{JOB}/PartSets/PartSet1/PartsPlannedPerRun": ua.Variant(1, ua.VariantType.UInt32),
                f"{JOB}/PartSets/PartSet1/PartsCompletedPerRun": ua.Variant(0, ua.VariantType.UInt32),
                f"{PART}/Name": ua.Variant(f"Pièce {machine.id}"),
                f"{PART}/PartQuality": _enum(PartQuality.NOT_YET_MEASURED),
                f"{PART}/ProcessIrregularity": _enum(_IRREGULARITY_NOT_MEASURED),
            },
        )

    def close(self) -> None:
        """Close the truth file (idempotent)."""
        if self._truth is not None:
            self._truth.close()

    async def attach(self, space: _AddressSpace) -> None:
        """Write everything the machine shows into a new address space, then keep it up to date."""
        async with self._lock:
            self._space = space
            for path, value in self._values.items():
                await space.write(self.machine.id, path, value)
            if self._alarm_since is not None:  # raised again (no one listens yet) so that ConditionRefresh tells it
                await space.alarm(self.machine.id, active=True, ts=self._alarm_since)

    def detach(self) -> None:
        """The server is going away: keep changes in memory only."""
        self._space = None

    def record(self, event: str, *, ts: int | None = None, **fields: Any) -> int:
        """Write one ground-truth record, stamped now unless `ts` is given; return its timestamp."""
        stamp = _stamp(self._clock_ns) if ts is None else ts
        assert self._truth is not None, "records are written only between open() and close()"
        self._truth.write({"ts": stamp, "machine": self.machine.id, "event": event, **fields})
        return stamp

    async def play(self) -> None:
        """Play the scenario on absolute deadlines; return once it has ended or production was stopped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        for step in plan(self.simulation):
            if self._stop_production.is_set():
                break
            deadline += step.duration_s
            await self._play(step, deadline)
        ended = self.simulation.parts == 0 or self._parts_made >= self.simulation.parts
        await self._change(
            {
                OPERATION_MODE: _enum(OperationMode.MANUAL),  # production is over: nobody runs programs
                **self._state(f"{JOB}/State/CurrentState", "job", "Ended" if ended else "Aborted"),
            }
        )
        self.finished.set()

    async def _play(self, step: Step, deadline: float) -> None:
        if step.kind == "cycle":
            start = await self._change(
                {
                    **self._state(ITEM_STATE, "item", "Executing"),
                    **self._state(PROGRAM_STATE, "program", "Running"),
                    **self._state(f"{JOB}/State/CurrentState", "job", "Running"),
                    f"{CHANNEL}/ChannelState": _enum(ChannelState.ACTIVE),
                    f"{SPINDLE}/IsRotating": ua.Variant(True),
                    f"{SPINDLE}/SpindleSpeed": ua.Variant(_SPINDLE_RPM[self.machine.kind.value], ua.VariantType.Double),
                    f"{JOB}/PartSets/PartSet1/PartsCompletedPerRun": ua.Variant(0, ua.VariantType.UInt32),
                    f"{PART}/PartQuality": _enum(PartQuality.NOT_YET_MEASURED),
                }
            )
            self.record("cycle_start", ts=start)
            await _sleep_until(deadline)
            self._parts_made += 1
            self._counter = (self._counter + 1) % 2**64
            bad_every = self.simulation.bad_every
            good = not (bad_every > 0 and self._parts_made % bad_every == 0)
            self._good += good
            end = await self._change(
                {
                    **self._state(ITEM_STATE, "item", "NotExecuting"),
                    **self._state(PROGRAM_STATE, "program", "Ended"),
                    f"{CHANNEL}/ChannelState": _enum(ChannelState.RESET),
                    f"{SPINDLE}/IsRotating": ua.Variant(False),
                    f"{SPINDLE}/SpindleSpeed": ua.Variant(0.0, ua.VariantType.Double),
                    PARTS_IN_LIFETIME: ua.Variant(self._counter, ua.VariantType.UInt64),
                    STATISTICS_PARTS: self._lifetime_uint32(),
                    f"{JOB}/RunsCompleted": _uint32(self._parts_made),
                    f"{JOB}/PartsCompleted": _uint32(self._parts_made),
                    f"{JOB}/PartsGood": _uint32(self._good),
                    f"{JOB}/PartSets/PartSet1/PartsCompletedPerRun": ua.Variant(1, ua.VariantType.UInt32),
                    f"{PART}/PartQuality": _enum(PartQuality.GOOD if good else PartQuality.BAD),
                }
            )
            self.record("cycle_end", ts=end, duration_s=(end - start) / 1e9)
            self.record("part", ts=end, counter=self._counter, good=good)
            self._on_part(self)
        elif step.kind == "alarm":
            ts = await self._change(
                {
                    **self._state(ITEM_STATE, "item", "OutOfService"),
                    f"{CHANNEL}/ChannelState": _enum(ChannelState.INTERRUPTED),
                }
            )
            await self._alarm(active=True, ts=ts)
            self.record("alarm_on", ts=ts)
            await _sleep_until(deadline)
            ts = await self._change(
                {
                    **self._state(ITEM_STATE, "item", "NotExecuting"),
                    f"{CHANNEL}/ChannelState": _enum(ChannelState.RESET),
                }
            )
            await self._alarm(active=False, ts=ts)
            self.record("alarm_off", ts=ts)
        elif step.kind == "power_off":
            # The machine is switched off; the server (a gateway in the cabinet) stays up and says so.
            # OperationMode has no value for "off": it turns Bad (OutOfService) instead of showing a stale mode.
            ts = await self._change(
                {
                    **self._state(ITEM_STATE, "item", "NotAvailable"),
                    OPERATION_MODE: ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadOutOfService)),
                },
                powered=False,
            )
            self.record("power_off", ts=ts)
            await _sleep_until(deadline)
            ts = await self._change(
                {
                    **self._state(ITEM_STATE, "item", "NotExecuting"),
                    OPERATION_MODE: _enum(OperationMode.AUTOMATIC),
                },
                powered=True,
            )
            self.record("power_on", ts=ts, counter=self._counter)  # counters are kept, unlike a Modbus module's
        else:  # idle: the only step that a stop request cuts short
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._stop_production.wait()

    def _state(self, path: str, machine: str, name: str) -> dict[str, ua.Variant]:
        """The values of a state machine's CurrentState (and its Id, and Number when it has one) in state `name`."""
        state = self._states[machine][name]
        values = {path: ua.Variant(ua.LocalizedText(name)), f"{path}/Id": ua.Variant(state.node_id)}
        if state.number is not None:
            values[f"{path}/Number"] = ua.Variant(state.number, ua.VariantType.UInt32)
        return values

    def _lifetime_uint32(self) -> ua.Variant:
        # Statistics/PartsProducedInLifetime is a UInt32 in the NodeSet: it wraps where the UInt64 does not.
        return ua.Variant(self._counter % 2**32, ua.VariantType.UInt32)

    async def _change(self, values: dict[str, ua.Variant | ua.DataValue], *, powered: bool | None = None) -> int:
        """Show new values, stamped now; return the stamp. Also updates the power-on duration."""
        async with self._lock:
            ts = _stamp(self._clock_ns)
            if powered is False and self._powered_since is not None:
                self._powered_ns += ts - self._powered_since
                self._powered_since = None
            elif powered is True and self._powered_since is None:
                self._powered_since = ts
            on_ns = self._powered_ns + (ts - self._powered_since if self._powered_since is not None else 0)
            values = {**values, POWER_ON_DURATION: ua.Variant(on_ns / 1e6, ua.VariantType.Double)}  # Duration: ms
            for path, value in self._stamped(ts, values).items():
                self._values[path] = value
                if self._space is not None:
                    await self._space.write(self.machine.id, path, value)
            return ts

    def _remember(self, ts: int, values: dict[str, ua.Variant | ua.DataValue]) -> None:
        self._values.update(self._stamped(ts, values))

    @staticmethod
    def _stamped(ts: int, values: dict[str, ua.Variant | ua.DataValue]) -> dict[str, ua.DataValue]:
        when = _as_datetime(ts)
        out: dict[str, ua.DataValue] = {}
        for path, value in values.items():
            if isinstance(value, ua.DataValue):
                out[path] = ua.DataValue(value.Value, StatusCode=value.StatusCode, SourceTimestamp=when)
            else:
                out[path] = ua.DataValue(value, SourceTimestamp=when)
        return out

    async def _alarm(self, *, active: bool, ts: int) -> None:
        self._alarm_since = ts if active else None
        if self._space is not None:
            await self._space.alarm(self.machine.id, active=active, ts=ts)


def _enum(value: int) -> ua.Variant:
    # An enumeration travels as an Int32.
    return ua.Variant(int(value), ua.VariantType.Int32)


def _uint32(value: int) -> ua.Variant:
    return ua.Variant(value % 2**32, ua.VariantType.UInt32)


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))


class OpcUaWorkshopSimulator:
    """One OPC UA server at `url` serving several simulated machine tools, each following its scenario."""

    def __init__(
        self,
        machines: list[OpcUaMachine],
        *,
        url: str,
        state_dir: Path,
        clock_ns: Callable[[], int] = time.time_ns,
        certificate: Path | None = None,
        private_key: Path | None = None,
        security: Security = "none",
        users: dict[str, str] | None = None,
        subscriptions: bool = True,
    ) -> None:
        """`subscriptions=False` plays a control that refuses subscriptions (BadTooManySubscriptions): clients
        must poll it."""
        if not machines:
            raise ValueError("no machine to simulate")
        ids = [m.id for m in machines]
        names = [m.browse_name or m.id for m in machines]
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise ValueError(f"{url}: machine ids and browse names must be unique: {ids}, {names}")
        for m in machines:
            if m.simulation is None:
                raise ValueError(f"{m.id}: no simulation block, nothing to simulate")
            if m.url != url:
                raise ValueError(f"{m.id}: its url {m.url} is not this server's ({url})")
        if security not in _POLICIES:
            raise ValueError(f"security must be one of {sorted(_POLICIES)}, not {security!r}")
        if security == "none":
            if users:
                raise ValueError("user names need an encrypted endpoint: security 'encrypted' or 'both'")
        elif certificate is None or private_key is None or not users:
            raise ValueError(f"security {security!r} needs a certificate, its private key and users")
        parsed = urlparse(url)
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"{url}: the simulator needs a host and a port")
        self.url = url
        self.host: str = parsed.hostname
        self.port: int = parsed.port
        self.security: Security = security
        self.finished = asyncio.Event()  # every machine has finished (finite plans, or production stopped)
        self.serving = asyncio.Event()  # the server listens (cleared while it is down)
        self.restarted = asyncio.Event()  # the server has restarted and is up again
        self._certificate = certificate
        self._private_key = private_key
        self._users = dict(users or {})
        self._subscriptions = subscriptions
        self._clock_ns = clock_ns
        self._application_uri = (
            _certificate_uri(certificate) if certificate is not None else f"urn:copeau:opcua-simulator:{self.port}"
        )
        self.machines: dict[str, SimulatedMachineTool] = {
            m.id: SimulatedMachineTool(m, truth=truth_path(state_dir, m.id), clock_ns=clock_ns, on_part=self._on_part)
            for m in machines
        }
        self._space: _AddressSpace | None = None  # the server that listens, if any
        self._first: _AddressSpace | None = None  # built by prepare(), for run() to bring up
        self._spare: _AddressSpace | None = None  # built by prepare() for the restart
        self._namespaces: dict[str, int] | None = None  # those of the first server: a restart must give the same
        self._restart_due = asyncio.Event()
        self._restart_down_s = 0.0

    def stop_production(self) -> None:
        """Make no more parts on any machine (cycles in progress complete); `finished` is set once all are idle."""
        for machine in self.machines.values():
            machine.stop_production()

    async def prepare(self) -> None:
        """Build the server, and the one that a planned restart brings up, without starting them.

        Building blocks the event loop for 1 to 3 s per server (asyncua imports the NodeSets without yielding),
        so it is done before any machine plays: run() calls it if needed, and `SimulatedWorkshop`
        (simulators/workshop.py) prepares every server before it runs any. A restart then costs no machine a
        late cycle."""
        if self._first is None and self._space is None:
            self._first = await self._build()
            if any(m.simulation.server_restart_after for m in self.machines.values()):
                self._spare = await self._build()

    async def run(self) -> None:
        """Serve and play every machine's scenario until cancelled. Finite scenarios end idle, still serving."""
        try:
            await self.prepare()
            space, self._first = self._first, None
            assert space is not None, "prepare() has built it"
            for machine in self.machines.values():
                machine.open(space.states)
            await self._bring_up(space)
            async with asyncio.TaskGroup() as group:
                for machine in self.machines.values():
                    group.create_task(self._play(machine), name=f"opcua-simulator-{machine.machine.id}")
                if self._spare is not None:
                    group.create_task(self._restart_when_due(), name=f"opcua-server-restart-{self.port}")
            await asyncio.get_running_loop().create_future()  # idle and serving until cancelled
        finally:
            await self._take_down()
            for machine in self.machines.values():
                machine.close()

    async def _play(self, machine: SimulatedMachineTool) -> None:
        await machine.play()
        if all(m.finished.is_set() for m in self.machines.values()):
            self.finished.set()

    def _on_part(self, machine: SimulatedMachineTool) -> None:
        after = machine.simulation.server_restart_after
        if after and machine.parts_made == after and not self._restart_due.is_set():
            self._restart_down_s = machine.simulation.server_down_s
            self._restart_due.set()

    async def _restart_when_due(self) -> None:
        """Once: stop the whole server (connections dropped, port closed) for the down time while the machines keep
        producing, then bring up the spare server, filled from the machines' memory."""
        await self._restart_due.wait()
        space, self._spare = self._spare, None
        assert space is not None, "prepare() builds the spare server when a restart is planned"
        await self._take_down()
        for machine in self.machines.values():
            machine.record("server_stop")
        await asyncio.sleep(self._restart_down_s)
        await self._bring_up(space)
        for machine in self.machines.values():
            machine.record("server_start")
        self.restarted.set()

    async def _build(self) -> _AddressSpace:
        server = Server(user_manager=_Users(self._users, anonymous=self.security != "encrypted"))
        await server.init()
        if not self._subscriptions:
            server.iserver.max_subscriptions = 0
        # asyncua's clock makes Server.stop() wait up to a second, so `server_stop` would come late: ours (_tick)
        # stops at once.
        server.disable_clock()
        server.set_endpoint(self.url)
        server.set_server_name("Copeau OPC UA simulator")
        server.product_uri = "urn:copeau:opcua-simulator"
        await server.set_application_uri(self._application_uri)
        await server.set_build_info(
            server.product_uri, "Copeau", "Copeau OPC UA simulator", "1", "1", datetime.now(UTC)
        )
        server.set_security_policy(_POLICIES[self.security])
        server.set_identity_tokens(_TOKENS[self.security])
        if self._certificate is not None and self._private_key is not None:
            await server.load_certificate(self._certificate)
            await server.load_private_key(self._private_key)
        namespaces = await import_machine_tool_models(server)
        namespaces[COPEAU_NAMESPACE] = await server.register_namespace(COPEAU_NAMESPACE)
        if self._namespaces is None:
            self._namespaces = namespaces
        elif namespaces != self._namespaces:  # the node ids a client holds would point elsewhere
            raise RuntimeError(f"namespace indexes changed across a restart: {self._namespaces} → {namespaces}")
        builder = _Builder(server, namespaces)
        for machine in self.machines.values():
            await builder.machine(machine.machine)
        alarms = {mid: await builder.alarm_generator(m.machine) for mid, m in self.machines.items()}
        return _AddressSpace(server, namespaces, await builder.states(), alarms)

    async def _bring_up(self, space: _AddressSpace) -> None:
        """Fill the new address space from the machines' memory, then listen."""
        for machine in self.machines.values():
            await machine.attach(space)
        try:
            await space.server.start()
        except OSError as exc:
            for machine in self.machines.values():
                machine.detach()
            raise ServiceError(
                t(
                    "services.port_busy",
                    port=self.port,
                    what="OPC UA simulator",
                    host=self.host,
                    field=f"machines[{next(iter(self.machines))}].url",
                    config="workshop.yaml",
                )
            ) from exc
        space.clock = asyncio.create_task(self._tick(space.server), name=f"opcua-server-clock-{self.port}")
        self._space = space
        self.serving.set()

    async def _tick(self, server: Server) -> None:
        """Keep ServerStatus/CurrentTime current, every second, as asyncua's own clock does."""
        status_node = server.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus))
        time_node = server.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime))
        while True:
            now = _as_datetime(_stamp(self._clock_ns))
            status = copy.copy(await status_node.read_value())
            status.CurrentTime = now
            await status_node.write_value(status)
            await time_node.write_value(now)
            await asyncio.sleep(1)

    async def _take_down(self) -> None:
        # stop() closes the listening socket and every connection: sessions and subscriptions are gone.
        space, self._space = self._space, None
        self.serving.clear()
        for machine in self.machines.values():
            machine.detach()
        if space is not None:
            clock = space.clock
            if clock is not None:
                clock.cancel()
                await asyncio.wait([clock])
            await space.server.stop()
            if clock is not None and not clock.cancelled() and clock.exception() is not None:
                raise RuntimeError("the server clock failed") from clock.exception()


def _certificate_uri(path: Path) -> str:
    """The application URI in a certificate's subjectAltName: a server's ApplicationUri must be that one."""
    data = path.read_bytes()
    cert = (
        x509.load_pem_x509_certificate(data) if data.startswith(b"-----BEGIN") else x509.load_der_x509_certificate(data)
    )
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise ValueError(f"{path}: no subjectAltName, so no application URI") from exc
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise ValueError(f"{path}: no URI in subjectAltName, so no application URI")
    return str(uris[0])


def make_self_signed(path_dir: Path, common_name: str, uri: str) -> tuple[Path, Path]:
    """Make a self-signed OPC UA application certificate (DER) and its private key (PEM, mode 600) in `path_dir`.

    The certificate names `uri` (the application URI), this host, localhost and 127.0.0.1, and may serve a
    client or a server. For tests and the demo: a real control's certificate comes from its maker or a CA."""
    key = generate_private_key()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(uri),
        x509.DNSName(socket.gethostname()),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = generate_self_signed_app_certificate(
        key,
        common_name,
        {"organizationName": "Copeau"},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    path_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", common_name).strip("-") or "opcua"
    cert_path, key_path = path_dir / f"{stem}-cert.der", path_dir / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_path, key_path


def security_for(machines: list[OpcUaMachine], state_dir: Path, url: str) -> dict[str, Any]:
    """The simulator's security settings for the machines that share `url`, from what their collectors expect."""
    secured = [m for m in machines if m.security.policy is not SecurityPolicy.NONE]
    if not secured:
        return {"security": "none"}
    offered = {SecurityPolicy.BASIC256SHA256, SecurityPolicy.AES128_SHA256_RSAOAEP}
    users: dict[str, str] = {}
    for m in secured:
        if m.security.policy not in offered or m.security.mode is not SecurityMode.SIGN_AND_ENCRYPT:
            raise ValueError(f"{m.id}: the simulator offers {sorted(offered)} with SignAndEncrypt only")
        password = m.security.password.read()
        if m.security.username is None or password is None:
            raise ValueError(f"{m.id}: an encrypted endpoint of the simulator needs a username and its password")
        users[m.security.username] = password
    # One certificate per server, kept in the state folder so that a collector can pin it between runs.
    parsed = urlparse(url)
    folder = state_dir / "opcua" / f"{parsed.hostname}-{parsed.port}"
    cert, key = folder / "server-cert.der", folder / "server-key.pem"
    if not (cert.exists() and key.exists()):
        cert, key = make_self_signed(folder, "server", f"urn:copeau:opcua-simulator:{parsed.port}")
    mixed = len(secured) != len(machines)
    return {"security": "both" if mixed else "encrypted", "certificate": cert, "private_key": key, "users": users}

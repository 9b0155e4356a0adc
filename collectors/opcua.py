"""OPC UA adapter: follow a machine tool through the OPC 40501-1 *Machine Tools* model, by subscription.

Theory of operation
-------------------
- **Finding the machine.** Namespace indexes are read from the server's NamespaceArray by URI, never assumed.
  Machines are the objects under `Objects/Machines` (Machinery, i=1001) whose type is `MachineToolType`
  (MachineTool, i=13) or a subtype. `browse_name` in the configuration picks one; without it, the one whose
  browse name is the machine's id, or else the server's only machine. Instance node ids are the vendor's
  business, so variables are found by browse path, matching browse names (the standard fixes the names; vendors
  put them in various namespaces). Any variable can be pinned
  to an explicit node id instead (`nodes:` in workshop.yaml), e.g. a SINUMERIK's `ns=2;s=/Channel/State/actParts`.
- **What is read.** Parts from the cumulative `PartsProducedInLifetime` (1.02 operation counters, else
  Production/Statistics, else the job's `PartsCompleted`): counters survive a lost session, change events do not.
  Good parts from the job's `PartsGood`. Cycles from `Production/ActiveProgram/State/CurrentState` (its `Number`,
  Running = 1). Alarms from the channel's `ChannelState` (Interrupted = 1).
- **Subscriptions.** One subscription per machine, sampling at `sampling_interval_ms`, with a server-side queue so
  that a short Running → Ended within one publishing interval is not collapsed. Notifications that share a
  SourceTimestamp (one change on the machine) become one `Sample` stamped with that time: the machine's own clock.
  A server that refuses subscriptions is polled at the same interval instead.
- **Losing the server.** One unavailable sample, then reconnect with full-jitter backoff. After reconnecting, the
  first sample merges every variable's current value: the parts made meanwhile come from the counter (the core
  flags them `rebuilt`); a cycle already running is not timed (its start was not seen).
- **Security.** `None` only when the configuration says so. Otherwise the policy and mode asked for, the
  collector's certificate, a user name, and the server's certificate pinned (`server_certificate`) or validated
  against a trust list (`trust_dir`). A refused certificate is an error with the machine's name, never a
  fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, Node, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent
from asyncua.crypto import security_policies
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509

from collectors.core import Sample
from copeau.backoff import full_jitter
from copeau.config import OpcUaMachine, SecurityMode, SecurityPolicy
from copeau.errors import MachineError, MachineUnavailable

log = logging.getLogger(__name__)

MACHINERY_URI = "http://opcfoundation.org/UA/Machinery/"
MACHINE_TOOL_URI = "http://opcfoundation.org/UA/MachineTool/"
MACHINES_FOLDER = 1001  # Machinery: Objects/Machines
MACHINE_TOOL_TYPE = 13  # MachineTool: MachineToolType
PROGRAM_RUNNING = 1  # ActiveProgram state number (ISA95 job states): Running
CHANNEL_INTERRUPTED = 1  # ChannelState: Interrupted

PARTS_PATHS = (
    "Monitoring/MachineTool/OperationCounters/PartsProducedInLifetime",
    "Production/Statistics/PartsProducedInLifetime",
)
PROGRAM_STATE = "Production/ActiveProgram/State/CurrentState"

_POLICIES: dict[SecurityPolicy, type] = {
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}

# What the network or the server may throw at us while connected; anything else is a bug and propagates.
_CONNECTION_ERRORS = (OSError, TimeoutError, ConnectionError, ua.UaError, asyncio.IncompleteReadError)


class OpcUaModelError(MachineError):
    """The server does not offer what Copeau needs (no MachineTool model, no such machine, a wrong node id).
    A configuration matter: retried slowly, in case the server is being set up."""


@dataclass(frozen=True)
class MachineNodes:
    """The variables Copeau follows on one machine. `good` and `channel_state` may be missing."""

    machine: Node
    parts: Node
    program_state: Node
    good: Node | None = None
    channel_state: Node | None = None

    def watched(self) -> dict[str, Node]:
        named = {
            "parts": self.parts,
            "program_state": self.program_state,
            "good": self.good,
            "channel_state": self.channel_state,
        }
        return {k: v for k, v in named.items() if v is not None}


def ns_of(dt: datetime | None, fallback_ns: int) -> int:
    """An OPC UA DateTime as ns since the epoch, exactly (no float on the way)."""
    if dt is None:
        return fallback_ns
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def sample_from(values: dict[str, Any], ts: int) -> Sample:
    """The core's view of the values followed (pure: tested without a server)."""
    state = values.get("program_state")
    # The state's Number when the server has it, else its name.
    running = state.Text == "Running" if isinstance(state, ua.LocalizedText) else state == PROGRAM_RUNNING
    channel = values.get("channel_state")
    return Sample(
        ts=ts,
        cycle_running=bool(running),
        alarm=channel is not None and int(channel) == CHANNEL_INTERRUPTED,
        counter=None if values.get("parts") is None else int(values["parts"]),
        good_counter=None if values.get("good") is None else int(values["good"]),
    )


async def _namespace(client: Client, uri: str, *, machine: str, address: str) -> int:
    array = await client.get_namespace_array()
    if uri not in array:
        raise OpcUaModelError(
            f"le serveur n'a pas le modèle {uri} (OPC 40501-1) : renseignez `nodes:`", machine=machine, address=address
        )
    return array.index(uri)


async def _child(node: Node, name: str) -> Node | None:
    """The child of `node` whose browse name is `name`, whatever its namespace."""
    for child in await node.get_children(refs=ua.ObjectIds.HierarchicalReferences):
        if (await child.read_browse_name()).Name == name:
            return child
    return None


async def _path(node: Node, path: str) -> Node | None:
    for name in path.split("/"):
        found = await _child(node, name)
        if found is None:
            return None
        node = found
    return node


async def _is_machine_tool(node: Node, machine_tool_type: ua.NodeId) -> bool:
    type_id = await node.read_type_definition()
    if type_id is None:
        return False
    current = Node(node.session, type_id)
    for _ in range(16):  # subtypes of subtypes; bounded in case a server has a loop
        if current.nodeid == machine_tool_type:
            return True
        parents = await current.get_referenced_nodes(ua.ObjectIds.HasSubtype, ua.BrowseDirection.Inverse)
        if not parents:
            return False
        current = parents[0]
    return False


async def find_machines(client: Client, *, machine: str = "?", address: str = "?") -> dict[str, Node]:
    """The machine tools under Objects/Machines, by browse name."""
    machinery = await _namespace(client, MACHINERY_URI, machine=machine, address=address)
    machine_tool = await _namespace(client, MACHINE_TOOL_URI, machine=machine, address=address)
    folder = client.get_node(ua.NodeId(ua.Int32(MACHINES_FOLDER), ua.Int16(machinery)))
    found: dict[str, Node] = {}
    for child in await folder.get_children(refs=ua.ObjectIds.Organizes):
        if await _is_machine_tool(child, ua.NodeId(ua.Int32(MACHINE_TOOL_TYPE), ua.Int16(machine_tool))):
            found[(await child.read_browse_name()).Name] = child
    return found


async def resolve(client: Client, machine: OpcUaMachine) -> MachineNodes:
    """Find the machine and its variables; explicit node ids in the configuration win."""
    address = machine.url
    pinned = machine.nodes

    def explicit(node_id: str | None) -> Node | None:
        return client.get_node(node_id) if node_id else None

    machines = (
        {}
        if (pinned.parts and pinned.program_state)
        else await find_machines(client, machine=machine.id, address=address)
    )
    # The configured browse name; else one named like the machine's id; else the server's only machine.
    node = machines.get(machine.browse_name or machine.id)
    if node is None and not machine.browse_name and len(machines) == 1:
        node = next(iter(machines.values()))
    if node is None and not (pinned.parts and pinned.program_state):
        seen = ", ".join(sorted(machines)) or "aucune"
        raise OpcUaModelError(
            f"machine « {machine.browse_name or '?'} » introuvable sous Objects/Machines (trouvées : {seen}) ; "
            "renseignez browse_name",
            machine=machine.id,
            address=address,
        )

    async def standard(*paths: str) -> Node | None:
        if node is None:
            return None
        for path in paths:
            found = await _path(node, path)
            if found is not None:
                return found
        return None

    parts = explicit(pinned.parts) or await standard(*PARTS_PATHS)
    if parts is None and node is not None:  # the job's PartsCompleted
        parts = await _first_job_variable(node, "PartsCompleted")
    program = explicit(pinned.program_state)
    if program is None:
        state = await standard(PROGRAM_STATE)
        program = (await _child(state, "Number") or state) if state is not None else None
    good = explicit(pinned.parts_good)
    if good is None and node is not None:
        good = await _first_job_variable(node, "PartsGood")
    channel = await _channel_state(node) if node is not None else None
    missing = [name for name, v in (("PartsProducedInLifetime", parts), ("ActiveProgram/State", program)) if v is None]
    if missing or parts is None or program is None:
        raise OpcUaModelError(
            f"variables introuvables : {', '.join(missing)} ; renseignez `nodes:`", machine=machine.id, address=address
        )
    # A wrong explicit node id must fail here, with its name, not as silence later.
    for name, n in (("parts", parts), ("program_state", program), ("parts_good", good)):
        if n is not None:
            try:
                await n.read_data_value()
            except ua.UaStatusCodeError as exc:
                raise OpcUaModelError(
                    f"nœud {name} ({n.nodeid.to_string()}) illisible : {exc}", machine=machine.id, address=address
                ) from exc
    return MachineNodes(machine=node or parts, parts=parts, program_state=program, good=good, channel_state=channel)


async def _first_job_variable(machine: Node, name: str) -> Node | None:
    plan = await _path(machine, "Production/ProductionPlan")
    if plan is None:
        return None
    for job in await plan.get_children(refs=ua.ObjectIds.HierarchicalReferences):
        found = await _child(job, name)
        if found is not None:
            return found
    return None


async def _channel_state(machine: Node) -> Node | None:
    monitoring = await _child(machine, "Monitoring")
    if monitoring is None:
        return None
    for child in await monitoring.get_children(refs=ua.ObjectIds.HierarchicalReferences):
        found = await _child(child, "ChannelState")  # the channel's name is the vendor's choice
        if found is not None:
            return found
    return None


def _application_uri(certificate: Path) -> str | None:
    """The application URI named in our certificate: the server checks that we present the same one."""
    data = certificate.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if data.startswith(b"-----") else x509.load_der_x509_certificate(data)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def make_client(machine: OpcUaMachine, *, timeout_s: float = 4.0) -> Client:
    """A client set up for `machine`'s security settings (not connected yet)."""
    client = Client(machine.url, timeout=timeout_s, watchdog_intervall=1.0)
    sec = machine.security
    if sec.policy is SecurityPolicy.NONE:
        return client
    if sec.certificate is None or sec.private_key is None:  # the config model refuses this already
        raise MachineError("certificate et private_key manquants", machine=machine.id, address=machine.url)
    uri = _application_uri(sec.certificate)
    if uri:
        client.application_uri = uri
    if sec.username:
        client.set_user(sec.username)
        client.set_password(sec.password.read() or "")
    await client.set_security(
        _POLICIES[sec.policy],
        str(sec.certificate),
        str(sec.private_key),
        server_certificate=str(sec.server_certificate) if sec.server_certificate else None,
        mode=_MODES[sec.mode],
    )
    if sec.trust_dir is not None:
        store = TrustStore([sec.trust_dir], [])
        await store.load()
        client.certificate_validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER, store
        )
    return client


class OpcUaSource:
    """Follows one OPC UA machine tool by subscription (see the module's theory of operation)."""

    def __init__(
        self, machine: OpcUaMachine, *, clock_ns: Callable[[], int] = time.time_ns, reconnect_max_s: float = 2.0
    ) -> None:
        self.machine = machine
        self.machine_id = machine.id
        self._clock_ns = clock_ns
        self._reconnect_max_s = reconnect_max_s
        self.connections = 0  # sessions opened (a reconnect adds one)
        self.polling = False  # True when the server refused subscriptions
        self.last_error: MachineError | None = None
        self.recovered_at_ns: list[int] = []  # when each outage ended (first sample after it), for measurements

    async def close(self) -> None:
        return None  # each session is closed by samples() itself

    async def samples(self) -> AsyncIterator[Sample]:
        backoff = None
        while True:
            try:
                async for sample in self._session():
                    if backoff is not None:
                        log.info("%s: OPC UA connection back", self.machine_id)
                        self.recovered_at_ns.append(self._clock_ns())
                        backoff = None
                        self.last_error = None
                    yield sample
            except (*_CONNECTION_ERRORS, MachineError) as exc:
                error = (
                    exc
                    if isinstance(exc, MachineError)
                    else MachineUnavailable(
                        str(exc) or type(exc).__name__, machine=self.machine_id, address=self.machine.url
                    )
                )
                self.last_error = error
                if backoff is None:
                    log.warning("%s: %s; retrying", self.machine_id, error)
                    backoff = full_jitter(base_s=self.machine.interval_s, cap_s=self._reconnect_max_s)
                    yield Sample(ts=self._clock_ns(), available=False)
                await asyncio.sleep(next(backoff))

    async def _session(self) -> AsyncIterator[Sample]:
        client = await make_client(self.machine)
        try:
            await client.connect()
        except ua.UaStatusCodeError as exc:
            raise _explain(exc, self.machine) from exc
        lost = asyncio.Event()

        async def on_lost(_exc: Exception) -> None:
            lost.set()

        client.connection_lost_callback = on_lost
        try:
            self.connections += 1
            nodes = await resolve(client, self.machine)
            watched = nodes.watched()
            by_id = {node.nodeid: name for name, node in watched.items()}
            try:
                subscription = await client.create_subscription(self.machine.sampling_interval_ms, queue_maxsize=10_000)
                sampling = ua.Double(self.machine.sampling_interval_ms)
                await subscription.subscribe_data_change(list(watched.values()), queuesize=100,
                                                         sampling_interval=sampling)
            except ua.UaStatusCodeError as exc:  # BadServiceUnsupported, BadTooManySubscriptions, ...
                log.warning(
                    "%s: subscriptions refused (%s); polling every %d ms",
                    self.machine_id,
                    exc,
                    self.machine.sampling_interval_ms,
                )
                self.polling = True
                async for sample in self._poll(watched, lost):
                    yield sample
                return
            async for sample in self._follow(subscription, by_id, lost):
                yield sample
        finally:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                async with asyncio.timeout(2):
                    await client.disconnect()

    async def _follow(
        self, subscription: Any, by_id: dict[ua.NodeId, str], lost: asyncio.Event
    ) -> AsyncIterator[Sample]:
        values: dict[str, Any] = {}
        pending_ts: int | None = None
        initial = True
        quiet_s = min(0.05, self.machine.interval_s / 2)
        while True:
            event = await subscription.next_event(timeout=quiet_s)
            if lost.is_set():
                raise ConnectionError("connexion OPC UA perdue")
            if isinstance(event, StatusChangeEvent):
                if event.notification.Status.is_bad():
                    raise ConnectionError(f"abonnement perdu ({event.notification.Status})")
                continue
            if event is None or not isinstance(event, DataChangeEvent):
                # Quiet: the change in hand is complete.
                if pending_ts is not None and not initial:
                    yield sample_from(values, pending_ts)
                    pending_ts = None
                continue
            dv = event.data.monitored_item.Value
            ts = ns_of(dv.SourceTimestamp or dv.ServerTimestamp, self._clock_ns())
            if not initial and pending_ts is not None and ts != pending_ts:
                yield sample_from(values, pending_ts)  # a new change begins: the previous one is complete
            values[by_id[event.node.nodeid]] = event.value
            if not initial:
                pending_ts = ts
                continue
            pending_ts = max(pending_ts or 0, ts)
            if set(values) == set(by_id.values()):
                # Every variable has reported its current value: one sample with all of them, at the latest
                # source time (the others changed earlier and have not changed since).
                initial = False
                yield sample_from(values, pending_ts)
                pending_ts = None

    async def _poll(self, watched: dict[str, Node], lost: asyncio.Event) -> AsyncIterator[Sample]:
        last: dict[str, Any] | None = None
        names = list(watched)
        while not lost.is_set():
            data_values = [await node.read_data_value() for node in watched.values()]
            values = {name: dv.Value.Value if dv.Value is not None else None
                      for name, dv in zip(names, data_values, strict=True)}
            if values != last:
                stamps = [ns_of(dv.SourceTimestamp, 0) for dv in data_values]
                yield sample_from(values, max(stamps) or self._clock_ns())
                last = values
            await asyncio.sleep(self.machine.interval_s)
        raise ConnectionError("connexion OPC UA perdue")


def _explain(exc: ua.UaStatusCodeError, machine: OpcUaMachine) -> MachineError:
    """A refused connection, in words a person can act on."""
    code = exc.code
    if code in (
        ua.StatusCodes.BadCertificateUntrusted,
        ua.StatusCodes.BadSecurityChecksFailed,
        ua.StatusCodes.BadCertificateInvalid,
    ):
        return MachineError(
            "certificat du serveur refusé : absent de security.trust_dir ou différent de security.server_certificate",
            machine=machine.id,
            address=machine.url,
        )
    if code in (
        ua.StatusCodes.BadUserAccessDenied,
        ua.StatusCodes.BadIdentityTokenRejected,
        ua.StatusCodes.BadIdentityTokenInvalid,
    ):
        return MachineError("identifiant ou mot de passe OPC UA refusé", machine=machine.id, address=machine.url)
    return MachineUnavailable(str(exc), machine=machine.id, address=machine.url)


def slug(text: str) -> str:
    """A machine id from a browse name: "Tour 2" → "tour-2"."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:63] or "machine"


async def browse_server(url: str, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Connect without security, find every machine tool, and describe the configuration entry Copeau would use
    for each (with the node ids it found, as a record of what it will read)."""
    client = Client(url, timeout=4)
    async with asyncio.timeout(timeout_s):
        await client.connect()
    try:
        entries = []
        for name, node in (await find_machines(client, machine="browse", address=url)).items():
            model = await _path(node, "Identification/Model")
            model_text = str((await model.read_value()) or "") if model is not None else ""
            kind = "lathe" if any(w in model_text.lower() for w in ("lathe", "tour", "drehmaschine")) else "mill"
            probe = OpcUaMachine.model_validate({"id": slug(name), "name": name, "kind": kind, "protocol": "opcua",
                                                 "url": url, "browse_name": name})
            nodes = await resolve(client, probe)
            entries.append({
                "id": probe.id,
                "name": name,
                "kind": kind,
                "protocol": "opcua",
                "url": url,
                "browse_name": name,
                "sampling_interval_ms": probe.sampling_interval_ms,
                "found": {k: n.nodeid.to_string() for k, n in nodes.watched().items()},
            })
        return entries
    finally:
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await client.disconnect()

"""The workshop configuration (`config/workshop.yaml`): frozen pydantic models and a loader whose errors
name the file, the line and the field, e.g.::

    config/workshop.yaml:41: machines[1].registers.parts.count: 1 registre est trop peu pour uint32 (il en faut 2)

Secrets (MQTT and InfluxDB passwords) never live in the YAML: the YAML names the environment variable or
the file that holds them.
"""

from __future__ import annotations

import ipaddress
import os
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from copeau.contract import SLUG_PATTERN
from copeau.i18n import lang

Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
_FROZEN = ConfigDict(frozen=True, extra="forbid")

DEFAULT_CONFIG = Path("config/workshop.yaml")


class ServicesMode(StrEnum):
    MANAGED = "managed"  # Copeau starts its own mosquitto and influxd (demo, tests, a single PC)
    EXTERNAL = "external"  # Copeau connects to the broker and InfluxDB named below (production)


class Services(BaseModel):
    model_config = _FROZEN
    mode: ServicesMode = ServicesMode.MANAGED
    # Where managed services, outboxes, dead letters and ground truth live. Relative to the working directory.
    state_dir: Path = Path("var")


class Secret(BaseModel):
    """Where a secret comes from: an environment variable or a file. Never the YAML itself."""

    model_config = _FROZEN
    env: str | None = None
    file: Path | None = None

    def read(self) -> str | None:
        if self.env and os.environ.get(self.env):
            return os.environ[self.env]
        if self.file:
            return self.file.read_text().strip()
        return None


class MqttSettings(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = Field(default=11883, ge=1, le=65535)
    username: str | None = None
    password: Secret = Secret(env="COPEAU_MQTT_PASSWORD")
    keepalive_s: int = Field(default=15, ge=5, le=600)
    # Managed broker only: how much a disconnected durable subscriber (the gateway) may have queued.
    max_queued_mb: int = Field(default=512, ge=1)


class InfluxSettings(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = Field(default=18086, ge=1, le=65535)
    database: Slug = "copeau"
    username: str | None = None
    password: Secret = Secret(env="COPEAU_INFLUXDB_PASSWORD")
    # Managed influxd only: its backup/RPC port (it always opens one).
    rpc_port: int = Field(default=18088, ge=1, le=65535)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Table(StrEnum):
    DISCRETE_INPUT = "discrete_input"
    COIL = "coil"
    HOLDING_REGISTER = "holding_register"
    INPUT_REGISTER = "input_register"


class ValueType(StrEnum):
    BOOL = "bool"
    UINT16 = "uint16"
    UINT32 = "uint32"


_REGISTERS_NEEDED = {ValueType.BOOL: 1, ValueType.UINT16: 1, ValueType.UINT32: 2}
_BIT_TABLES = {Table.DISCRETE_INPUT, Table.COIL}


class Register(BaseModel):
    """One value in a Modbus module. The same description drives the simulator and the collector."""

    model_config = _FROZEN
    table: Table
    address: int = Field(ge=0, le=65535)
    type: ValueType = ValueType.BOOL
    count: int = Field(default=1, ge=1, le=2)
    # For 32-bit values: "big" = high word first (Moxa ioLogik), "little" = low word first (Advantech ADAM-6051).
    word_order: Literal["big", "little"] = "big"

    @model_validator(mode="after")
    def _fits(self) -> Register:
        needed = _REGISTERS_NEEDED[self.type]
        if self.table in _BIT_TABLES and self.type is not ValueType.BOOL:
            raise ValueError(f"type {self.type} ne peut pas se lire dans la table {self.table} (bits seulement)")
        if self.table not in _BIT_TABLES and self.type is ValueType.BOOL:
            raise ValueError(f"type bool se lit dans discrete_input ou coil, pas dans {self.table}")
        if self.count < needed:
            raise ValueError(
                f"count {self.count} est trop petit pour {self.type} (il faut {needed} registres)"
                if lang() == "fr"
                else f"count {self.count} is too small for {self.type} (needs {needed} registers)"
            )
        if self.count > needed:
            raise ValueError(f"count {self.count} est trop grand pour {self.type} (il faut {needed} registres)")
        return self

    @property
    def modulus(self) -> int:
        return 2 ** (16 * self.count) if self.type is not ValueType.BOOL else 2


class ModbusRegisters(BaseModel):
    """The retrofit module's wiring: three discrete inputs and a hardware part counter (M30 pulses)."""

    model_config = _FROZEN
    cycle_running: Register
    spindle_on: Register | None = None
    alarm: Register | None = None
    parts: Register

    @model_validator(mode="after")
    def _kinds(self) -> ModbusRegisters:
        for name in ("cycle_running", "spindle_on", "alarm"):
            reg = getattr(self, name)
            if reg is not None and reg.type is not ValueType.BOOL:
                raise ValueError(f"{name} doit être un bit (type bool)")
        if self.parts.type is ValueType.BOOL:
            raise ValueError("parts doit être un compteur (uint16 ou uint32)")
        return self


class Endpoint(BaseModel):
    model_config = _FROZEN
    host: str
    port: int = Field(ge=1, le=65535)


class Simulation(BaseModel):
    """A seeded scenario for the simulator (demo and tests only; a real machine has no such block).

    Times are seconds of wall-clock time in the simulator.
    """

    model_config = _FROZEN
    seed: int = 1
    cycle_s: float = Field(default=6.0, gt=0)  # nominal cycle time
    cycle_jitter_s: float = Field(default=0.5, ge=0)  # cycle times are drawn in cycle_s ± jitter
    idle_s: float = Field(default=2.0, gt=0)  # nominal idle gap between cycles (drawn in idle_s ± 50 %)
    alarm_every: int = Field(default=0, ge=0)  # an alarm after every N cycles (0 = never)
    alarm_s: float = Field(default=3.0, gt=0)  # how long an alarm lasts before it is cleared
    power_cycle_after: int = Field(default=0, ge=0)  # the module is power-cycled after N parts (0 = never)
    power_off_s: float = Field(default=3.0, gt=0)  # how long the module stays off
    power_on_idle_s: float = Field(default=3.0, gt=0)  # after power returns, idle this long before the next cycle
    counter_start: int = Field(default=0, ge=0)  # start the counter here (near 2**32 to test wraps)
    parts: int = Field(default=0, ge=0)  # stop after this many parts (0 = run until stopped)
    bad_every: int = Field(default=0, ge=0)  # every N-th part is scrap (0 = never); OPC UA reports quality
    server_restart_after: int = Field(default=0, ge=0)  # OPC UA: restart the server once after N parts (0 = never)
    server_down_s: float = Field(default=5.0, gt=0)  # ...for this long, while the machine keeps producing


class MachineKind(StrEnum):
    LATHE = "lathe"
    MILL = "mill"


class _MachineBase(BaseModel):
    model_config = _FROZEN
    id: Slug
    name: str = Field(min_length=1, max_length=80)
    kind: MachineKind
    # A decrease of the counter is a wrap when the old value was within this many counts of the maximum
    # and the new one within this many counts of 0; otherwise it is a reset (the module lost power).
    wrap_window: int = Field(default=10_000, ge=1)
    simulation: Simulation | None = None

    @property
    def interval_s(self) -> float:
        """How often the machine's values are looked at (poll or sampling interval)."""
        raise NotImplementedError

    @property
    def counter_modulus(self) -> int:
        raise NotImplementedError

    @model_validator(mode="after")
    def _scenario_fits_sampling(self) -> _MachineBase:
        sim = self.simulation
        if sim is not None:
            if sim.cycle_s - sim.cycle_jitter_s < 3 * self.interval_s:
                raise ValueError("simulation.cycle_s - cycle_jitter_s doit durer au moins 3 intervalles de lecture")
            if sim.idle_s * 0.5 < 2 * self.interval_s:
                raise ValueError("simulation.idle_s doit durer au moins 4 intervalles de lecture")
            if sim.counter_start >= self.counter_modulus:
                raise ValueError("simulation.counter_start dépasse la capacité du compteur")
        return self


class ModbusMachine(_MachineBase):
    """An older machine with a Modbus TCP retrofit I/O module, polled."""

    protocol: Literal["modbus"]
    endpoint: Endpoint
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_s: float = Field(default=1.0, ge=0.01, le=60)
    registers: ModbusRegisters

    @property
    def interval_s(self) -> float:
        return self.poll_interval_s

    @property
    def counter_modulus(self) -> int:
        return self.registers.parts.modulus


class SecurityPolicy(StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class SecurityMode(StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcUaSecurity(BaseModel):
    """How to talk to an OPC UA server. `None` only when asked for: never a silent fallback."""

    model_config = _FROZEN
    policy: SecurityPolicy = SecurityPolicy.NONE
    mode: SecurityMode = SecurityMode.NONE
    username: str | None = None
    password: Secret = Secret(env="COPEAU_OPCUA_PASSWORD")
    certificate: Path | None = None  # the collector's own certificate (DER or PEM)
    private_key: Path | None = None
    server_certificate: Path | None = None  # pin exactly this server certificate...
    trust_dir: Path | None = None  # ...or accept a server certificate found in this folder (trust list)

    @model_validator(mode="after")
    def _coherent(self) -> OpcUaSecurity:
        if (self.policy is SecurityPolicy.NONE) != (self.mode is SecurityMode.NONE):
            raise ValueError("policy et mode vont ensemble : tous deux None, ou tous deux chiffrés/signés")
        if self.policy is not SecurityPolicy.NONE:
            if self.certificate is None or self.private_key is None:
                raise ValueError("une connexion sécurisée demande certificate et private_key (ceux du collecteur)")
            if self.server_certificate is None and self.trust_dir is None:
                raise ValueError("une connexion sécurisée demande server_certificate ou trust_dir")
        return self


class OpcUaNodes(BaseModel):
    """Explicit node ids that replace what browsing the Machine Tools model would find (vendor fallbacks),
    e.g. a SINUMERIK's `ns=2;s=/Channel/State/actParts` for `parts`."""

    model_config = _FROZEN
    parts: str | None = None  # cumulative part counter
    parts_good: str | None = None  # cumulative good-part counter
    program_state: str | None = None  # ActiveProgram State/CurrentState (Running / Ended / ...)
    operation_mode: str | None = None
    machine_state: str | None = None  # MachineryItemState CurrentState


class OpcUaMachine(_MachineBase):
    """A machine whose control speaks OPC UA (OPC 40501-1 Machine Tools), followed by subscription."""

    protocol: Literal["opcua"]
    url: str = Field(pattern=r"^opc\.tcp://[^/:]+(:\d+)?(/.*)?$")
    # The machine's BrowseName under Objects/Machines; None = the machine's id, or else the server's only machine.
    browse_name: str | None = None
    sampling_interval_ms: int = Field(default=100, ge=10, le=60_000)
    security: OpcUaSecurity = OpcUaSecurity()
    nodes: OpcUaNodes = OpcUaNodes()

    @property
    def interval_s(self) -> float:
        return self.sampling_interval_ms / 1000

    @property
    def counter_modulus(self) -> int:
        return 2**64  # PartsProducedInLifetime is a UInt64


Machine = Annotated[ModbusMachine | OpcUaMachine, Field(discriminator="protocol")]


class Site(BaseModel):
    model_config = _FROZEN
    id: Slug
    name: str = Field(min_length=1, max_length=120)


class CollectorSettings(BaseModel):
    model_config = _FROZEN
    id: Slug = "collector-1"
    # Events handed to the broker but not yet acknowledged, at most (the rest wait in the outbox).
    max_inflight: int = Field(default=200, ge=1, le=65535)
    # Longest wait between two attempts to read a machine that does not answer (full-jitter backoff).
    # Short enough to see the first cycle after a machine comes back; long enough not to hammer a dead network.
    reconnect_max_s: float = Field(default=2.0, ge=0.01, le=300)


class GatewaySettings(BaseModel):
    model_config = _FROZEN
    client_id: Slug = "copeau-gateway"
    # Session kept by the broker while the gateway is away (MQTT 5 session expiry), in hours.
    session_expiry_h: int = Field(default=168, ge=1)
    max_batch_lines: int = Field(default=5000, ge=1, le=100_000)


class WebSettings(BaseModel):
    """The web service (`copeau web`): kiosks, JSON API, pages for the maîtres. See docs/orders-and-kiosk.md."""

    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # The relational store. Unset: SQLite in <state_dir>/copeau.sqlite. A PostgreSQL URL carries a password,
    # so it comes from the environment or a file, like every secret.
    database_url: Secret = Secret(env="COPEAU_DATABASE_URL")
    # One key per kiosk, `machine-id=key` per line (or comma-separated). Never in this file.
    kiosk_keys: Secret = Secret(env="COPEAU_KIOSK_KEYS")
    # Set when the service is reached over HTTPS (behind a reverse proxy): cookies are then sent over HTTPS only.
    secure_cookies: bool = False
    # A badge scanned on an idle machine is remembered this long, waiting for the job card.
    identify_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    # Unknown badges accepted per kiosk within the window before the kiosk refuses scans for a while.
    unknown_badge_limit: int = Field(default=5, ge=1, le=1000)
    unknown_badge_window_s: float = Field(default=60.0, gt=0, le=3600)
    # Order progress: how often it is recomputed, and over how long the recent part rate is measured.
    progress_interval_s: float = Field(default=10.0, gt=0, le=3600)
    rate_window_s: float = Field(default=1800.0, gt=0, le=7 * 86400)
    # Due dates are days; a due date means the end of that day in this time zone.
    timezone: str = "Europe/Paris"

    @model_validator(mode="after")
    def _known_timezone(self) -> WebSettings:
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"timezone: fuseau horaire inconnu « {self.timezone} » (ex. Europe/Paris)") from exc
        return self


class Workshop(BaseModel):
    """The whole `workshop.yaml`."""

    model_config = _FROZEN
    site: Site
    services: Services = Services()
    mqtt: MqttSettings = MqttSettings()
    influxdb: InfluxSettings = InfluxSettings()
    collector: CollectorSettings = CollectorSettings()
    gateway: GatewaySettings = GatewaySettings()
    machines: list[Machine] = Field(min_length=1)
    web: WebSettings = WebSettings()

    @model_validator(mode="after")
    def _cross_checks(self) -> Workshop:
        seen: dict[str, int] = {}
        for i, m in enumerate(self.machines):
            if m.id in seen:
                raise ValueError(f"machines[{i}].id: « {m.id} » est déjà utilisé par machines[{seen[m.id]}]")
            seen[m.id] = i
        endpoints: dict[tuple[str, int, int], str] = {}
        for m in self.machines:
            if not isinstance(m, ModbusMachine):
                continue
            key = (m.endpoint.host, m.endpoint.port, m.unit_id)
            if key in endpoints:
                raise ValueError(f"{m.id} et {endpoints[key]} lisent le même module Modbus {key}")
            endpoints[key] = m.id
        names: dict[tuple[str, str], str] = {}
        for m in self.machines:
            if isinstance(m, OpcUaMachine):
                key = (m.url, m.browse_name or m.id)
                if key in names:
                    raise ValueError(f"machines: {m.id} et {names[key]} désignent la même machine sur {m.url}")
                names[key] = m.id
        if self.services.mode is ServicesMode.MANAGED:
            for name, host in (("mqtt.host", self.mqtt.host), ("influxdb.host", self.influxdb.host)):
                if not _is_loopback(host):
                    raise ValueError(f"{name}: en mode managed, les services écoutent en local seulement (127.0.0.1)")
        return self

    @property
    def state_dir(self) -> Path:
        return self.services.state_dir

    def machine(self, machine_id: str) -> Machine:
        for m in self.machines:
            if m.id == machine_id:
                return m
        raise KeyError(machine_id)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------------
# Loading, with file:line:field errors


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used. `problems` lists every problem found, each with file and line."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


_Path = tuple[str | int, ...]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"clé « {key} » en double (déjà à la ligne {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _lines(node: yaml.Node, path: _Path, out: dict[_Path, int]) -> None:
    """Map each field path to the line where it is written (the key's line, 1-based)."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(key_node.value))
            out[child] = key_node.start_mark.line + 1
            _lines(value_node, child, out)
            # A scalar value's own line is the key's line; nested ones are set by the recursion.
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            out[child] = item.start_mark.line + 1
            _lines(item, child, out)


def _field_name(loc: _Path) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _parse_field(text: str) -> _Path | None:
    """'machines[1].id' → ('machines', 1, 'id'); None when the text is not a field path."""
    path: list[str | int] = []
    for part in text.split("."):
        name, _, index = part.partition("[")
        if not name.isidentifier():
            return None
        path.append(name)
        if index:
            if not index.endswith("]") or not index[:-1].isdigit():
                return None
            path.append(int(index[:-1]))
    return tuple(path)


def _line_for(loc: _Path, lines: dict[_Path, int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


_FRENCH = {
    "extra_forbidden": "champ inconnu (vérifiez l'orthographe ; voir docs/configuration.md)",
    "missing": "champ obligatoire manquant",
    "int_parsing": "doit être un nombre entier",
    "int_type": "doit être un nombre entier",
    "int_from_float": "doit être un nombre entier",
    "float_parsing": "doit être un nombre",
    "float_type": "doit être un nombre",
    "bool_parsing": "doit être true ou false",
    "bool_type": "doit être true ou false",
    "string_type": "doit être un texte",
    "string_pattern_mismatch": "lettres minuscules, chiffres, « - » ou « _ » seulement (ex. fraiseuse-1)",
    "model_type": "doit être un bloc de champs (clé: valeur)",
    "model_attributes_type": "doit être un bloc de champs (clé: valeur)",
    "list_type": "doit être une liste (lignes commençant par « - »)",
    "too_short": "liste trop courte",
    "union_tag_not_found": "champ protocol manquant (modbus ou opcua)",
    "union_tag_invalid": "protocol doit être modbus ou opcua",
}


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if lang() != "fr":
        return str(err["msg"])
    if kind in _FRENCH:
        return _FRENCH[kind]
    ctx = err.get("ctx") or {}
    if kind in ("literal_error", "enum"):
        return f"doit être l'une des valeurs : {ctx.get('expected', '')}"
    bounds = {
        "greater_than_equal": ("≥", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("≤", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        sign, key = bounds[kind]
        return f"doit être {sign} {ctx.get(key)}"
    return str(err["msg"])


def _problems(exc: ValidationError, file: str, lines: dict[_Path, int]) -> Iterator[ConfigProblem]:
    for err in exc.errors():
        loc = tuple(err["loc"])
        # Pydantic puts the chosen union member in the path (e.g. "Register", or the protocol tag of a
        # machine: machines.0.modbus.registers); drop it, it is not a field the user wrote.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper()))
        if len(loc) > 2 and loc[0] == "machines" and loc[2] in ("modbus", "opcua"):
            loc = loc[:2] + loc[3:]
        message = _message(err)
        # A cross-check on the whole file names its own field first ("machines[1].id: ...").
        if not loc and ": " in message:
            field, rest = message.split(": ", 1)
            named = _parse_field(field)
            if named and named[0] in Workshop.model_fields:
                yield ConfigProblem(file, _line_for(named, lines), field, rest)
                continue
        yield ConfigProblem(file, _line_for(loc, lines), _field_name(loc), message)


def load_workshop(path: Path | str = DEFAULT_CONFIG) -> Workshop:
    """Read and validate a workshop file. Raises ConfigError naming file, line and field."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError([ConfigProblem(file, None, "", "fichier introuvable")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"lecture impossible : {exc}")]) from exc
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([ConfigProblem(file, line, "", f"YAML invalide : {exc.problem}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, 1, "", "le fichier doit décrire un bloc de champs (site, machines…)")])
    lines: dict[_Path, int] = {}
    if node is not None:
        _lines(node, (), lines)
    try:
        return Workshop.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(list(_problems(exc, file, lines))) from exc

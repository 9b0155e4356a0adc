"""The workshop configuration (`config/workshop.yaml`): frozen pydantic models and a loader whose errors
name the file, the line and the field, e.g.::

    config/workshop.yaml:41: machines[1].registers.parts.count: 1 registre est trop peu pour uint32 (il en faut 2)

Secrets (MQTT and InfluxDB passwords) never live in the YAML: the YAML names the environment variable or
the file that holds them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from copeau.contract import SLUG_PATTERN
from copeau.i18n import lang

Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
_FROZEN = ConfigDict(frozen=True, extra="forbid")

DEFAULT_CONFIG = Path("config/workshop.yaml")


class ServicesMode(StrEnum):
    MANAGED = "managed"  # Copeau starts its own mosquitto and influxd (demo, tests, a single PC)
    EXTERNAL = "external"  # Copeau connects to the broker and InfluxDB named below (production)


class Profile(StrEnum):
    """How locked the doors are. See docs/configuration.md, « Profil production »."""

    DEMO = "demo"  # anonymous MQTT, InfluxDB without authentication: one PC, loopback only (demo, tests)
    PRODUCTION = "production"  # an account per role, broker ACL, InfluxDB auth, secrets checked


class Services(BaseModel):
    model_config = _FROZEN
    mode: ServicesMode = ServicesMode.MANAGED
    profile: Profile = Profile.DEMO
    # Where managed services, outboxes, dead letters and ground truth live. Relative to the working directory.
    state_dir: Path = Path("var")


# systemd sets this for a unit with LoadCredential=: one file per credential, readable by the unit's user only.
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"


def _secret_text(path: Path) -> str:
    """A secret file's text, stripped. Not UTF-8 (a binary key, a Windows editor's UTF-16) is an OSError like any
    other unreadable secret, so that it is reported against the configuration's line rather than crash a service."""
    try:
        return path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise OSError(errno.EILSEQ, f"pas du texte UTF-8 (octet {exc.start + 1})", str(path)) from None


class Secret(BaseModel):
    """Where a secret comes from: an environment variable, a systemd credential or a file. Never the YAML itself.

    Looked up in that order; the first source that holds a value wins. A `file` that does not exist holds no
    value; one that exists but cannot be read raises OSError (a wrong owner must not look like "no password").
    """

    model_config = _FROZEN
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Name of a systemd credential (LoadCredential=NAME:/path): read from $CREDENTIALS_DIRECTORY/NAME.
    credential: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")
    file: Path | None = None

    @model_validator(mode="after")
    def _has_a_source(self) -> Secret:
        if not (self.env or self.credential or self.file):
            raise ValueError("indiquez d'où vient le secret : env, credential ou file (jamais la valeur elle-même)")
        return self

    def read(self) -> str | None:
        if self.env and os.environ.get(self.env):
            return os.environ[self.env]
        directory = os.environ.get(CREDENTIALS_DIRECTORY)
        if self.credential and directory and (Path(directory) / self.credential).is_file():
            return _secret_text(Path(directory) / self.credential)
        if self.file:
            try:
                return _secret_text(self.file)
            except FileNotFoundError:
                return None
        return None

    def describe(self) -> str:
        """Where the secret is looked for, for messages (never its value)."""
        where = []
        if self.env:
            where.append(f"variable {self.env}")
        if self.credential:
            where.append(f"credential systemd {self.credential}")
        if self.file:
            where.append(f"fichier {self.file}")
        return ", ".join(where)


# Values that are examples, not secrets (compared lower-cased; a value containing one of the first group is refused).
_PLACEHOLDER_PARTS = ("changeme", "change-me", "change_me", "changez", "placeholder", "remplacer", "replace-me",
                      "replace_me", "example", "exemple", "xxxx", "todo", "secret-here")
_PLACEHOLDER_VALUES = frozenset({"secret", "password", "passw0rd", "motdepasse", "mot-de-passe", "admin", "root",
                                 "copeau", "mosquitto", "influxdb", "test", "demo", "123456", "12345678",
                                 "azerty", "qwerty"})
MIN_PASSWORD_LENGTH = 12


def secret_problem(value: str, *, min_length: int = 1) -> str | None:
    """Why `value` cannot be a production secret (French), or None. Never quotes the value."""
    lowered = value.strip().lower()
    if not lowered:
        return "le secret est vide"
    if (
        lowered in _PLACEHOLDER_VALUES
        or any(part in lowered for part in _PLACEHOLDER_PARTS)
        or (lowered.startswith("<") and lowered.endswith(">"))
        or len(set(lowered)) < 4
    ):
        return "le secret est une valeur d'exemple, pas un vrai secret (`copeau security secrets` en génère)"
    if len(value) < min_length:
        return f"le secret est trop court (au moins {min_length} caractères ; `copeau security secrets` en génère)"
    return None


class MqttAccount(BaseModel):
    """An MQTT user name and where its password comes from."""

    model_config = _FROZEN
    # A slug: user names are written into the broker's ACL, where `/`, `+` or `#` would change the rules.
    username: Slug
    password: Secret


class CollectorAccount(BaseModel):
    """A collector's MQTT account. Its user name is the collector's id (`copeau collector --id ID`): the broker's
    ACL lets it publish the events of `machines` only, and its own status (`…/collectors/%u/status`)."""

    model_config = _FROZEN
    id: Slug
    password: Secret
    machines: list[Slug] = Field(min_length=1)


class BadgeReaderAccount(BaseModel):
    """A hardware badge reader at a machine. Its user name is the machine's id (`…/%u/badge` in the ACL)."""

    model_config = _FROZEN
    machine: Slug
    password: Secret


class MqttAccounts(BaseModel):
    """Production profile: one MQTT account per role. `copeau security mosquitto` (or the managed broker) turns
    them into the broker's password file and ACL."""

    model_config = _FROZEN
    gateway: MqttAccount
    web: MqttAccount | None = None
    collectors: list[CollectorAccount] = Field(min_length=1)
    badge_readers: list[BadgeReaderAccount] = []


class MqttTls(BaseModel):
    """MQTT over TLS. Clients check the broker's certificate against `ca_file`; the managed broker presents
    `cert_file` with `key_file` (an external broker has its own settings)."""

    model_config = _FROZEN
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file et key_file vont ensemble (le certificat du broker et sa clé privée)")
        return self


class MqttSettings(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = Field(default=11883, ge=1, le=65535)
    username: str | None = None
    password: Secret = Secret(env="COPEAU_MQTT_PASSWORD")
    keepalive_s: int = Field(default=15, ge=5, le=600)
    # Managed broker only: how much a disconnected durable subscriber (the gateway) may have queued.
    max_queued_mb: int = Field(default=512, ge=1)
    accounts: MqttAccounts | None = None  # production profile: one account per role
    tls: MqttTls | None = None


InfluxUser = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]


class InfluxAccount(BaseModel):
    model_config = _FROZEN
    username: InfluxUser
    password: Secret


class InfluxAccounts(BaseModel):
    """Production profile: InfluxDB 1.x users, each with the least it needs on `influxdb.database`."""

    model_config = _FROZEN
    # Creates the database and the users below (managed influxd, `copeau security influxdb`); no service uses it.
    admin: InfluxAccount | None = None
    gateway: InfluxAccount  # WRITE: stores the events
    web: InfluxAccount | None = None  # ALL (read and write): reads parts, writes order progress
    grafana: InfluxAccount | None = None  # READ: the dashboards


class InfluxSettings(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = Field(default=18086, ge=1, le=65535)
    database: Slug = "copeau"
    username: str | None = None
    password: Secret = Secret(env="COPEAU_INFLUXDB_PASSWORD")
    # Managed influxd only: its backup/RPC port (it always opens one).
    rpc_port: int = Field(default=18088, ge=1, le=65535)
    accounts: InfluxAccounts | None = None  # production profile: one account per role

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
    # The outbox's limit: topic + payload of the queued events (the SQLite file takes 1.2 to 2.5 times this, see
    # docs/configuration.md).
    # Beyond it the oldest telemetry is shed (never a part or an alarm): see collectors/outbox.py.
    # 512 MB is about two weeks of a 20-machine workshop whose broker is unreachable.
    outbox_max_mb: float = Field(default=512.0, gt=0)
    # Free space to leave on the outbox's filesystem: below it the outbox stops growing (it sheds instead).
    # 0 = no such check.
    spool_min_free_mb: float = Field(default=512.0, ge=0)
    # How often the collector publishes its health report (copeau/v1/<site>/health/collector/<id>).
    health_interval_s: float = Field(default=10.0, ge=0.05, le=3600)
    # Acknowledged events are kept this long (in broker uptime after their PUBACK) and published again after every
    # new connection to the broker: a broker killed with kill -9 (or a power cut) loses what it acknowledged since
    # its last save, which mosquitto 2.0.11 does about every 2 s with `autosave_interval 1`. 10 s is five save
    # periods: room for a slow disk. 0 = delete at the PUBACK (no replay). See collectors/outbox.py.
    replay_window_s: float = Field(default=10.0, ge=0, le=3600)


class GatewaySettings(BaseModel):
    model_config = _FROZEN
    client_id: Slug = "copeau-gateway"
    # Session kept by the broker while the gateway is away (MQTT 5 session expiry), in hours.
    session_expiry_h: int = Field(default=168, ge=1)
    # Lines per InfluxDB write at most; the gateway holds at most twice this many received messages. 2000 rather
    # than 5000: a peak RSS of about 50 MiB instead of 57-59, for a saturated rate 9-12 % lower (BENCHMARKS.md).
    max_batch_lines: int = Field(default=2000, ge=1, le=100_000)
    # How often the gateway publishes its health report (copeau/v1/<site>/health/gateway/<client_id>).
    health_interval_s: float = Field(default=10.0, ge=0.05, le=3600)
    # Several gateway processes (each with its own client_id) that name the same group split the stream between them
    # (an MQTT 5 shared subscription, $share/<group>/...); None: this gateway takes every message.
    shared_group: Slug | None = None


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
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: "Europe" is a folder
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
    _origin: ConfigOrigin | None = PrivateAttr(default=None)

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
                name_key = (m.url, m.browse_name or m.id)
                if name_key in names:
                    raise ValueError(f"machines: {m.id} et {names[name_key]} désignent la même machine sur {m.url}")
                names[name_key] = m.id
        if self.services.mode is ServicesMode.MANAGED and self.services.profile is Profile.DEMO:
            # Without authentication, a managed server must not be reachable from the network.
            for name, host in (("mqtt.host", self.mqtt.host), ("influxdb.host", self.influxdb.host)):
                if not _is_loopback(host):
                    raise ValueError(
                        f"{name}: en mode managed avec le profil demo, les services écoutent en local seulement "
                        "(127.0.0.1) ; passez services.profile à production pour les ouvrir au réseau"
                    )
        return self

    @model_validator(mode="after")
    def _production_checks(self) -> Workshop:
        if self.services.profile is Profile.PRODUCTION:
            _check_production(self)
        return self

    @property
    def production(self) -> bool:
        return self.services.profile is Profile.PRODUCTION

    @property
    def origin(self) -> ConfigOrigin | None:
        """The file and the lines this workshop was loaded from (None when built in code)."""
        return self._origin

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


def _check_production(w: Workshop) -> None:
    """The production profile's cross-checks. Messages name their field first, like the other cross-checks."""
    if w.mqtt.username:
        raise ValueError("mqtt.username: en profil production, chaque rôle a son compte : décrivez-les dans "
                         "mqtt.accounts (voir docs/configuration.md)")
    if w.influxdb.username:
        raise ValueError("influxdb.username: en profil production, chaque rôle a son compte : décrivez-les dans "
                         "influxdb.accounts (voir docs/configuration.md)")
    mqtt, influx = w.mqtt.accounts, w.influxdb.accounts
    if mqtt is None:
        raise ValueError("services.profile: le profil production demande mqtt.accounts (un compte MQTT par rôle : "
                         "gateway, web, collectors, badge_readers ; voir docs/configuration.md)")
    if influx is None:
        raise ValueError("services.profile: le profil production demande influxdb.accounts (admin, gateway, web, "
                         "grafana ; voir docs/configuration.md)")
    machine_ids = {m.id for m in w.machines}
    owner: dict[str, str] = {}
    for i, c in enumerate(mqtt.collectors):
        for j, m in enumerate(c.machines):
            where = f"mqtt.accounts.collectors[{i}].machines[{j}]"
            if m not in machine_ids:
                raise ValueError(f"{where}: machine « {m} » inconnue (elle doit figurer dans machines)")
            if m in owner:
                raise ValueError(f"{where}: « {m} » est déjà lue par le collecteur « {owner[m]} » (une machine, "
                                 "un seul collecteur)")
            owner[m] = c.id
    orphans = [m.id for m in w.machines if m.id not in owner]
    if orphans:
        raise ValueError("mqtt.accounts.collectors: aucun collecteur ne lit " + ", ".join(orphans)
                         + " : ajoutez-les aux machines d'un collecteur (sinon le broker refuse leurs événements)")
    # Every MQTT user name is unique. A machine's id is reserved for that machine's badge reader: the ACL lets
    # user %u publish on …/%u/badge, and a collector's id on …/collectors/%u/status.
    users: dict[str, str] = {}

    def claim(name: str, field: str, *, reader: bool = False) -> None:
        if name in users:
            raise ValueError(f"{field}: le nom d'utilisateur « {name} » est déjà celui de {users[name]}")
        if not reader and name in machine_ids:
            raise ValueError(f"{field}: « {name} » est l'id d'une machine, réservé à son lecteur de badges")
        users[name] = field

    claim(mqtt.gateway.username, "mqtt.accounts.gateway.username")
    if mqtt.web is not None:
        claim(mqtt.web.username, "mqtt.accounts.web.username")
    for i, c in enumerate(mqtt.collectors):
        claim(c.id, f"mqtt.accounts.collectors[{i}].id")
    for i, r in enumerate(mqtt.badge_readers):
        if r.machine not in machine_ids:
            raise ValueError(f"mqtt.accounts.badge_readers[{i}].machine: machine « {r.machine} » inconnue")
        claim(r.machine, f"mqtt.accounts.badge_readers[{i}].machine", reader=True)
    seen: dict[str, str] = {}
    for role in ("admin", "gateway", "web", "grafana"):
        account = getattr(influx, role)
        if account is None:
            continue
        if account.username in seen:
            raise ValueError(f"influxdb.accounts.{role}.username: « {account.username} » est déjà le compte "
                             f"{seen[account.username]} (un compte par rôle, chacun ses droits)")
        seen[account.username] = role
    if w.services.mode is ServicesMode.MANAGED:
        if influx.admin is None:
            raise ValueError("influxdb.accounts.admin: en mode managed, Copeau crée la base et les comptes InfluxDB : "
                             "il lui faut le compte administrateur")
        if w.mqtt.tls is not None and w.mqtt.tls.cert_file is None:
            raise ValueError("mqtt.tls.cert_file: le broker géré par Copeau a besoin de son certificat et de sa clé "
                             "(cert_file, key_file)")


# --------------------------------------------------------------------------------------------------------
# Loading, with file:line:field errors


@dataclass(frozen=True)
class ConfigOrigin:
    """Where a workshop was loaded from: the file, and the line of every field written in it."""

    file: str
    lines: dict[tuple[str | int, ...], int]

    def problem(self, loc: tuple[str | int, ...], message: str) -> ConfigProblem:
        return ConfigProblem(self.file, _line_for(loc, self.lines), _field_name(loc), message)


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


# Nesting deeper than this is refused before the YAML reader sees it: a workshop file needs fewer than 10 levels,
# and a few hundred would exhaust Python's recursion in PyYAML (a RecursionError instead of a line).
_MAX_DEPTH = 50
# Line breaks as YAML counts them (PyYAML's Mark.line).
_LINE_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one), and reports a value that its
    tag cannot build (`!!int x`, `!!timestamp 2001-13-45`) as a YAML error at the value's line, where PyYAML
    would raise a bare ValueError or TypeError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"valeur illisible ({node.tag}) : {exc}", node.start_mark
            ) from exc


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "une clé doit être un nom simple, pas une liste ni un bloc", key_node.start_mark
            ) from None
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


def _lines(node: yaml.Node, path: _Path, out: dict[_Path, int], walked: set[int] | None = None) -> None:
    """Map each field path to the line where it is written (the key's line, 1-based).

    A node reached again through an alias is not walked again (its fields are found at the alias's line): nine
    aliases of nine aliases would otherwise be walked 9**n times, and an alias inside its own anchor forever."""
    walked = set() if walked is None else walked
    out.setdefault(path, node.start_mark.line + 1)
    if id(node) in walked:
        return
    walked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(key_node.value))
            out[child] = key_node.start_mark.line + 1
            _lines(value_node, child, out, walked)
            # A scalar value's own line is the key's line; nested ones are set by the recursion.
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            out[child] = item.start_mark.line + 1
            _lines(item, child, out, walked)


_OPENS = (yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken, yaml.FlowSequenceStartToken,
          yaml.FlowMappingStartToken)
_CLOSES = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)


def _check_depth(text: str) -> None:
    """Raise a YAML error at the line where the nesting goes deeper than _MAX_DEPTH (tokens only: no recursion)."""
    depth = 0
    for token in yaml.scan(text, Loader=_LineLoader):
        if isinstance(token, _OPENS):
            depth += 1
            if depth > _MAX_DEPTH:
                raise yaml.MarkedYAMLError(None, None, f"plus de {_MAX_DEPTH} niveaux imbriqués", token.start_mark)
        elif isinstance(token, _CLOSES):
            depth -= 1


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
        _check_depth(text)
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([ConfigProblem(file, line, "", f"YAML invalide : {exc.problem}")]) from exc
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, a control character)
        line = len(_LINE_BREAKS.split(text[: exc.position]))
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError([ConfigProblem(file, line, "", f"YAML invalide : caractère interdit U+{code:04X}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, 1, "", "le fichier doit décrire un bloc de champs (site, machines…)")])
    lines: dict[_Path, int] = {}
    if node is not None:
        _lines(node, (), lines)
    try:
        workshop = Workshop.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(list(_problems(exc, file, lines))) from exc
    workshop._origin = ConfigOrigin(file, lines)
    if workshop.production:
        problems = secret_problems(workshop)
        if problems:
            raise ConfigError(problems)
    return workshop


# --------------------------------------------------------------------------------------------------------
# Secrets in the production profile


def iter_secrets(model: BaseModel, path: _Path = ()) -> Iterator[tuple[_Path, Secret]]:
    """Every Secret of a model, with its field path (('mqtt', 'accounts', 'gateway', 'password'), ...)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        here = (*path, name)
        if isinstance(value, Secret):
            yield here, value
        elif isinstance(value, BaseModel):
            yield from iter_secrets(value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from iter_secrets(item, (*here, i))


def secret_problems(workshop: Workshop, *, required: Iterable[_Path] = ()) -> list[ConfigProblem]:
    """Production profile: the secrets this process can read must be real ones (not empty, not an example, MQTT
    and InfluxDB passwords long enough); the `required` ones must also be there. Messages never hold a value."""
    needed = set(required)
    origin = workshop.origin or ConfigOrigin("(configuration)", {})
    problems: list[ConfigProblem] = []
    for loc, secret in iter_secrets(workshop):
        try:
            value = secret.read()
        except OSError as exc:
            if loc in needed:
                problems.append(origin.problem(loc, f"secret illisible ({secret.describe()}) : {exc.strerror}"))
            continue
        if value is None:
            if loc in needed:
                problems.append(origin.problem(loc, f"secret introuvable ({secret.describe()})"))
            continue
        account_password = loc[0] in ("mqtt", "influxdb")
        why = secret_problem(value, min_length=MIN_PASSWORD_LENGTH if account_password else 1)
        if why:
            problems.append(origin.problem(loc, f"{why} ({secret.describe()})"))
    return problems

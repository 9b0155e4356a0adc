"""The event contract: what a collector publishes and what the gateway accepts.

One module, shared by every part of Copeau, so that the producer and the consumer cannot drift apart.
`docs/data-contract.md` describes the same thing for people; keep both in step.

Topics (MQTT, QoS 1)::

    copeau/v1/<site>/<machine>/<kind>                      one event, JSON (Event below)
    copeau/v1/<site>/collectors/<collector>/status         retained "online"/"offline" (last will)

Control topics (not events; the gateway does not store them)::

    copeau/v1/<site>/<machine>/context   retained: the job running on the machine now (JobContext below)
    copeau/v1/<site>/<machine>/badge     a badge scanned by a hardware reader at the machine (BadgeScan)

Health (Copeau's own numbers; the gateway stores them in the `copeau_health` measurement)::

    copeau/v1/<site>/health/<service-kind>/<service-id>    retained: CollectorHealth or GatewayHealth, JSON

A health topic has four levels after `copeau/v1`, so the event subscription (`copeau/v1/+/+/+`) never
matches it and a machine id can never collide with it; the gateway subscribes to it separately.

Every event carries its time (`ts`, integer nanoseconds since the Unix epoch, UTC) and a per-machine
sequence number (`seq`), both fixed at the source. A redelivered event is byte-identical, so the gateway
writes the same InfluxDB point again and the store keeps it once.
"""

from __future__ import annotations

import functools
import re
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator, with_config
from typing_extensions import TypedDict

TOPIC_ROOT = "copeau/v1"
SCHEMA_VERSION: Literal[1] = 1
# Subscription that matches every event topic and nothing else (status topics have one level more).
EVENT_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/+"
# Every service's health report (four levels after the root: never matched by EVENT_SUBSCRIPTION).
HEALTH_SUBSCRIPTION = f"{TOPIC_ROOT}/+/health/+/+"

INT64_MAX = 2**63 - 1  # InfluxDB integers are signed 64-bit; a larger value would be refused with a 400

# Any timestamp before 2000-01-01 or after 2200-01-01 is a bug at the source, not a time.
_MIN_TS = 946_684_800 * 10**9
_MAX_TS = 7_258_118_400 * 10**9

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_SLUG = re.compile(SLUG_PATTERN)


class ControlKind(StrEnum):
    CONTEXT = "context"
    BADGE = "badge"


class EventKind(StrEnum):
    STATE = "state"
    CYCLE = "cycle"
    PART = "part"
    ALARM = "alarm"


class MachineState(StrEnum):
    """What a machine is doing, as seen by its collector."""

    OFFLINE = "offline"  # the collector cannot read the machine (network, power, module down)
    IDLE = "idle"
    RUNNING = "running"  # a cycle (program) is running
    ALARM = "alarm"


class CyclePhase(StrEnum):
    START = "start"
    END = "end"


class CycleOutcome(StrEnum):
    COMPLETED = "completed"
    ABORTED = "aborted"  # the cycle stopped and no part was counted with it (alarm, reset, power loss)


Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class StateData(BaseModel):
    model_config = _FROZEN
    state: MachineState
    previous: MachineState | None = None


class CycleData(BaseModel):
    model_config = _FROZEN
    phase: CyclePhase
    # Only on phase=end: when the cycle started (ns), how long it ran, and how it ended.
    started_ts: int | None = Field(default=None, ge=0, le=INT64_MAX)
    duration_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    outcome: CycleOutcome | None = None

    @model_validator(mode="after")
    def _end_has_duration(self) -> CycleData:
        if self.phase is CyclePhase.END and (self.duration_s is None or self.started_ts is None):
            raise ValueError("a cycle end carries started_ts and duration_s")
        return self


class PartData(BaseModel):
    model_config = _FROZEN
    count: int = Field(ge=0, le=1_000_000)  # parts made, counted by this event (counter delta)
    # Of those, or of parts counted earlier, how many were declared good by the machine (its good-part counter
    # moved by this much); None when the machine has no such counter. Scrap = sum(count) - sum(good).
    good: int | None = Field(default=None, ge=0, le=1_000_000)
    counter: int | None = Field(default=None, ge=0, le=INT64_MAX)  # raw counter value read at the source, if any
    reset: bool = False  # the hardware counter went back to 0 (power cycle) before this reading
    wrapped: bool = False  # the counter wrapped past its maximum before this reading
    rebuilt: bool = False  # parts made while the machine could not be read, rebuilt from its counter

    @model_validator(mode="after")
    def _counts_something(self) -> PartData:
        if self.count == 0 and not self.good:
            raise ValueError("a part event counts at least one part (count or good)")
        return self


class AlarmData(BaseModel):
    model_config = _FROZEN
    active: bool
    code: str | None = Field(default=None, max_length=64)
    text: str | None = Field(default=None, max_length=256)


# A pseudonymous apprentice code: upper-case letters, digits and dashes, never a name (apprentices are minors).
APPRENTICE_CODE_PATTERN = r"^[A-Z0-9][A-Z0-9-]{1,15}$"


class EventContext(BaseModel):
    """The job an event belongs to, stamped by the collector at the source from the machine's JobContext."""

    model_config = _FROZEN
    order: str | None = Field(default=None, min_length=1, max_length=64)  # customer order reference
    operation: int | None = Field(default=None, ge=0, le=10_000)  # operation sequence within the order
    apprentice: str | None = Field(default=None, pattern=APPRENTICE_CODE_PATTERN)


class JobContext(BaseModel):
    """Retained on copeau/v1/<site>/<machine>/context: what the machine is working on since `ts`.
    All of order/operation/apprentice are None when no job is running."""

    model_config = _FROZEN
    v: Literal[1] = 1
    site: Slug
    machine: Slug
    ts: int = Field(ge=_MIN_TS, le=_MAX_TS)
    context: EventContext = EventContext()

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class BadgeScan(BaseModel):
    """Published by a hardware badge reader on copeau/v1/<site>/<machine>/badge."""

    model_config = _FROZEN
    v: Literal[1] = 1
    code: str = Field(min_length=1, max_length=64)
    ts: int | None = Field(default=None, ge=_MIN_TS, le=_MAX_TS)


EventData = StateData | CycleData | PartData | AlarmData
_DATA_MODEL: dict[EventKind, type[BaseModel]] = {
    EventKind.STATE: StateData,
    EventKind.CYCLE: CycleData,
    EventKind.PART: PartData,
    EventKind.ALARM: AlarmData,
}


class Event(BaseModel):
    """One event from one machine. Immutable; serialised with `encode()`."""

    model_config = _FROZEN
    v: Literal[1] = SCHEMA_VERSION
    site: Slug
    machine: Slug
    kind: EventKind
    seq: int = Field(ge=0, le=INT64_MAX)
    ts: int = Field(ge=_MIN_TS, le=_MAX_TS)
    data: StateData | CycleData | PartData | AlarmData
    ctx: EventContext | None = None  # the job it belongs to, when one was running

    @model_validator(mode="before")
    @classmethod
    def _data_matches_kind(cls, raw: object) -> object:
        # Choose the data model from `kind` so that a part payload can never be read as a state.
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            try:
                model = _DATA_MODEL[EventKind(str(raw.get("kind")))]
            except ValueError:
                return raw
            try:
                return {**raw, "data": model.model_validate(raw["data"])}
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in ("data", *first["loc"]))
                raise ValueError(f"{where}: {first['msg']}") from None
        return raw

    @model_validator(mode="after")
    def _data_is_of_kind(self) -> Event:
        # Also for events built in Python with a data object (the before-validator sees only dicts).
        if not isinstance(self.data, _DATA_MODEL[self.kind]):
            # ValueError, not TypeError: pydantic turns only ValueError into a ValidationError.
            raise ValueError(  # noqa: TRY004
                f"data: a {self.kind.value} event carries {_DATA_MODEL[self.kind].__name__}"
            )
        return self

    @property
    def topic(self) -> str:
        return event_topic(self.site, self.machine, self.kind)

    def encode(self) -> bytes:
        """Compact JSON, stable for a given event (same bytes on every re-send)."""
        return self.model_dump_json(exclude_none=True).encode()


class ContractError(ValueError):
    """A payload or topic that does not follow the contract. Carries the reason, for the dead-letter log."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.topic = topic


def event_topic(site: str, machine: str, kind: EventKind | str) -> str:
    return f"{TOPIC_ROOT}/{site}/{machine}/{EventKind(kind).value}"


def control_topic(site: str, machine: str, kind: ControlKind | str) -> str:
    return f"{TOPIC_ROOT}/{site}/{machine}/{ControlKind(kind).value}"


_CONTROL_KINDS = frozenset(kind.value for kind in ControlKind)


@functools.lru_cache(maxsize=4096)
def is_control_topic(topic: str) -> bool:
    """A context or badge topic: matched by the event subscription, but not an event. (Remembered: the gateway
    asks it of every message, and a workshop's topics are few.)"""
    parts = topic.split("/")
    return len(parts) == 5 and parts[4] in _CONTROL_KINDS


def status_topic(site: str, collector: str) -> str:
    return f"{TOPIC_ROOT}/{site}/collectors/{collector}/status"


def is_slug(text: str) -> bool:
    return bool(_SLUG.match(text))


# Speed (issue #7, BENCHMARKS.md): the gateway decodes every message, and building an `Event` (three pydantic
# models, through Python validators) costs about 13 µs where validating the same JSON into plain dicts costs 3 µs
# in pydantic-core alone (even `model_construct` costs more than that). So the gateway calls `decode_event_fields`:
# `_FAST_EVENT` has the same fields with the same constraints, as TypedDicts discriminated on `kind`, then the two
# rules the data models check in Python; whatever it does not accept goes through `decode_event`, which decides
# and words the refusal. tests/unit/test_fast_decode.py checks on fuzzed payloads that both accept the same
# messages with the same values, and that the gateway's line is the same byte for byte.

_Int64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
_NO_EXTRA = ConfigDict(extra="forbid")


@with_config(_NO_EXTRA)
class _StateDict(TypedDict):
    state: MachineState
    previous: NotRequired[MachineState | None]


@with_config(_NO_EXTRA)
class _CycleDict(TypedDict):
    phase: CyclePhase
    started_ts: NotRequired[_Int64 | None]
    duration_s: NotRequired[Annotated[float, Field(ge=0, allow_inf_nan=False)] | None]
    outcome: NotRequired[CycleOutcome | None]


_Count1M = Annotated[int, Field(ge=0, le=1_000_000)]


@with_config(_NO_EXTRA)
class _PartDict(TypedDict):
    count: _Count1M
    good: NotRequired[_Count1M | None]
    counter: NotRequired[_Int64 | None]
    reset: NotRequired[bool]
    wrapped: NotRequired[bool]
    rebuilt: NotRequired[bool]


@with_config(_NO_EXTRA)
class _AlarmDict(TypedDict):
    active: bool
    code: NotRequired[Annotated[str, Field(max_length=64)] | None]
    text: NotRequired[Annotated[str, Field(max_length=256)] | None]


@with_config(_NO_EXTRA)
class _ContextDict(TypedDict):
    order: NotRequired[Annotated[str, Field(min_length=1, max_length=64)] | None]
    operation: NotRequired[Annotated[int, Field(ge=0, le=10_000)] | None]
    apprentice: NotRequired[Annotated[str, Field(pattern=APPRENTICE_CODE_PATTERN)] | None]


class _EventBaseDict(TypedDict):
    v: NotRequired[Literal[1]]
    site: Slug
    machine: Slug
    seq: _Int64
    ts: Annotated[int, Field(ge=_MIN_TS, le=_MAX_TS)]
    ctx: NotRequired[_ContextDict | None]


@with_config(_NO_EXTRA)
class _StateEventDict(_EventBaseDict):
    kind: Literal[EventKind.STATE]
    data: _StateDict


@with_config(_NO_EXTRA)
class _CycleEventDict(_EventBaseDict):
    kind: Literal[EventKind.CYCLE]
    data: _CycleDict


@with_config(_NO_EXTRA)
class _PartEventDict(_EventBaseDict):
    kind: Literal[EventKind.PART]
    data: _PartDict


@with_config(_NO_EXTRA)
class _AlarmEventDict(_EventBaseDict):
    kind: Literal[EventKind.ALARM]
    data: _AlarmDict


_FAST_EVENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[_StateEventDict | _CycleEventDict | _PartEventDict | _AlarmEventDict, Field(discriminator="kind")]
)


def _fast_fields(payload: bytes) -> dict[str, Any] | None:
    """The event as plain values when the fast path accepts it; None to let `Event.model_validate_json` decide."""
    try:
        raw: dict[str, Any] = _FAST_EVENT.validate_json(payload)
    except ValidationError:
        return None
    data = raw["data"]
    kind = raw["kind"]
    if kind is EventKind.CYCLE:
        if data["phase"] is CyclePhase.END and (data.get("duration_s") is None or data.get("started_ts") is None):
            return None
    elif kind is EventKind.PART and data["count"] == 0 and not data.get("good"):
        return None
    return raw


@functools.lru_cache(maxsize=4096)
def _check_topic(topic: str) -> tuple[str, str, str]:
    """(site, machine, kind) named by an event topic. Remembered (a workshop's topics are few; a refusal is not
    remembered: lru_cache keeps no exception)."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise ContractError(f"topic is not {TOPIC_ROOT}/<site>/<machine>/<kind>", topic=topic)
    return parts[2], parts[3], parts[4]


def _check_topic_matches(named: tuple[str, str, str], site: str, machine: str, kind: EventKind) -> None:
    # EventKind is a StrEnum: it equals its value, so the tuples compare without building a new one of strings.
    if named != (site, machine, kind):
        t_site, t_machine, t_kind = named
        raise ContractError(
            f"topic says {t_site}/{t_machine}/{t_kind} but payload says {site}/{machine}/{kind}",
            topic=f"{TOPIC_ROOT}/{t_site}/{t_machine}/{t_kind}",
        )


def decode_event(topic: str, payload: bytes) -> Event:
    """Validate one MQTT message against the contract. Raises ContractError with a readable reason."""
    parts = _check_topic(topic)
    try:
        event = Event.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in first["loc"])
        if not where and message.startswith("data"):  # our own check already names the field
            raise ContractError(message, topic=topic) from exc
        raise ContractError(f"{where or 'payload'}: {message}", topic=topic) from exc
    _check_topic_matches(parts, event.site, event.machine, event.kind)
    return event


def decode_event_fields(topic: str, payload: bytes) -> dict[str, Any]:
    """`decode_event` for the gateway's hot path: the same messages accepted, the same refusals (ContractError),
    but the event as plain values rather than models: `kind` and the other enums as enum members, `data` and
    `ctx` as dicts (a key may be missing or None where the model has a default or None)."""
    parts = _check_topic(topic)
    fields = _fast_fields(payload)
    if fields is None:  # refused, or a form only the full path takes: it decides, and words the refusal
        fields = decode_event(topic, payload).model_dump()
    _check_topic_matches(parts, fields["site"], fields["machine"], fields["kind"])
    return fields


# --------------------------------------------------------------------------------------------------------
# Health: Copeau's own numbers, published by every service every `health_interval_s` (retained, QoS 1)


class ServiceKind(StrEnum):
    COLLECTOR = "collector"
    GATEWAY = "gateway"


class SpoolLevel(IntEnum):
    """How the collector's outbox is doing (an integer, so that an alert can compare it: `> 0`)."""

    OK = 0
    LIMIT = 1  # the outbox reached its limit: the oldest telemetry is shed (part and alarm events never)
    FULL = 2  # the disk refused a write: events are held in memory and retried, nothing is dropped silently


_Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
_Ts = Annotated[int, Field(ge=_MIN_TS, le=_MAX_TS)]


class CollectorMetrics(BaseModel):
    """One collector's numbers. Counts marked *process* restart from 0 with the process; the others do not."""

    model_config = _FROZEN
    outbox_events: _Count  # events waiting in the outbox (not yet acknowledged by the broker)
    outbox_bytes: _Count  # their size, topic + payload: what `collector.outbox_max_mb` limits
    outbox_file_bytes: _Count  # the outbox's SQLite files on disk (database and WAL)
    outbox_limit_bytes: _Count  # the limit in force at the last commit (lower than the setting when disk is low)
    disk_free_bytes: _Count  # free space on the outbox's filesystem
    spool_level: SpoolLevel
    shed_events: _Count  # events shed since the outbox file was created (all machines and kinds)
    unsaved_events: _Count  # events held in memory because the disk refused them (spool_level 2)
    published: _Count  # process: messages handed to the broker (re-sends count again)
    acknowledged: _Count  # process: messages the broker acknowledged
    mqtt_connected: bool
    mqtt_reconnects: _Count  # process
    uptime_s: float = Field(ge=0, allow_inf_nan=False)


class CollectorMachineHealth(BaseModel):
    """What one collector knows about one machine."""

    model_config = _FROZEN
    readable: bool  # the last attempt to read it succeeded
    next_seq: _Count  # the seq its next event will get: stored + shed events of the machine = next_seq
    reconnects: _Count  # process: times it became readable again after it could not be read
    polls: _Count  # process: samples handled
    missed_intervals: _Count  # process: polls that came too late to keep the interval
    last_read_ts: _Ts | None = None  # time of the last good reading
    last_event_ts: _Ts | None = None  # time of the last event derived (the machine's activity)
    # The same as ages at the report's `ts`, in seconds (≥ 0), for alerts: InfluxQL cannot subtract from now().
    last_read_age_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    last_event_age_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    shed_cycle_start: _Count = 0  # events of the machine shed, by class (see collectors/outbox.py)
    shed_state: _Count = 0
    shed_cycle_end: _Count = 0


class GatewayMetrics(BaseModel):
    """One gateway's numbers, since its process started."""

    model_config = _FROZEN
    received: _Count  # event messages handed over by the broker (re-deliveries count again)
    stored: _Count  # event points InfluxDB accepted
    dead_letters: _Count  # messages written to the dead-letter file
    write_retries: _Count  # InfluxDB requests made again after a failure
    batches: _Count
    queue_depth: _Count  # messages received and not yet written
    health_stored: _Count  # health points InfluxDB accepted
    mqtt_connected: bool
    mqtt_reconnects: _Count
    influx_ok: bool  # False while a write to InfluxDB is being retried
    uptime_s: float = Field(ge=0, allow_inf_nan=False)


class GatewayMachineHealth(BaseModel):
    model_config = _FROZEN
    received: _Count  # event messages of the machine received
    last_event_ts: _Ts | None = None  # source time of the newest event received
    last_received_ts: _Ts | None = None  # the gateway's clock when it received the last event
    last_received_age_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # at the report's `ts`


class _HealthBase(BaseModel):
    model_config = _FROZEN
    v: Literal[1] = 1
    site: Slug
    service: Slug  # the collector's id, or the gateway's client id
    ts: int = Field(ge=_MIN_TS, le=_MAX_TS)  # when the numbers were taken, fixed at the source
    interval_s: float = Field(gt=0, allow_inf_nan=False)  # the next report is due this much later

    @property
    def topic(self) -> str:
        return health_topic(self.site, self.kind, self.service)  # type: ignore[attr-defined]

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class CollectorHealth(_HealthBase):
    kind: Literal[ServiceKind.COLLECTOR] = ServiceKind.COLLECTOR
    metrics: CollectorMetrics
    machines: dict[Slug, CollectorMachineHealth] = Field(default_factory=dict)


class GatewayHealth(_HealthBase):
    kind: Literal[ServiceKind.GATEWAY] = ServiceKind.GATEWAY
    metrics: GatewayMetrics
    machines: dict[Slug, GatewayMachineHealth] = Field(default_factory=dict)


Health = Annotated[CollectorHealth | GatewayHealth, Field(discriminator="kind")]
_HEALTH: TypeAdapter[CollectorHealth | GatewayHealth] = TypeAdapter(Health)


def age_s(now_ns: int, then_ns: int | None) -> float | None:
    """Seconds from `then_ns` to `now_ns` (≥ 0: a source clock slightly ahead gives 0), None when unknown."""
    return None if then_ns is None else round(max(0, now_ns - then_ns) / 1e9, 3)


def health_topic(site: str, kind: ServiceKind | str, service: str) -> str:
    return f"{TOPIC_ROOT}/{site}/health/{ServiceKind(kind).value}/{service}"


@functools.lru_cache(maxsize=4096)
def is_health_topic(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) == 6 and "/".join(parts[:2]) == TOPIC_ROOT and parts[3] == "health"


def decode_health(topic: str, payload: bytes) -> CollectorHealth | GatewayHealth:
    """Validate one health report against the contract. Raises ContractError with a readable reason."""
    if not is_health_topic(topic):
        raise ContractError(f"topic is not {TOPIC_ROOT}/<site>/health/<kind>/<service>", topic=topic)
    try:
        health = _HEALTH.validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ContractError(f"{where or 'payload'}: {message}", topic=topic) from exc
    _, _, site, _, kind, service = topic.split("/")
    if (site, kind, service) != (health.site, health.kind.value, health.service):
        raise ContractError(
            f"topic says {site}/{kind}/{service} but payload says {health.site}/{health.kind}/{health.service}",
            topic=topic,
        )
    return health

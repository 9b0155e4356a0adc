"""JSON shapes of the API, one family per resource (`…In` for what comes in, `…Public` for what goes out).

An apprentice's name never appears in a public shape except where a person at the school reads it (the
kiosk's greeting, the maîtres' list of apprentices); machines and dashboards get the pseudonymous code.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from pydantic import BaseModel, ConfigDict, Field

from orders.models import Apprentice, Order, ScrapReason, WorkSession
from orders.progress import Progress
from orders.station import JobView, StationView, Step
from orders.texts import Lang

_IN = ConfigDict(extra="forbid")


# -- kiosk


class ScanIn(BaseModel):
    model_config = _IN
    code: str = Field(min_length=1, max_length=100, description="What the reader typed: a badge or a job card")


class JobChoiceIn(BaseModel):
    model_config = _IN
    order: str = Field(min_length=1, max_length=64)
    operation: int = Field(ge=0, le=10_000)


class DeclarationIn(BaseModel):
    model_config = _IN
    good: int = Field(ge=0, le=1_000_000)
    scrap: dict[str, int] = Field(default_factory=dict, description="Scrap parts by reason code, e.g. {\"COTE\": 2}")


class JobPublic(BaseModel):
    code: str
    order: str
    operation: int
    customer: str
    part_number: str
    quantity: int
    due_date: date
    machine_kind: str
    standard_cycle_s: float

    @classmethod
    def of(cls, job: JobView) -> JobPublic:
        return cls(**{**job.__dict__, "due_date": date.fromisoformat(job.due_date)})


class KioskState(BaseModel):
    """What a kiosk shows. `step`: idle → identified (badge scanned) → running (job started)."""

    machine: str
    machine_name: str
    machine_kind: str
    step: Step
    first_name: str | None = None
    job: JobPublic | None = None
    started_at: datetime | None = None
    session_parts: int | None = None
    job_good: int | None = None
    last_cycle_s: float | None = None
    counts_ok: bool = True
    ask_declaration: bool = False
    planned: list[JobPublic] = []
    ended_session: int | None = None

    @classmethod
    def of(cls, view: StationView) -> KioskState:
        return cls(
            machine=view.machine, machine_name=view.machine_name, machine_kind=view.machine_kind, step=view.step,
            first_name=view.first_name, job=JobPublic.of(view.job) if view.job else None,
            started_at=view.started_at, session_parts=view.session_parts, job_good=view.job_good,
            last_cycle_s=view.last_cycle_s, counts_ok=view.counts_ok, ask_declaration=view.ask_declaration,
            planned=[JobPublic.of(j) for j in view.planned], ended_session=view.ended_session,
        )


# -- management


class LoginIn(BaseModel):
    model_config = _IN
    login: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=200)


class LoginPublic(BaseModel):
    login: str
    display_name: str
    csrf: str = Field(description="Send it back in the X-CSRF-Token header of requests that change something")


class ApprenticeCreate(BaseModel):
    model_config = _IN
    first_name: str = Field(min_length=1, max_length=60)
    last_name: str = Field(min_length=1, max_length=60)
    badge: str = Field(min_length=3, max_length=64)


class ApprenticePublic(BaseModel):
    id: int
    first_name: str
    last_name: str
    badge: str
    code: str = Field(description="Pseudonymous code: the only identity that reaches MQTT and InfluxDB")
    active: bool

    @classmethod
    def of(cls, a: Apprentice) -> ApprenticePublic:
        return cls(id=a.id, first_name=a.first_name, last_name=a.last_name, badge=a.badge, code=a.code,
                   active=a.active)


class OperationPublic(BaseModel):
    sequence: int
    job_code: str
    machine_kind: str
    standard_cycle_s: float
    setup_s: float


class OrderPublic(BaseModel):
    reference: str
    customer: str
    part_number: str
    quantity: int
    due_date: date
    closed: bool
    operations: list[OperationPublic]

    @classmethod
    def of(cls, order: Order) -> OrderPublic:
        return cls(reference=order.reference, customer=order.customer.name, part_number=order.part_number,
                   quantity=order.quantity, due_date=order.due_date, closed=order.closed_at is not None,
                   operations=[OperationPublic(sequence=op.sequence, job_code=op.job_code,
                                               machine_kind=op.machine_kind, standard_cycle_s=op.standard_cycle_s,
                                               setup_s=op.setup_s) for op in order.operations])


class ImportPublic(BaseModel):
    imported: list[OrderPublic]


class ProgressPublic(BaseModel):
    order: str
    operation: int
    quantity: int
    made: int
    good: int
    scrap: int
    remaining: int
    rate_per_h: float
    basis: str
    eta: datetime
    due: datetime
    delay_s: float
    late: bool

    @classmethod
    def of(cls, p: Progress) -> ProgressPublic:
        return cls(order=p.order, operation=p.operation, quantity=p.quantity, made=p.made, good=p.good,
                   scrap=p.scrap, remaining=p.remaining, rate_per_h=round(p.rate_per_h, 2), basis=p.basis.value,
                   eta=_from_ns(p.eta_ns), due=_from_ns(p.due_ns), delay_s=round(p.delay_s, 1), late=p.late)


class SessionPublic(BaseModel):
    id: int
    machine: str
    apprentice_code: str
    job_code: str
    started_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    good: int | None
    scrap: int | None

    @classmethod
    def of(cls, s: WorkSession) -> SessionPublic:
        d = s.declaration
        return cls(id=s.id, machine=s.machine_id, apprentice_code=s.apprentice.code, job_code=s.operation.job_code,
                   started_at=s.started_at, ended_at=s.ended_at, ended_by=s.ended_by,
                   good=d.good if d else None, scrap=d.scrap if d else None)


class ScrapReasonIn(BaseModel):
    model_config = _IN
    code: str = Field(min_length=2, max_length=16)
    label_fr: str = Field(min_length=1, max_length=120)
    label_en: str = Field(default="", max_length=120)


class ScrapReasonPublic(BaseModel):
    code: str
    label: str
    active: bool

    @classmethod
    def of(cls, r: ScrapReason, lang: Lang) -> ScrapReasonPublic:
        return cls(code=r.code, label=r.label(lang), active=r.active)


class Problem(BaseModel):
    """Every refusal: a stable `error` code for programs, a `message` for people (French unless ?lang=en)."""

    error: str
    message: str
    errors: list[str] = Field(default_factory=list, description="Per-line problems of a rejected import")


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)

"""Service functions for what the maîtres manage: apprentices, maîtres, orders (CSV import), scrap reasons.

Every function takes the SQLAlchemy session and keyword-only arguments, checks before it writes, and raises a
typed `OrdersError` when the request cannot be honoured. None of them commits: the caller owns the transaction
(one per request), so that an error leaves the database as it was.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from orders.errors import (
    DuplicateBadge,
    DuplicateLogin,
    DuplicateScrapReason,
    ImportProblem,
    ImportRejected,
    InvalidCredentials,
    InvalidValue,
    OrderClosed,
    SessionNotFound,
    UnknownJob,
    UnknownOrder,
)
from orders.models import (
    Apprentice,
    Customer,
    Maitre,
    Operation,
    Order,
    QualityDeclaration,
    ScrapReason,
    WorkSession,
)
from orders.orderfile import read_order_file
from orders.passwords import MIN_LENGTH, hash_password, verify_password
from orders.pseudonyms import new_code

BADGE_PATTERN = re.compile(r"^[A-Za-z0-9._-]{3,64}$")  # never a `/`: that is how job cards are told apart
REASON_CODE_PATTERN = re.compile(r"^[A-Z0-9-]{2,16}$")



@functools.cache
def _no_such_maitre() -> str:
    """A hash that no password matches, checked when the login is unknown, so that an unknown login takes as
    long to refuse as a wrong password (nobody learns which logins exist from the response time)."""
    return hash_password(secrets.token_urlsafe(16))


def _required(field: str, value: str, *, max_length: int) -> str:
    value = value.strip()
    if not value:
        raise InvalidValue(field=field, problem="orders.value.required")
    if len(value) > max_length:
        raise InvalidValue(field=field, problem="orders.value.too_long", max=max_length)
    return value


# -- apprentices


def create_apprentice(
    session: Session,
    *,
    first_name: str,
    last_name: str,
    badge: str,
    now: datetime,
    choice: Callable[[str], str] = secrets.choice,
) -> Apprentice:
    """Register an apprentice with their badge; draws their pseudonymous code (never from the name)."""
    first_name = _required("first_name", first_name, max_length=60)
    last_name = _required("last_name", last_name, max_length=60)
    badge = badge.strip()
    if not BADGE_PATTERN.match(badge):
        raise InvalidValue(field="badge", problem="orders.value.badge_form")
    if session.scalar(select(Apprentice.id).where(Apprentice.badge == badge)) is not None:
        raise DuplicateBadge(badge=badge)
    taken = set(session.scalars(select(Apprentice.code)))
    apprentice = Apprentice(first_name=first_name, last_name=last_name, badge=badge,
                            code=new_code(taken, choice=choice), active=True, created_at=now)
    session.add(apprentice)
    session.flush()
    return apprentice


def list_apprentices(session: Session) -> Sequence[Apprentice]:
    return session.scalars(select(Apprentice).order_by(Apprentice.last_name, Apprentice.first_name)).all()


def apprentice_by_badge(session: Session, *, badge: str) -> Apprentice | None:
    """The active apprentice holding `badge`, if any."""
    return session.scalar(select(Apprentice).where(Apprentice.badge == badge.strip(), Apprentice.active))


# -- maîtres


def create_maitre(session: Session, *, login: str, display_name: str, password: str, now: datetime) -> Maitre:
    """Add a maître with a hashed password (scrypt)."""
    login = _required("login", login, max_length=64)
    display_name = _required("display_name", display_name, max_length=120)
    if len(password) < MIN_LENGTH:
        raise InvalidValue(field="password", problem="orders.value.password_short", min=MIN_LENGTH)
    if session.scalar(select(Maitre.id).where(Maitre.login == login)) is not None:
        raise DuplicateLogin(login=login)
    maitre = Maitre(login=login, display_name=display_name, password_hash=hash_password(password), active=True,
                    created_at=now)
    session.add(maitre)
    session.flush()
    return maitre


def authenticate(session: Session, *, login: str, password: str) -> Maitre:
    """The maître with this login and password. Raises InvalidCredentials, the same for both mistakes."""
    maitre = session.scalar(select(Maitre).where(Maitre.login == login.strip(), Maitre.active))
    if maitre is None:
        verify_password(password, _no_such_maitre())
        raise InvalidCredentials
    if not verify_password(password, maitre.password_hash):
        raise InvalidCredentials
    return maitre


# -- orders


def import_orders(session: Session, *, data: bytes | str, now: datetime) -> list[Order]:
    """Import an order file (see `orders.orderfile`). All or nothing: raises ImportRejected listing every problem,
    including orders that already exist, before anything is written.
    """
    read = read_order_file(data)
    parsed = read.orders
    references = [order.reference for order in parsed]
    existing = set(session.scalars(select(Order.reference).where(Order.reference.in_(references))))
    problems = read.problems + [ImportProblem(order.line, "import.order_exists", None, {"order": order.reference})
                                for order in parsed if order.reference in existing]
    if problems:
        raise ImportRejected(errors=problems)
    customers = {c.name: c for c in session.scalars(
        select(Customer).where(Customer.name.in_({order.customer for order in parsed})))}
    created: list[Order] = []
    for item in parsed:
        customer = customers.get(item.customer)
        if customer is None:
            customer = customers[item.customer] = Customer(name=item.customer)
            session.add(customer)
        order = Order(reference=item.reference, customer=customer, part_number=item.part_number,
                      quantity=item.quantity, due_date=item.due_date, created_at=now)
        order.operations = [
            Operation(sequence=op.sequence, machine_kind=op.machine_kind, standard_cycle_s=op.standard_cycle_s,
                      setup_s=op.setup_s)
            for op in sorted(item.operations, key=lambda op: op.sequence)
        ]
        session.add(order)
        created.append(order)
    session.flush()
    return created


def list_orders(session: Session, *, include_closed: bool = False) -> Sequence[Order]:
    """Orders by due date, with customer and operations loaded."""
    query = (select(Order).options(selectinload(Order.operations), selectinload(Order.customer))
             .order_by(Order.due_date, Order.reference))
    if not include_closed:
        query = query.where(Order.closed_at.is_(None))
    return session.scalars(query).all()


def close_order(session: Session, *, reference: str, now: datetime) -> Order:
    """Close an order: its jobs can no longer be started, and its progress is no longer written."""
    order = session.scalar(select(Order).where(Order.reference == reference))
    if order is None:
        raise UnknownOrder(order=reference)
    if order.closed_at is None:
        order.closed_at = now
    return order


def parse_job_code(code: str) -> tuple[str, int] | None:
    """`CMD-2026-017/20` → ("CMD-2026-017", 20); None when `code` is not shaped like a job card."""
    reference, slash, sequence = code.strip().rpartition("/")
    if not slash or not reference or not sequence.isdigit():
        return None
    return reference, int(sequence)


def find_operation(session: Session, *, order: str, sequence: int) -> Operation:
    """The operation `sequence` of order `order`, open for work. Raises UnknownJob or OrderClosed."""
    operation = session.scalar(
        select(Operation).join(Order).where(Order.reference == order, Operation.sequence == sequence)
        .options(selectinload(Operation.order))
    )
    if operation is None:
        raise UnknownJob(job=f"{order}/{sequence}")
    if operation.order.closed_at is not None:
        raise OrderClosed(order=order)
    return operation


def planned_operations(session: Session, *, machine_kind: str, limit: int = 8) -> Sequence[Operation]:
    """Operations of open orders for this kind of machine, soonest due first (the kiosk's list of jobs)."""
    return session.scalars(
        select(Operation).join(Order)
        .where(Operation.machine_kind == machine_kind, Order.closed_at.is_(None))
        .options(selectinload(Operation.order).selectinload(Order.customer))
        .order_by(Order.due_date, Order.reference, Operation.sequence)
        .limit(limit)
    ).all()


def declared_scrap(session: Session, *, order_id: int) -> dict[int, int]:
    """Scrap declared so far for each operation (by sequence) of one order."""
    rows = session.execute(
        select(Operation.sequence, func.coalesce(func.sum(QualityDeclaration.scrap), 0))
        .join(WorkSession, WorkSession.operation_id == Operation.id)
        .join(QualityDeclaration, QualityDeclaration.session_id == WorkSession.id)
        .where(Operation.order_id == order_id)
        .group_by(Operation.sequence)
    ).all()
    return {int(sequence): int(total) for sequence, total in rows}


# -- scrap reasons


def scrap_reasons(session: Session, *, active_only: bool = True) -> Sequence[ScrapReason]:
    query = select(ScrapReason).order_by(ScrapReason.code)
    if active_only:
        query = query.where(ScrapReason.active)
    return session.scalars(query).all()


def add_scrap_reason(session: Session, *, code: str, label_fr: str, label_en: str = "") -> ScrapReason:
    """Add a scrap reason to the school's list. `code` is short and upper-case (`COTE`)."""
    code = code.strip().upper()
    if not REASON_CODE_PATTERN.match(code):
        raise InvalidValue(field="reason_code", problem="orders.value.reason_code")
    label_fr = _required("label_fr", label_fr, max_length=120)
    label_en = label_en.strip()[:120] or label_fr
    if session.scalar(select(ScrapReason.id).where(ScrapReason.code == code)) is not None:
        raise DuplicateScrapReason(reason=code)
    reason = ScrapReason(code=code, label_fr=label_fr, label_en=label_en, active=True)
    session.add(reason)
    session.flush()
    return reason


def set_scrap_reason_active(session: Session, *, code: str, active: bool) -> ScrapReason:
    """Deactivate (or bring back) a reason. Reasons are never deleted: past declarations refer to them."""
    reason = session.scalar(select(ScrapReason).where(ScrapReason.code == code))
    if reason is None:
        raise InvalidValue(field="reason_code", problem="orders.value.reason_code")
    reason.active = active
    return reason


# -- work sessions (for the maîtres' corrections)


def list_sessions(session: Session, *, open_only: bool = False, limit: int = 100) -> Sequence[WorkSession]:
    """Recent work sessions, open ones first, then the latest started."""
    query = (
        select(WorkSession)
        .options(selectinload(WorkSession.apprentice),
                 selectinload(WorkSession.operation).selectinload(Operation.order),
                 selectinload(WorkSession.declaration))
        .order_by(WorkSession.ended_at.is_not(None), WorkSession.started_at.desc())
        .limit(limit)
    )
    if open_only:
        query = query.where(WorkSession.ended_at.is_(None))
    return session.scalars(query).all()


def get_session(session: Session, *, session_id: int) -> WorkSession:
    """One work session with what the pages show. Raises SessionNotFound."""
    found = session.scalar(
        select(WorkSession).where(WorkSession.id == session_id)
        .options(selectinload(WorkSession.apprentice),
                 selectinload(WorkSession.operation).selectinload(Operation.order),
                 selectinload(WorkSession.declaration))
    )
    if found is None:
        raise SessionNotFound(session_id=session_id)
    return found

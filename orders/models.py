"""The relational store: apprentices, maîtres, customers, orders and their operations, work sessions at the
machines, and quality declarations.

Portable SQL only (SQLite by default, PostgreSQL in principle): no SQLite-only types, constraints named by
convention so that Alembic can alter them on both. Times are stored as UTC without a zone (the one form both
databases keep the same way) and always come back as aware UTC datetimes (`UtcDateTime`).

The migrations in `orders/migrations/versions/` create exactly these tables; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Names for indexes and constraints, so that migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MACHINE_KINDS = ("lathe", "mill")  # the values of copeau.config.MachineKind


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as naive UTC. A naive datetime given to it is a bug and is refused."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: Copeau stores aware UTC times only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), date: Date(), float: Float()}  # noqa: RUF012  (SQLAlchemy reads it as is)


class Apprentice(Base):
    """A young person learning at the school. Only `code` (pseudonymous, generated) ever leaves this database."""

    __tablename__ = "apprentices"
    id: Mapped[int] = mapped_column(primary_key=True)
    first_name: Mapped[str] = mapped_column(String(60))
    last_name: Mapped[str] = mapped_column(String(60))
    badge: Mapped[str] = mapped_column(String(64), unique=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]


class Maitre(Base):
    """A maître professionnel: logs in to manage orders, apprentices and corrections."""

    __tablename__ = "maitres"
    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]


class MaitreSession(Base):
    """A logged-in maître. The cookie holds a random token; only its SHA-256 is stored."""

    __tablename__ = "maitre_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    maitre_id: Mapped[int] = mapped_column(ForeignKey("maitres.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    maitre: Mapped[Maitre] = relationship()


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)


class Order(Base):
    """A customer order: `quantity` parts of `part_number`, due on `due_date` (the end of that day)."""

    __tablename__ = "orders"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    part_number: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int]
    due_date: Mapped[date]
    created_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    customer: Mapped[Customer] = relationship(lazy="joined", innerjoin=True)
    operations: Mapped[list[Operation]] = relationship(
        back_populates="order", order_by="Operation.sequence", cascade="all, delete-orphan"
    )


class Operation(Base):
    """One step of an order on one kind of machine. Its job card reads `<order reference>/<sequence>`."""

    __tablename__ = "operations"
    __table_args__ = (
        UniqueConstraint("order_id", "sequence", name="uq_operations_order_sequence"),
        CheckConstraint("machine_kind IN ('lathe', 'mill')", name="machine_kind"),
        CheckConstraint("standard_cycle_s > 0", name="cycle_positive"),
        CheckConstraint("setup_s >= 0", name="setup_not_negative"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    sequence: Mapped[int]
    machine_kind: Mapped[str] = mapped_column(String(16))
    standard_cycle_s: Mapped[float]
    setup_s: Mapped[float] = mapped_column(default=0.0)
    # Always loaded with the operation: its job card (`job_code`) needs the order's reference.
    order: Mapped[Order] = relationship(back_populates="operations", lazy="joined", innerjoin=True)

    @property
    def job_code(self) -> str:
        """What the job card's barcode holds, e.g. `CMD-2026-017/20`."""
        return f"{self.order.reference}/{self.sequence}"


class WorkSession(Base):
    """An apprentice working on one operation at one machine, from `started_at` to `ended_at` (open: None).

    At most one open session per machine: a partial unique index says so to the database itself.
    """

    __tablename__ = "work_sessions"
    __table_args__ = (
        Index(
            "uq_work_sessions_open_per_machine",
            "machine_id",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    apprentice_id: Mapped[int] = mapped_column(ForeignKey("apprentices.id"))
    machine_id: Mapped[str] = mapped_column(String(63))
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id"))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    ended_by: Mapped[str | None] = mapped_column(String(16))  # kiosk, badge (MQTT reader), maitre
    apprentice: Mapped[Apprentice] = relationship()
    operation: Mapped[Operation] = relationship()
    declaration: Mapped[QualityDeclaration | None] = relationship(back_populates="session")


class ScrapReason(Base):
    """Why a part is scrap. The school edits the list; a reason in use is deactivated, never deleted."""

    __tablename__ = "scrap_reasons"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    label_fr: Mapped[str] = mapped_column(String(120))
    label_en: Mapped[str] = mapped_column(String(120))
    active: Mapped[bool] = mapped_column(default=True)

    def label(self, lang: str) -> str:
        return self.label_en if lang == "en" else self.label_fr


class QualityDeclaration(Base):
    """Good and scrap parts declared at the end of a session, with the scrap split by reason."""

    __tablename__ = "quality_declarations"
    __table_args__ = (
        CheckConstraint("good >= 0", name="good_not_negative"),
        CheckConstraint("scrap >= 0", name="scrap_not_negative"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("work_sessions.id"), unique=True)
    good: Mapped[int]
    scrap: Mapped[int]
    declared_at: Mapped[datetime]
    declared_by: Mapped[str] = mapped_column(String(16))  # apprentice (kiosk) or maitre (correction)
    session: Mapped[WorkSession] = relationship(back_populates="declaration")
    scrap_counts: Mapped[list[ScrapCount]] = relationship(cascade="all, delete-orphan")


class ScrapCount(Base):
    __tablename__ = "declaration_scrap"
    __table_args__ = (CheckConstraint("count > 0", name="count_positive"),)
    declaration_id: Mapped[int] = mapped_column(
        ForeignKey("quality_declarations.id", ondelete="CASCADE"), primary_key=True
    )
    reason_id: Mapped[int] = mapped_column(ForeignKey("scrap_reasons.id"), primary_key=True)
    count: Mapped[int]
    reason: Mapped[ScrapReason] = relationship()

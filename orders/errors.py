"""Typed domain errors of the orders and kiosk service. Each carries its data and a catalogue key; the text is
rendered in the reader's language at the boundary (`message(lang)`), French by default (`str(error)`).

When one of these is raised, nothing was changed: the service checks before it writes, and its transactions
roll back on any error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from copeau.errors import CopeauError
from orders.texts import Lang, translate


class OrdersError(CopeauError):
    """Base of the domain errors. `key` names the catalogue entry, `values` fill it."""

    key: ClassVar[str] = "orders.error"

    def __init__(self, **values: object) -> None:
        self.values = values
        super().__init__(self.message("fr"))

    def message(self, lang: Lang) -> str:
        """The text for a person, in `lang`."""
        return translate(self.key, lang, **self.values)

    @property
    def code(self) -> str:
        """A stable identifier for API clients (`unknown_badge`), independent of the language."""
        return self.key.split(".", 1)[-1]


# -- the machine: badge, job, declaration


class UnknownMachine(OrdersError):
    key = "orders.unknown_machine"

    def __init__(self, *, machine: str) -> None:
        self.machine = machine
        super().__init__(machine=machine)


class UnknownBadge(OrdersError):
    key = "orders.unknown_badge"

    def __init__(self, *, badge: str, machine: str) -> None:
        self.badge = badge
        self.machine = machine
        super().__init__(badge=badge, machine=machine)


class TooManyAttempts(OrdersError):
    """Too many unknown badges on one kiosk: scans are refused until `retry_after_s` has passed."""

    key = "orders.too_many_attempts"

    def __init__(self, *, machine: str, retry_after_s: int) -> None:
        self.machine = machine
        self.retry_after_s = retry_after_s
        super().__init__(machine=machine, retry_after_s=retry_after_s)


class UnknownJob(OrdersError):
    key = "orders.unknown_job"

    def __init__(self, *, job: str) -> None:
        self.job = job
        super().__init__(job=job)


class UnknownOrder(OrdersError):
    key = "orders.unknown_order"

    def __init__(self, *, order: str) -> None:
        self.order = order
        super().__init__(order=order)


class OrderClosed(OrdersError):
    key = "orders.order_closed"

    def __init__(self, *, order: str) -> None:
        self.order = order
        super().__init__(order=order)


class NotIdentified(OrdersError):
    """A job was chosen before any badge was scanned at this machine (or the identification expired)."""

    key = "orders.not_identified"

    def __init__(self, *, machine: str) -> None:
        self.machine = machine
        super().__init__(machine=machine)


class WrongMachine(OrdersError):
    """The job is planned for another kind of machine (a lathe job on a mill)."""

    key = "orders.wrong_machine"

    def __init__(self, *, job: str, machine: str, machine_kind: str, expected_kind: str) -> None:
        self.job = job
        self.machine = machine
        self.machine_kind = machine_kind
        self.expected_kind = expected_kind
        super().__init__(job=job, machine=machine, machine_kind=machine_kind, expected_kind=expected_kind)

    def message(self, lang: Lang) -> str:
        return translate(
            self.key, lang, job=self.job, machine=self.machine,
            machine_kind=translate(f"machine_kind.{self.machine_kind}.a", lang),
            expected_kind=translate(f"machine_kind.{self.expected_kind}.a", lang),
        )


class MachineBusy(OrdersError):
    """Someone else's job is running on the machine: a second badge-in changes nothing."""

    key = "orders.machine_busy"

    def __init__(self, *, machine: str, job: str) -> None:
        self.machine = machine
        self.job = job
        super().__init__(machine=machine, job=job)


class NoOpenSession(OrdersError):
    key = "orders.no_open_session"

    def __init__(self, *, machine: str) -> None:
        self.machine = machine
        super().__init__(machine=machine)


class SessionNotFound(OrdersError):
    key = "orders.session_not_found"

    def __init__(self, *, session_id: int) -> None:
        self.session_id = session_id
        super().__init__(session_id=session_id)


class SessionStillOpen(OrdersError):
    """A maître's declaration for a session that is still running: the apprentice declares it at the kiosk."""

    key = "orders.session_still_open"

    def __init__(self, *, session_id: int, machine: str) -> None:
        self.session_id = session_id
        self.machine = machine
        super().__init__(session_id=session_id, machine=machine)


class AlreadyDeclared(OrdersError):
    key = "orders.already_declared"

    def __init__(self, *, session_id: int) -> None:
        self.session_id = session_id
        super().__init__(session_id=session_id)


class DeclarationTooLarge(OrdersError):
    """More good + scrap parts declared than the machine counted during the session."""

    key = "orders.declaration_too_large"

    def __init__(self, *, declared: int, made: int) -> None:
        self.declared = declared
        self.made = made
        super().__init__(declared=declared, made=made)


class UnknownScrapReason(OrdersError):
    key = "orders.unknown_scrap_reason"

    def __init__(self, *, reason: str) -> None:
        self.reason = reason
        super().__init__(reason=reason)


class CountsUnavailable(OrdersError):
    """InfluxDB cannot be read now, so parts made cannot be checked: the caller should try again shortly."""

    key = "orders.counts_unavailable"

    def __init__(self, *, detail: str) -> None:
        self.detail = detail
        super().__init__(detail=detail)


# -- management: people, orders, log-in


class InvalidValue(OrdersError):
    """A field a person typed is not acceptable. `problem` is a catalogue key (`orders.value.*`)."""

    key = "orders.invalid_value"

    def __init__(self, *, field: str, problem: str, **values: object) -> None:
        self.field = field
        self.problem = problem
        self.problem_values = values
        super().__init__(field=field)

    def message(self, lang: Lang) -> str:
        return translate(self.key, lang, field=translate(f"field.{self.field}", lang),
                         problem=translate(self.problem, lang, **self.problem_values))


class DuplicateBadge(OrdersError):
    key = "orders.duplicate_badge"

    def __init__(self, *, badge: str) -> None:
        self.badge = badge
        super().__init__(badge=badge)


class DuplicateLogin(OrdersError):
    key = "orders.duplicate_login"

    def __init__(self, *, login: str) -> None:
        self.login = login
        super().__init__(login=login)


class DuplicateScrapReason(OrdersError):
    key = "orders.duplicate_scrap_reason"

    def __init__(self, *, reason: str) -> None:
        self.reason = reason
        super().__init__(reason=reason)


class InvalidCredentials(OrdersError):
    key = "orders.invalid_credentials"


@dataclass(frozen=True)
class ImportProblem:
    """One problem in an imported file: its line (1 = the header), the column when known, and what is wrong."""

    line: int
    key: str  # catalogue key (`import.*`)
    column: str | None = None
    values: dict[str, object] = field(default_factory=dict)

    def message(self, lang: Lang) -> str:
        text = translate(self.key, lang, **self.values)
        if self.column:
            text = translate("import.in_column", lang, column=self.column, problem=text)
        return translate("import.at_line", lang, line=self.line, problem=text)


class ImportRejected(OrdersError):
    """The CSV file has problems: every one is listed, and no order was imported."""

    key = "orders.import_rejected"

    def __init__(self, *, errors: Sequence[ImportProblem]) -> None:
        self.errors = sorted(errors, key=lambda p: p.line)
        super().__init__(n=len(self.errors))

    def messages(self, lang: Lang) -> list[str]:
        return [problem.message(lang) for problem in self.errors]

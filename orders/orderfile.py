"""The CSV order file: one row per operation, the order's own columns repeated on each of its rows.

Pure: bytes in, parsed orders out, or `ImportRejected` listing every problem with its line number (the header
is line 1). Whether an order already exists is the service's question (`catalog.import_orders`), which also
imports all or nothing in one transaction.

Columns (French or English headers, any order, case and accents ignored; `;`, `,` or tab separated, detected
from the header line; UTF-8, or Windows-1252 as saved by a French Excel)::

    commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)
    CMD-2026-017;Mécanique Durand;BRIDE-45;200;2026-12-18;10;fraiseuse;42,5;900
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from orders.errors import ImportProblem, ImportRejected

MAX_ROWS = 10_000
_NAME_MAX = {"order": 64, "customer": 120, "part_number": 64}
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")  # line breaks, tabs, backslash: InfluxDB tags cannot carry them


def _normalise(text: str) -> str:
    """Lower case, no accents, single spaces: `Référence  Pièce` → `reference piece`."""
    decomposed = unicodedata.normalize("NFKD", text.strip().lower().replace("\u00a0", " "))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.replace("’", "'").split())


# Accepted headers for each column (normalised). The first of each list is the documented French one.
HEADERS: dict[str, tuple[str, ...]] = {
    "order": ("commande", "n° commande", "numero de commande", "reference commande", "order", "order reference"),
    "customer": ("client", "customer"),
    "part_number": ("reference piece", "piece", "ref piece", "part number", "part", "part no"),
    "quantity": ("quantite", "qte", "quantity", "qty"),
    "due_date": ("echeance", "date d'echeance", "date de livraison", "due date", "due"),
    "operation": ("operation", "op", "n° operation"),
    "machine": ("machine", "type de machine", "machine kind", "machine type"),
    "cycle_s": ("temps de cycle (s)", "temps de cycle", "cycle (s)", "cycle time (s)", "cycle time"),
    "setup_s": ("reglage (s)", "temps de reglage (s)", "reglage", "setup time (s)", "set-up time (s)",
                "setup (s)", "setup time"),
}
# As documented (and as they appear in messages about a missing column), in the reader's language.
DOCUMENTED = {
    "fr": dict(zip(HEADERS, ("commande", "client", "référence pièce", "quantité", "échéance", "opération", "machine",
                             "temps de cycle (s)", "réglage (s)"), strict=True)),
    "en": dict(zip(HEADERS, ("order", "customer", "part number", "quantity", "due date", "operation", "machine",
                             "cycle time (s)", "setup time (s)"), strict=True)),
}
REQUIRED = ("order", "customer", "part_number", "quantity", "due_date", "operation", "machine", "cycle_s")
DOCUMENTED_HEADER = ";".join(DOCUMENTED["fr"].values())
ENGLISH_HEADER = ";".join(DOCUMENTED["en"].values())
_BY_HEADER = {_normalise(name): column for column, names in HEADERS.items() for name in names}

MACHINE_WORDS = {
    "tour": "lathe", "tournage": "lathe", "lathe": "lathe", "turning": "lathe",
    "fraiseuse": "mill", "fraisage": "mill", "mill": "mill", "milling": "mill", "centre d'usinage": "mill",
}


@dataclass(frozen=True)
class ParsedOperation:
    line: int
    sequence: int
    machine_kind: str  # lathe | mill
    standard_cycle_s: float
    setup_s: float


@dataclass
class ParsedOrder:
    line: int  # the order's first line
    reference: str
    customer: str
    part_number: str
    quantity: int
    due_date: date
    operations: list[ParsedOperation] = field(default_factory=list)


class _Row:
    """One data row being checked: collects its problems instead of stopping at the first."""

    def __init__(self, line: int, values: dict[str, str], headers: dict[str, str]) -> None:
        self.line = line
        self.values = values
        self.headers = headers  # column → header as written in the file, for messages
        self.problems: list[ImportProblem] = []

    def problem(self, column: str | None, key: str, **values: object) -> None:
        header = self.headers.get(column) if column else None
        self.problems.append(ImportProblem(self.line, key, header, dict(values)))

    def get(self, column: str, convert: Callable[[str], Any]) -> Any:
        raw = self.values.get(column, "").strip()
        if not raw:
            if column == "setup_s":
                return 0.0
            self.problem(column, "import.required")
            return None
        try:
            return convert(raw)
        except _Bad as bad:
            self.problem(column, bad.key, **bad.values)
            return None


class _Bad(Exception):
    def __init__(self, key: str, **values: object) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


def _text(column: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        if _FORBIDDEN.search(raw):
            raise _Bad("import.bad_characters")
        limit = _NAME_MAX[column]
        if len(raw) > limit:
            raise _Bad("import.too_long", length=len(raw), max=limit)
        return raw

    return convert


def _integer(low: int, high: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        compact = raw.replace(" ", "").replace("\u00a0", "").replace("\u202f", "")
        if not re.fullmatch(r"[+-]?\d+", compact):
            raise _Bad("import.not_integer", value=raw)
        value = int(compact)
        if not low <= value <= high:
            raise _Bad("import.out_of_range", value=value, min=low, max=high)
        return value

    return convert


def _seconds(low: float, high: float, *, strictly_positive: bool) -> Callable[[str], float]:
    def convert(raw: str) -> float:
        compact = raw.replace(" ", "").replace("\u00a0", "").replace(",", ".")  # French decimals: 42,5
        if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", compact):
            raise _Bad("import.not_number", value=raw)
        value = float(compact)
        if value < low or value > high or (strictly_positive and value <= 0):
            raise _Bad("import.out_of_range_s", value=raw, min="0" if strictly_positive else low, max=int(high))
        return value

    return convert


def _due_date(raw: str) -> date:
    for pattern in ("%Y-%m-%d", "%d/%m/%Y", "%d/%m/%y", "%d.%m.%Y"):
        try:
            return datetime.strptime(raw, pattern).date()  # a calendar day: no time zone involved
        except ValueError:
            continue
    raise _Bad("import.bad_date", value=raw)


def _machine(raw: str) -> str:
    kind = MACHINE_WORDS.get(_normalise(raw))
    if kind is None:
        raise _Bad("import.bad_machine", value=raw)
    return kind


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "order": _text("order"),
    "customer": _text("customer"),
    "part_number": _text("part_number"),
    "quantity": _integer(1, 1_000_000),
    "due_date": _due_date,
    "operation": _integer(0, 10_000),  # the event contract's range for an operation number
    "machine": _machine,
    "cycle_s": _seconds(0.0, 86_400.0, strictly_positive=True),
    "setup_s": _seconds(0.0, 7 * 86_400.0, strictly_positive=False),
}


def decode(data: bytes | str) -> str:
    """The file's text: UTF-8 (with or without BOM), else Windows-1252 (French Excel's « CSV » format)."""
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def detect_delimiter(header_line: str) -> str:
    """`;` (French Excel), `,` or tab: whichever the header line holds most of; `,` when it holds none."""
    counts = {sep: header_line.count(sep) for sep in (";", ",", "\t")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


@dataclass(frozen=True)
class OrderFile:
    """What a file holds: the orders read from its good rows, and every problem found in the others."""

    orders: list[ParsedOrder]
    problems: list[ImportProblem]


def parse_order_file(data: bytes | str) -> list[ParsedOrder]:
    """Read and check a whole order file. Returns the orders with their operations, in file order.

    Raises ImportRejected listing every problem found (line by line), never just the first one.
    """
    read = read_order_file(data)
    if read.problems:
        raise ImportRejected(errors=read.problems)
    return read.orders


def read_order_file(data: bytes | str) -> OrderFile:
    """Like `parse_order_file`, but returns the problems instead of raising, so that the caller can add its own
    (an order that already exists) and report them all at once. Raises ImportRejected only when the file cannot
    be read at all (empty, or its header lacks columns).
    """
    text = decode(data)
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise ImportRejected(errors=[ImportProblem(1, "import.empty")])
    delimiter = detect_delimiter(lines[first])
    # newline="", as the csv module asks: a lone CR (old Mac exports) then ends a row instead of raising csv.Error.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header_row: list[str] | None = None
    columns: list[str | None] = []
    headers: dict[str, str] = {}
    problems: list[ImportProblem] = []
    rows: list[_Row] = []
    for line, record in _records(reader, problems):
        if not any(cell.strip() for cell in record):
            continue  # blank lines (often at the end of a spreadsheet export)
        if header_row is None:
            header_row = record
            columns, headers, header_problems = _read_header(record, line)
            if header_problems:
                raise ImportRejected(errors=header_problems)  # without columns, the rows cannot be read
            continue
        if len(rows) >= MAX_ROWS:
            problems.append(ImportProblem(line, "import.too_many_rows", values={"max": MAX_ROWS}))
            break
        if len(record) != len(header_row) and not (len(record) < len(header_row) and _only_optional_missing(
            columns[len(record):]
        )):
            problems.append(ImportProblem(line, "import.field_count",
                                          values={"found": len(record), "expected": len(header_row)}))
            continue
        values = {col: cell for col, cell in zip(columns, record, strict=False) if col is not None}
        rows.append(_Row(line, values, headers))
    if header_row is None:
        raise ImportRejected(errors=[ImportProblem(1, "import.empty")])
    if not rows and not problems:
        problems.append(ImportProblem(reader.line_num or 1, "import.no_rows"))
    orders = _assemble(rows, problems)
    return OrderFile(orders, problems)


def _records(reader: Any, problems: list[ImportProblem]) -> Iterator[tuple[int, list[str]]]:
    """(last line, cells) of each row. A row the csv module cannot read ends the file with a problem at the line
    where that row began: with newline="" its only error left is a cell over its 131,072-character limit, nearly
    always a quote never closed that swallows the rest of the file."""
    while True:
        begins = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error:
            problems.append(ImportProblem(begins, "import.unreadable_row", values={"max": csv.field_size_limit()}))
            return
        yield reader.line_num, record


def _only_optional_missing(columns: list[str | None]) -> bool:
    # Spreadsheets drop trailing empty cells: a row that lacks only the optional set-up time is complete.
    return all(col in (None, "setup_s") for col in columns)


def _read_header(record: list[str], line: int) -> tuple[list[str | None], dict[str, str], list[ImportProblem]]:
    columns: list[str | None] = []
    headers: dict[str, str] = {}
    problems: list[ImportProblem] = []
    for cell in record:
        column = _BY_HEADER.get(_normalise(cell))
        if column is not None and column in headers:
            problems.append(ImportProblem(line, "import.duplicate_column", values={"column": cell.strip()}))
            column = None
        columns.append(column)  # None: a column Copeau does not read (a comment, say); ignored
        if column is not None:
            headers[column] = cell.strip()
    missing = [DOCUMENTED["fr"][col] for col in REQUIRED if col not in headers]
    if missing:
        problems.append(ImportProblem(
            line, "import.missing_columns",
            values={"columns": ", ".join(missing), "expected": DOCUMENTED_HEADER},
        ))
    return columns, headers, problems


def _assemble(rows: list[_Row], problems: list[ImportProblem]) -> list[ParsedOrder]:
    orders: dict[str, ParsedOrder] = {}
    operation_lines: dict[tuple[str, int], int] = {}
    for row in rows:
        parsed = {column: row.get(column, convert) for column, convert in _CONVERTERS.items()}
        problems.extend(row.problems)
        if row.problems:
            continue
        reference = parsed["order"]
        order = orders.get(reference)
        if order is None:
            order = orders[reference] = ParsedOrder(
                line=row.line, reference=reference, customer=parsed["customer"],
                part_number=parsed["part_number"], quantity=parsed["quantity"], due_date=parsed["due_date"],
            )
        else:
            for column in ("customer", "part_number", "quantity", "due_date"):
                if getattr(order, column) != parsed[column]:
                    row.problem(column, "import.order_differs", order=reference, first_line=order.line)
        key = (reference, parsed["operation"])
        if key in operation_lines:
            row.problem("operation", "import.duplicate_operation", operation=parsed["operation"], order=reference,
                        first_line=operation_lines[key])
        problems.extend(row.problems)
        if row.problems:
            continue
        operation_lines[key] = row.line
        order.operations.append(ParsedOperation(
            line=row.line, sequence=parsed["operation"], machine_kind=parsed["machine"],
            standard_cycle_s=parsed["cycle_s"], setup_s=parsed["setup_s"],
        ))
    return list(orders.values())

"""CSV order import: documented columns (French or English), every row checked, every bad line reported with its
number, and nothing imported when any row is wrong (one transaction).

Ground truth is the file written in the test: the database must hold exactly its orders and operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from orders import catalog
from orders.database import make_engine, session_factory
from orders.errors import ImportRejected
from orders.migrate import upgrade
from orders.models import Customer, Operation, Order
from orders.orderfile import DOCUMENTED_HEADER, ENGLISH_HEADER, detect_delimiter, parse_order_file
from orders.seed import DEMO_LOGIN, DEMO_PASSWORD, seed_demo

NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)

GOOD_FR = f"""{DOCUMENTED_HEADER}
CMD-2026-017;Mécanique Durand;BRIDE-45;200;2026-12-18;10;fraiseuse;42,5;900
CMD-2026-017;Mécanique Durand;BRIDE-45;200;2026-12-18;20;tour;30;600
CMD-2026-018;Hydraulique du Rhône;PLATINE-12;1 500;05/01/2027;10;Fraiseuse;12;
"""

GOOD_EN = f"""{ENGLISH_HEADER.replace(";", ",")}
PO-9,Durand Engineering,SHAFT-3,50,2027-02-01,10,lathe,95.5,1200
PO-9,Durand Engineering,SHAFT-3,50,2027-02-01,20,mill,40,300
"""

# Line 3: bad quantity and due date; line 4: unknown machine kind and a negative cycle time; line 5: the same
# order with another customer; line 6: an operation already on line 2; line 7: a missing value. Lines 2 and 8
# are good, and must not be imported either.
BAD = f"""{DOCUMENTED_HEADER}
CMD-1;Durand;P-1;10;2026-12-18;10;fraiseuse;30;0
CMD-2;Durand;P-2;dix;2026-13-40;10;fraiseuse;30;0
CMD-3;Durand;P-3;10;2026-12-18;10;perceuse;-4;0
CMD-1;Martin;P-1;10;2026-12-18;20;fraiseuse;30;0
CMD-1;Durand;P-1;10;2026-12-18;10;tour;30;0
CMD-4;Durand;;10;2026-12-18;10;tour;30;0
CMD-5;Durand;P-5;10;2026-12-18;10;tour;30;0
"""


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'orders.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


def count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def import_file(sessions: sessionmaker[Session], data: bytes | str) -> list[str]:
    with sessions.begin() as db:
        return [order.reference for order in catalog.import_orders(db, data=data, now=NOW)]


def test_good_french_file_is_imported_exactly(sessions: sessionmaker[Session]) -> None:
    assert import_file(sessions, GOOD_FR.encode()) == ["CMD-2026-017", "CMD-2026-018"]
    with sessions() as db:
        orders = {o.reference: o for o in catalog.list_orders(db)}
        first, second = orders["CMD-2026-017"], orders["CMD-2026-018"]
        assert (first.customer.name, first.part_number, first.quantity, first.due_date) == (
            "Mécanique Durand", "BRIDE-45", 200, date(2026, 12, 18))
        assert [(op.sequence, op.machine_kind, op.standard_cycle_s, op.setup_s) for op in first.operations] == [
            (10, "mill", 42.5, 900.0), (20, "lathe", 30.0, 600.0)]
        assert [op.job_code for op in first.operations] == ["CMD-2026-017/10", "CMD-2026-017/20"]
        # "1 500" (a thousands space), a French date, a capitalised machine kind, an empty set-up time.
        assert (second.quantity, second.due_date) == (1500, date(2027, 1, 5))
        assert [(op.machine_kind, op.setup_s) for op in second.operations] == [("mill", 0.0)]
    assert count(sessions, Operation) == 3


def test_good_english_file_with_commas_is_imported(sessions: sessionmaker[Session]) -> None:
    assert import_file(sessions, GOOD_EN) == ["PO-9"]
    with sessions() as db:
        (order,) = catalog.list_orders(db)
        assert [(op.sequence, op.machine_kind, op.standard_cycle_s) for op in order.operations] == [
            (10, "lathe", 95.5), (20, "mill", 40.0)]


def test_every_bad_line_is_reported_and_nothing_is_imported(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ImportRejected) as info:
        import_file(sessions, BAD.encode())
    problems = [(p.line, p.column, p.key) for p in info.value.errors]
    assert problems == [
        (3, "quantité", "import.not_integer"),
        (3, "échéance", "import.bad_date"),
        (4, "machine", "import.bad_machine"),
        (4, "temps de cycle (s)", "import.out_of_range_s"),
        (5, "client", "import.order_differs"),
        (6, "opération", "import.duplicate_operation"),
        (7, "référence pièce", "import.required"),
    ]
    messages = info.value.messages("fr")
    assert messages[0] == "Ligne 3 : colonne « quantité » : « dix » n'est pas un nombre entier"
    assert messages[5] == "Ligne 6 : colonne « opération » : l'opération 10 de la commande CMD-1 est déjà à la ligne 2"
    assert str(info.value) == "Le fichier n'a pas été importé : 7 erreur(s). Aucune commande n'a été ajoutée."
    assert info.value.messages("en")[0] == "Line 3: column “quantité”: “dix” is not a whole number"
    assert (count(sessions, Order), count(sessions, Operation), count(sessions, Customer)) == (0, 0, 0)


def test_an_order_already_imported_rejects_the_whole_file(sessions: sessionmaker[Session]) -> None:
    import_file(sessions, GOOD_FR)
    again = GOOD_FR + "CMD-NEW;Durand;P;1;2026-12-01;10;tour;10;0\nCMD-BAD;Durand;P;1;demain;10;tour;10;0\n"
    with pytest.raises(ImportRejected) as info:
        import_file(sessions, again)
    # Problems in the rows and orders that exist already are reported together, in line order.
    assert [(p.line, p.key) for p in info.value.errors] == [
        (2, "import.order_exists"), (4, "import.order_exists"), (6, "import.bad_date")]
    assert count(sessions, Order) == 2  # CMD-NEW was not imported


def test_missing_columns_are_named_on_line_1() -> None:
    with pytest.raises(ImportRejected) as info:
        parse_order_file("commande;client;quantité\nA;B;1\n")
    (problem,) = info.value.errors
    assert problem.line == 1
    assert "référence pièce, échéance, opération, machine, temps de cycle (s)" in problem.message("fr")


def test_a_row_with_a_separator_too_many_is_reported() -> None:
    with pytest.raises(ImportRejected) as info:
        parse_order_file(f"{DOCUMENTED_HEADER}\nA;B;C;1;2026-12-01;10;tour;10;0;extra\n")
    assert [(p.line, p.key) for p in info.value.errors] == [(2, "import.field_count")]


def test_empty_file_and_header_only_are_refused() -> None:
    for text, key in (("", "import.empty"), ("\n\n", "import.empty"), (DOCUMENTED_HEADER + "\n", "import.no_rows")):
        with pytest.raises(ImportRejected) as info:
            parse_order_file(text)
        assert [p.key for p in info.value.errors] == [key]


def test_windows_1252_file_from_a_french_excel_is_read() -> None:
    data = GOOD_FR.encode("cp1252")
    orders = parse_order_file(data)
    assert [o.customer for o in orders] == ["Mécanique Durand", "Hydraulique du Rhône"]


def test_utf8_bom_and_tab_separator() -> None:
    text = "\ufeff" + GOOD_EN.replace(",", "\t")
    assert [o.reference for o in parse_order_file(text.encode("utf-8"))] == ["PO-9"]


def test_delimiter_detection() -> None:
    assert detect_delimiter(DOCUMENTED_HEADER) == ";"
    assert detect_delimiter(ENGLISH_HEADER.replace(";", ",")) == ","
    assert detect_delimiter("commande\tclient") == "\t"
    assert detect_delimiter("commande") == ","


def test_characters_influxdb_tags_cannot_carry_are_refused() -> None:
    with pytest.raises(ImportRejected) as info:
        parse_order_file(f"{DOCUMENTED_HEADER}\nCMD\\1;B;C;1;2026-12-01;10;tour;10;0\n")
    assert [(p.line, p.column, p.key) for p in info.value.errors] == [(2, "commande", "import.bad_characters")]


def test_demo_seed_is_imported_once(sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COPEAU_DEMO_PASSWORD", raising=False)
    with sessions.begin() as db:
        first = seed_demo(db, today=date(2026, 11, 2), now=NOW)
    with sessions.begin() as db:
        again = seed_demo(db, today=date(2026, 11, 2), now=NOW)
    assert (first.created, again.created) == (True, False)
    assert first.orders == again.orders == ["CMD-DEMO-001", "CMD-DEMO-002", "CMD-DEMO-003"]
    assert first.apprentices == again.apprentices and len(first.apprentices) == 4
    with sessions() as db:
        due = {o.reference: o.due_date for o in catalog.list_orders(db)}
        assert due == {"CMD-DEMO-001": date(2026, 11, 5), "CMD-DEMO-002": date(2026, 11, 8),
                       "CMD-DEMO-003": date(2026, 11, 12)}
        assert catalog.authenticate(db, login=DEMO_LOGIN, password=DEMO_PASSWORD).login == DEMO_LOGIN
    assert count(sessions, Customer) == 2


def test_a_quote_never_closed_is_reported_where_its_row_begins() -> None:
    # Line 4's quote swallows the rest of the file into one cell, over the csv module's limit: a clear problem.
    good = "A;B;C;1;2026-12-01;10;tour;10;0"
    text = f"{DOCUMENTED_HEADER}\n{good}\n\nA2;\"B;C;1;2026-12-01;10;tour;10;0\n" + f"{good}\n" * 5000
    with pytest.raises(ImportRejected) as info:
        parse_order_file(text)
    assert [(p.line, p.key) for p in info.value.errors] == [(4, "import.unreadable_row")]
    assert info.value.errors[0].message("fr") == (
        "Ligne 4 : ligne illisible : une cellule dépasse 131072 caractères (un guillemet « \" » jamais refermé ?)")

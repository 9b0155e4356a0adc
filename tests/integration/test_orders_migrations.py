"""Alembic migrations: `upgrade head` on an empty database, and on a database made by the previous revision with
data in it (0001: people, orders, sessions → 0002: quality declarations and scrap reasons). The migrated schema
must be exactly what the models describe, and the old rows must still be there and usable.

Each test runs on SQLite (the default store) and on PostgreSQL (the option), both real servers/files.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from orders import catalog
from orders.database import make_engine, session_factory
from orders.migrate import current_revision, downgrade, head_revision, upgrade
from orders.models import Base

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database on each supported store."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres").new_database("mig"))
    return f"sqlite:///{tmp_path / 'copeau.sqlite'}"


def schema_differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                         Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_an_empty_database(url: str) -> None:
    assert current_revision(url) is None
    upgrade(url, "head")
    assert current_revision(url) == head_revision() == "0002"
    assert schema_differences(url) == []
    engine = make_engine(url)
    with session_factory(engine)() as db:
        assert [r.code for r in catalog.scrap_reasons(db)] == ["BAVURE", "COTE", "ETAT", "MATIERE", "OUTIL",
                                                                "REGLAGE"]
        if url.startswith("sqlite"):
            assert db.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()
    upgrade(url, "head")  # again: nothing to do, nothing breaks
    assert current_revision(url) == "0002"


def test_upgrade_a_database_made_by_the_previous_revision(url: str) -> None:
    upgrade(url, "0001")
    engine = make_engine(url)
    assert "quality_declarations" not in inspect(engine).get_table_names()
    with engine.begin() as connection:  # rows as the previous revision wrote them
        connection.execute(text(
            "INSERT INTO apprentices (id, first_name, last_name, badge, code, active, created_at) "
            "VALUES (1, 'Zoé', 'Lefèvre', 'BADGE-ZOE', 'AP-7KQ3X', TRUE, '2026-10-01 08:00:00')"))
        connection.execute(text("INSERT INTO customers (id, name) VALUES (1, 'Durand')"))
        connection.execute(text(
            "INSERT INTO orders (id, reference, customer_id, part_number, quantity, due_date, created_at) "
            "VALUES (1, 'CMD-OLD', 1, 'P-1', 30, '2026-12-01', '2026-10-01 08:00:00')"))
        connection.execute(text(
            "INSERT INTO operations (id, order_id, sequence, machine_kind, standard_cycle_s, setup_s) "
            "VALUES (1, 1, 10, 'mill', 40.0, 0.0)"))
        connection.execute(text(
            "INSERT INTO work_sessions (id, apprentice_id, machine_id, operation_id, started_at, ended_at, ended_by) "
            "VALUES (1, 1, 'fraiseuse-1', 1, '2026-10-02 08:00:00', '2026-10-02 10:00:00', 'kiosk')"))
    engine.dispose()

    upgrade(url, "head")
    assert current_revision(url) == "0002"
    assert schema_differences(url) == []
    engine = make_engine(url)
    with session_factory(engine).begin() as db:
        (order,) = catalog.list_orders(db)
        assert (order.reference, order.quantity, [op.job_code for op in order.operations]) == ("CMD-OLD", 30,
                                                                                               ["CMD-OLD/10"])
        (old,) = catalog.list_sessions(db)
        assert (old.apprentice.code, old.started_at) == ("AP-7KQ3X", datetime(2026, 10, 2, 8, 0, tzinfo=UTC))
        assert old.declaration is None
        assert len(catalog.scrap_reasons(db)) == 6  # seeded by 0002 for the old database too
    engine.dispose()


def test_downgrade_to_base_and_up_again(url: str) -> None:
    upgrade(url)
    downgrade(url, "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert schema_differences(url) == []

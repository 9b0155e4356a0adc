"""Alembic migrations, run from code: `copeau web` upgrades the database on start, tests call `upgrade()`.

There is no alembic.ini. To make a new revision during development::

    .venv/bin/python -c "from orders.migrate import revision; revision('what changed', url='sqlite:///var/dev.sqlite')"

then check the generated file in `orders/migrations/versions/` by hand (SQLite and PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from orders.database import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the database at `url`, built without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url  # not a main option: configparser would choke on `%` in encoded passwords
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (creating the tables on an empty database)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Go back to `revision` ("base" drops every table). For development and tests."""
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at; None for a database that Alembic never touched."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision in `orders/migrations/versions/`."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration found in {MIGRATIONS}")
    return head


def revision(message: str, *, url: str) -> None:
    """Generate a new revision by comparing the models with the database at `url` (already at head)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)

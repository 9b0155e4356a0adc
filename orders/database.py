"""Engines and sessions for the relational store.

SQLite by default, in `<state_dir>/copeau.sqlite`, in WAL mode: the kiosks, the MQTT badge listener and the
progress tracker read while one of them writes, and a power cut never leaves a half-written transaction.
A PostgreSQL URL (`postgresql+psycopg://…`) is accepted as is; nothing here is SQLite-only except the pragmas,
which are applied to SQLite connections only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from copeau.config import Workshop

DATABASE_FILE = "copeau.sqlite"


def default_database_url(state_dir: Path) -> str:
    """The SQLite file Copeau uses when no database URL is configured."""
    return f"sqlite:///{(state_dir / DATABASE_FILE).resolve()}"


def database_url_for(workshop: Workshop) -> str:
    """The configured URL (`web.database_url`, read from the environment or a file), else the default file."""
    return workshop.web.database_url.read() or default_database_url(workshop.state_dir)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes of the process
        cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores foreign keys unless asked, every connection
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`. For a SQLite file, creates its folder and turns WAL and foreign keys on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (the service returns them to the routes)."""
    return sessionmaker(engine, expire_on_commit=False)

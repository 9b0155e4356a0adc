"""The durable outbox: events wait in SQLite until the broker has acknowledged them (PUBACK).

One SQLite file per collector. Each poll that yields events is one transaction that stores the events
*and* the machine's derivation snapshot and next sequence number, so that after a crash the collector
resumes exactly where its last committed poll left it: no event twice with different numbers, none lost.

WAL mode with synchronous=FULL: a committed transaction survives a power cut.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS machine (
    machine  TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_context (
    machine  TEXT PRIMARY KEY,
    payload  BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Pending:
    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class MachineRecord:
    next_seq: int
    snapshot: dict[str, object]


class Outbox:
    """SQLite-backed queue of MQTT messages, plus each machine's resume point. Not thread-safe: one owner."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)  # explicit transactions below
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def machine(self, machine_id: str) -> MachineRecord | None:
        row = self._db.execute("SELECT next_seq, snapshot FROM machine WHERE machine = ?", (machine_id,)).fetchone()
        if row is None:
            return None
        return MachineRecord(next_seq=int(row[0]), snapshot=json.loads(row[1]))

    def commit(
        self,
        machine_id: str,
        *,
        next_seq: int,
        snapshot: dict[str, object],
        messages: Iterable[tuple[str, bytes]],
    ) -> None:
        """Store the messages and the machine's new resume point atomically."""
        with self._transaction():
            self._db.executemany("INSERT INTO outbox (topic, payload) VALUES (?, ?)", messages)
            self._db.execute(
                "INSERT INTO machine (machine, next_seq, snapshot) VALUES (?, ?, ?) "
                "ON CONFLICT(machine) DO UPDATE SET next_seq = excluded.next_seq, snapshot = excluded.snapshot",
                (machine_id, next_seq, json.dumps(snapshot)),
            )

    def forget_resume_point(self, machine_id: str) -> None:
        """Start the machine from a fresh baseline (its sequence numbers go on). For a simulated machine that
        restarts its scenario, or a machine whose module was replaced. Queued events are kept."""
        with self._transaction():
            self._db.execute("UPDATE machine SET snapshot = '{}' WHERE machine = ?", (machine_id,))

    def save_context(self, machine_id: str, payload: bytes) -> None:
        """Keep the machine's latest job context (retained on MQTT), for a restart while the broker is away."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO job_context (machine, payload) VALUES (?, ?) "
                "ON CONFLICT(machine) DO UPDATE SET payload = excluded.payload",
                (machine_id, payload),
            )

    def contexts(self) -> dict[str, bytes]:
        return {str(m): bytes(p) for m, p in self._db.execute("SELECT machine, payload FROM job_context")}

    def pending(self, *, after_id: int, limit: int) -> list[Pending]:
        rows = self._db.execute(
            "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [Pending(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def acknowledge(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")

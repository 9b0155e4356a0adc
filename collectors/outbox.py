"""The durable outbox: events wait in SQLite until the broker has acknowledged them (PUBACK).

Theory of operation
-------------------
One SQLite file per collector. Each poll that yields events is one transaction that stores the events
*and* the machine's derivation snapshot and next sequence number, so that after a crash the collector
resumes exactly where its last committed poll left it: no event twice with different numbers, none lost.
WAL mode with synchronous=FULL: a committed transaction survives a power cut.

**A limit, and what is shed when it is reached** (issue #6: "telemetry may be shed oldest-first, but part
events are never dropped"). While the broker is unreachable the outbox grows. Its size is the sum of the
queued events' topic and payload bytes, kept exactly in memory (SQLite's file does not shrink on DELETE, so
the file size cannot be the measure; freed pages are reused by later events). The limit in force is
`max_bytes` (`collector.outbox_max_mb`), lowered when the filesystem has less than `min_free_bytes`
(`collector.spool_min_free_mb`) free: then the outbox may not grow any more (but may always hold
`LOW_DISK_FLOOR`, so that a low disk alone does not shed events the broker is about to take).

When a commit takes the outbox over its limit, the oldest events of the first class below that still has
some are deleted in the same transaction, until the outbox is back under the limit:

1. `cycle` **start**: redundant once the cycle's end is stored, which carries `started_ts` and the duration;
2. `state` transitions: the state timeline (the newest transitions are kept, so the current state is right);
3. `cycle` **end**: cycle times, utilisation and OEE performance; a maître wants them, so they go last.

`part` and `alarm` events are **never** shed: parts are what the school is paid for and what the order
progress counts; alarms are rare, small, and say why a machine stopped. They are kept beyond the limit.
Events handed to the broker and not yet acknowledged (`keep`) are never shed either: they may already be
delivered, and an event both shed and delivered would make the counts below lie.

Every shed event is counted per machine and class in the `shed` table, in the same transaction. The
sequence numbers stay honest: for each machine, events stored downstream + events shed = `next_seq`, so a
gap in `seq` is explained by the count, never mistaken for a loss. The collector publishes the counts in its
health report (copeau/contract.py `CollectorHealth`), and the gateway stores them in InfluxDB.

**When the disk refuses a write** (SQLITE_FULL, an I/O error), the batch is not lost: it is held in memory
(`unsaved`) and written, in order, before the next batch (or by `flush()`). A collector killed meanwhile
loses the held batches, but not their parts: the machine's resume point on disk was not advanced either, and
the hardware counter is cumulative, so the parts are counted again from it after the restart (flagged
`rebuilt`), under the same sequence numbers, which were never published. Memory is bounded: beyond
`unsaved_max_events` the held telemetry is shed like the stored one (parts and alarms never are).

**Acknowledged, then kept a little longer: replay after a broker restart** (`retain_acknowledged`). mosquitto
keeps its queue in memory and writes it to `mosquitto.db` on its autosave timer (`autosave_interval 1`, which
2.0.11 turns into a save about every 2 s). A broker killed with `kill -9`, or a power cut of the PC, therefore loses
every message it acknowledged since its last save: measured, 105 of 105 such events lost (23 parts) before this.
So an acknowledged row is not deleted: it is marked (`acked`, the wall-clock time of the PUBACK) and kept until
the broker has proved it was alive `collector.replay_window_s` after that PUBACK, by acknowledging anything later
on the *same* connection (`prune(before=…)`; the collector passes `last PUBACK − window`). A broker alive that
long has saved since, so the message is in its file or already delivered downstream. The proof is liveness, not
elapsed time: while the connection is down, or half-open (a broker host lost without an RST), nothing is pruned.

After every new connection to the broker (`start_replay()`), every kept row is published again, byte for byte
(`retained()`), and nothing is pruned until the new connection has acknowledged it again. Always, not only when
the broker says it lost our session (`session_present` False): the collector connects with a clean session
anyway, and the messages a broker loses on `kill -9` include those queued for the *gateway's* durable session,
which our session never knew about. A re-sent event lands on the same InfluxDB point (same measurement, tags and
time: writes are idempotent), so a replay costs a window's worth of duplicate deliveries, never a duplicate
count. Kept rows survive a restart of the collector (they are on disk), so a power cut of the whole PC is covered
too: they are replayed at the first connection after the restart.

Kept rows are *not* backlog: `depth()`, `stats().events` / `bytes` and the limit count only rows waiting for their
first acknowledgement; kept rows are counted apart (`stats().replay_events` / `replay_bytes`), are never shed
(they were delivered: shedding them would make the shed counts lie) and never push the limit into shedding real
backlog. Their number is bounded by the window: about `replay_window_s` seconds of production (it only stops
shrinking while the broker does not answer, and then nothing new is acknowledged either).

Levels (`SpoolLevel`): OK; LIMIT from the first shed until the outbox is back under half its limit; FULL
while events are held in memory. Each change is logged once (ERROR on the way in, INFO on the way out).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from copeau.contract import CycleData, CyclePhase, Event, EventKind, SpoolLevel

log = logging.getLogger(__name__)

MB = 1_000_000
LOW_DISK_FLOOR = 1 * MB  # what the outbox may always hold, even when the disk is below its free-space minimum
UNSAVED_MAX_EVENTS = 100_000  # events held in memory while the disk refuses writes, before telemetry is shed
_SHED_CHUNK = 512
_ID_CHUNK = 500  # ids per IN (...) clause

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    shed    INTEGER NOT NULL DEFAULT 0,  -- ShedClass: 0 never, else the order in which it may be shed
    bytes   INTEGER NOT NULL DEFAULT 0,  -- topic (UTF-8) + payload: what the limit counts
    acked   INTEGER                      -- NULL: waiting for the broker; else the wall-clock ns of its PUBACK (kept)
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
CREATE TABLE IF NOT EXISTS shed (
    machine TEXT NOT NULL,
    class   INTEGER NOT NULL,  -- ShedClass
    events  INTEGER NOT NULL,  -- shed since the file was created
    PRIMARY KEY (machine, class)
);
"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS outbox_sheddable ON outbox (shed, id) WHERE shed > 0",
    # The publisher's scans: rows waiting for their first acknowledgement, and rows kept for a replay.
    "CREATE INDEX IF NOT EXISTS outbox_waiting ON outbox (id) WHERE acked IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_kept ON outbox (id) WHERE acked IS NOT NULL",
)
_SCHEMA_VERSION = 2  # PRAGMA user_version; 0 = before the shed and bytes columns; 1 = before acked


class ShedClass(IntEnum):
    """Which queued events may be shed at the limit, and in which order (lowest first). See the module doc."""

    NEVER = 0  # part and alarm events
    CYCLE_START = 1
    STATE = 2
    CYCLE_END = 3


SHED_ORDER = (ShedClass.CYCLE_START, ShedClass.STATE, ShedClass.CYCLE_END)


def shed_class(event: Event) -> ShedClass:
    """The shedding class of an event (the policy in the module docstring)."""
    if event.kind is EventKind.STATE:
        return ShedClass.STATE
    if event.kind is EventKind.CYCLE and isinstance(event.data, CycleData):
        return ShedClass.CYCLE_START if event.data.phase is CyclePhase.START else ShedClass.CYCLE_END
    return ShedClass.NEVER


class Message(NamedTuple):
    """One MQTT message for the outbox. A plain `(topic, payload)` tuple is a message that is never shed."""

    topic: str
    payload: bytes
    shed: ShedClass = ShedClass.NEVER


@dataclass(frozen=True)
class Pending:
    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class MachineRecord:
    next_seq: int
    snapshot: dict[str, object]


@dataclass(frozen=True)
class OutboxStats:
    """The outbox's numbers, for the collector's health report."""

    events: int  # stored, waiting for the broker's (first) acknowledgement
    bytes: int  # their topic + payload bytes (what the limit counts)
    file_bytes: int  # the SQLite database and WAL files on disk
    limit_bytes: int  # the limit in force at the last commit
    disk_free_bytes: int | None
    level: SpoolLevel
    unsaved_events: int  # held in memory because the disk refused them
    shed: dict[tuple[str, ShedClass], int]  # events shed since the file was created, per machine and class
    replay_events: int = 0  # acknowledged, kept for a replay after a broker restart (not backlog)
    replay_bytes: int = 0

    @property
    def shed_events(self) -> int:
        return sum(self.shed.values())


@dataclass
class _Batch:
    machine: str
    next_seq: int
    snapshot: str
    rows: list[tuple[str, bytes, int, int]]  # topic, payload, shed class, bytes
    shed: Counter[tuple[str, ShedClass]] = field(default_factory=Counter)  # shed from memory


class Outbox:
    """SQLite-backed queue of MQTT messages, plus each machine's resume point. Not thread-safe: one owner.

    `max_bytes` None means no size limit; `min_free_bytes` 0 means no free-space check. `disk_free` returns
    the free bytes of the outbox's filesystem (tests inject one). `retain_acknowledged`: keep acknowledged rows
    for a replay (see the module doc) rather than delete them at once."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        min_free_bytes: int = 0,
        disk_free: Callable[[], int] | None = None,
        unsaved_max_events: int = UNSAVED_MAX_EVENTS,
        retain_acknowledged: bool = False,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._disk_free = disk_free or self._filesystem_free
        self._unsaved_max = unsaved_max_events
        self.retain_acknowledged = retain_acknowledged
        self._db = sqlite3.connect(path, isolation_level=None)  # explicit transactions below
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate()
        for index in _INDEXES:
            self._db.execute(index)
        count, total = self._db.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM outbox WHERE acked IS NULL"
        ).fetchone()
        self._events, self._bytes = int(count), int(total)
        count, total = self._db.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM outbox WHERE acked IS NOT NULL"
        ).fetchone()
        self._kept_events, self._kept_bytes = int(count), int(total)
        # (monotonic time of the acknowledgement, row ids), oldest first: what `prune()` may delete. Empty after a
        # start and after `start_replay()`: a kept row becomes prunable only once acknowledged again.
        self._acks: deque[tuple[float, list[int]]] = deque()
        self._shed: Counter[tuple[str, ShedClass]] = Counter(
            {(str(m), ShedClass(c)): int(n) for m, c, n in self._db.execute("SELECT machine, class, events FROM shed")}
        )
        self._unsaved: list[_Batch] = []
        self._unacked: list[int] = []  # acknowledged ids whose DELETE the disk refused; retried
        self.limit_bytes = max_bytes if max_bytes is not None else 2**63 - 1
        self.disk_free_bytes: int | None = None
        self._at_limit = False
        self._over_logged = False
        self._episode_shed = 0
        self._full_logged = False

    def close(self) -> None:
        if self._unsaved:
            log.error(
                "outbox %s closed with %d events the disk refused, held in memory: lost (parts are counted "
                "again from the machines' counters at the next start)", self.path, self.unsaved_events,
            )
        self._db.close()

    # -- machines' resume points and job contexts

    def machine(self, machine_id: str) -> MachineRecord | None:
        for batch in reversed(self._unsaved):  # not on disk yet, but it is where the machine is
            if batch.machine == machine_id:
                return MachineRecord(next_seq=batch.next_seq, snapshot=json.loads(batch.snapshot))
        row = self._db.execute("SELECT next_seq, snapshot FROM machine WHERE machine = ?", (machine_id,)).fetchone()
        if row is None:
            return None
        return MachineRecord(next_seq=int(row[0]), snapshot=json.loads(row[1]))

    def forget_resume_point(self, machine_id: str) -> None:
        """Start the machine from a fresh baseline (its sequence numbers go on). For a simulated machine that
        restarts its scenario, or a machine whose module was replaced. Queued events are kept."""
        with self._transaction():
            self._db.execute("UPDATE machine SET snapshot = '{}' WHERE machine = ?", (machine_id,))

    def save_context(self, machine_id: str, payload: bytes) -> None:
        """Keep the machine's latest job context (retained on MQTT), for a restart while the broker is away."""
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO job_context (machine, payload) VALUES (?, ?) "
                    "ON CONFLICT(machine) DO UPDATE SET payload = excluded.payload",
                    (machine_id, payload),
                )
        except sqlite3.OperationalError as exc:
            if not _disk_refused(exc):
                raise
            # Events are still stamped with it (the collector keeps it in memory); only a restart would miss it.
            log.warning("%s: job context not saved to %s (%s)", machine_id, self.path, exc)

    def contexts(self) -> dict[str, bytes]:
        return {str(m): bytes(p) for m, p in self._db.execute("SELECT machine, payload FROM job_context")}

    # -- the queue

    def commit(
        self,
        machine_id: str,
        *,
        next_seq: int,
        snapshot: dict[str, object],
        messages: Iterable[Message | tuple[str, bytes]],
        keep: Collection[int] = (),
    ) -> None:
        """Store the messages and the machine's new resume point atomically, then shed the oldest telemetry
        if the outbox is over its limit (never a row in `keep`: handed to the broker, not acknowledged yet).

        If the disk refuses the write, the batch is held in memory and written before the next one."""
        rows = []
        for m in messages:
            msg = Message(*m)
            rows.append((msg.topic, msg.payload, int(msg.shed), len(msg.topic.encode()) + len(msg.payload)))
        batch = _Batch(machine_id, next_seq, json.dumps(snapshot), rows)
        self._unsaved.append(batch)
        try:
            self._write_unsaved(keep)
        except sqlite3.OperationalError as exc:
            if not _disk_refused(exc):
                self._unsaved.pop()
                raise
            self._hold(exc)
        except BaseException:
            self._unsaved.pop()  # a bug, not the disk: the caller sees the error, nothing is written
            raise

    def flush(self, keep: Collection[int] = ()) -> bool:
        """Write the batches held in memory, if any. True when nothing is held any more."""
        if not self._unsaved:
            return True
        try:
            self._write_unsaved(keep)
        except sqlite3.OperationalError as exc:
            if not _disk_refused(exc):
                raise
            self._hold(exc)
            return False
        return True

    def pending(self, *, after_id: int, limit: int) -> list[Pending]:
        """Rows waiting for their first acknowledgement, oldest first, after `after_id`."""
        rows = self._db.execute(
            "SELECT id, topic, payload FROM outbox WHERE acked IS NULL AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [Pending(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def acknowledge(self, ids: Sequence[int], *, at: float | None = None) -> None:
        """The broker acknowledged these rows (at monotonic time `at`, now by default): delete them, or with
        `retain_acknowledged` mark them kept for a replay (a kept row acknowledged again is marked again)."""
        ids = [*self._unacked, *ids]
        if not ids:
            return
        at = time.monotonic() if at is None else at
        events = size = 0
        try:
            with self._transaction():
                for start in range(0, len(ids), _ID_CHUNK):
                    chunk = ids[start : start + _ID_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    n, b = self._db.execute(
                        f"SELECT count(*), coalesce(sum(bytes), 0) FROM outbox WHERE acked IS NULL AND id IN ({marks})",
                        chunk,
                    ).fetchone()
                    if self.retain_acknowledged:
                        self._db.execute(f"UPDATE outbox SET acked = ? WHERE id IN ({marks})", [time.time_ns(), *chunk])
                    else:
                        self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                    events, size = events + int(n), size + int(b)
        except sqlite3.OperationalError as exc:
            if not _disk_refused(exc):
                raise
            # The rows stay and may be published again: byte-identical, hence harmless downstream.
            if not self._unacked:
                log.warning("outbox %s: could not mark acknowledged events (%s); retried", self.path, exc)
            self._unacked = ids
            return
        self._unacked = []
        self._events -= events
        self._bytes -= size
        if self.retain_acknowledged:
            self._kept_events += events
            self._kept_bytes += size
            self._acks.append((at, ids))
        elif self._kept_events:
            # Kept rows from a run with retention on, replayed and acknowledged again: deleted now.
            self._count_kept()
        self._update_limit_level()

    # -- replay after a new connection (see the module doc)

    def start_replay(self) -> int:
        """A new connection to the broker: every kept row must be published again, and none may be pruned until
        it is acknowledged again. Returns the highest kept row id (0: nothing to replay)."""
        self._acks.clear()
        row = self._db.execute("SELECT max(id) FROM outbox WHERE acked IS NOT NULL").fetchone()
        return int(row[0] or 0)

    def retained(self, *, after_id: int, upto_id: int, limit: int) -> list[Pending]:
        """Kept (acknowledged) rows with `after_id` < id <= `upto_id`, oldest first: the replay."""
        rows = self._db.execute(
            "SELECT id, topic, payload FROM outbox WHERE acked IS NOT NULL AND id > ? AND id <= ? ORDER BY id LIMIT ?",
            (after_id, upto_id, limit),
        ).fetchall()
        return [Pending(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def prune(self, *, before: float) -> int:
        """Delete the kept rows acknowledged (since the last `start_replay()`) before monotonic time `before`.
        Returns how many were deleted."""
        ids: list[int] = []
        while self._acks and self._acks[0][0] < before:
            ids.extend(self._acks.popleft()[1])
        if not ids:
            return 0
        events = size = 0
        try:
            with self._transaction():
                for start in range(0, len(ids), _ID_CHUNK):
                    chunk = ids[start : start + _ID_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    n, b = self._db.execute(
                        "SELECT count(*), coalesce(sum(bytes), 0) FROM outbox "
                        f"WHERE acked IS NOT NULL AND id IN ({marks})",
                        chunk,
                    ).fetchone()
                    self._db.execute(f"DELETE FROM outbox WHERE acked IS NOT NULL AND id IN ({marks})", chunk)
                    events, size = events + int(n), size + int(b)
        except sqlite3.OperationalError as exc:
            if not _disk_refused(exc):
                raise
            self._acks.appendleft((before, ids))  # kept a little longer (a replay more); retried at the next prune
            return 0
        self._kept_events -= events
        self._kept_bytes -= size
        return events

    def _count_kept(self) -> None:
        count, total = self._db.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM outbox WHERE acked IS NOT NULL"
        ).fetchone()
        self._kept_events, self._kept_bytes = int(count), int(total)

    def depth(self) -> int:
        """Events stored and not yet acknowledged (those held in memory, and acknowledged rows kept for a replay,
        are not counted: see `stats()`)."""
        return self._events

    @property
    def unsaved_events(self) -> int:
        return sum(len(b.rows) for b in self._unsaved)

    @property
    def level(self) -> SpoolLevel:
        if self._unsaved:
            return SpoolLevel.FULL
        return SpoolLevel.LIMIT if self._at_limit else SpoolLevel.OK

    def stats(self) -> OutboxStats:
        shed = Counter(self._shed)
        for batch in self._unsaved:
            shed.update(batch.shed)
        return OutboxStats(
            events=self._events,
            bytes=self._bytes,
            file_bytes=sum(_size(Path(f"{self.path}{suffix}")) for suffix in ("", "-wal")),
            limit_bytes=self.limit_bytes,
            disk_free_bytes=self._measure_free(),
            level=self.level,
            unsaved_events=self.unsaved_events,
            shed=dict(shed),
            replay_events=self._kept_events,
            replay_bytes=self._kept_bytes,
        )

    # -- internals

    def _write_unsaved(self, keep: Collection[int]) -> None:
        """One transaction: every batch held (oldest first), then shedding down to the limit."""
        limit = self._limit()
        inserted_events = inserted_bytes = 0
        shed_now: Counter[tuple[str, ShedClass]] = Counter()
        with self._transaction():
            for batch in self._unsaved:
                self._db.executemany(
                    "INSERT INTO outbox (topic, payload, shed, bytes) VALUES (?, ?, ?, ?)", batch.rows
                )
                self._db.execute(
                    "INSERT INTO machine (machine, next_seq, snapshot) VALUES (?, ?, ?) ON CONFLICT(machine) "
                    "DO UPDATE SET next_seq = excluded.next_seq, snapshot = excluded.snapshot",
                    (batch.machine, batch.next_seq, batch.snapshot),
                )
                inserted_events += len(batch.rows)
                inserted_bytes += sum(r[3] for r in batch.rows)
                shed_now.update(batch.shed)  # shed from memory earlier: counted now that it can be written
            excess = self._bytes + inserted_bytes - limit
            shed_events = shed_bytes = 0
            if excess > 0:
                # Acknowledged rows whose DELETE the disk refused were delivered: never count them as shed.
                shed_events, shed_bytes = self._shed_rows(excess, {*keep, *self._unacked}, shed_now)
            self._db.executemany(
                "INSERT INTO shed (machine, class, events) VALUES (?, ?, ?) ON CONFLICT(machine, class) "
                "DO UPDATE SET events = events + excluded.events",
                [(m, int(c), n) for (m, c), n in shed_now.items()],
            )
        # Committed: now the numbers in memory may follow.
        self._events += inserted_events - shed_events
        self._bytes += inserted_bytes - shed_bytes
        self._shed.update(shed_now)
        if self._unsaved and self._full_logged:
            log.info("outbox %s: the disk accepts writes again; %d held events saved", self.path, inserted_events)
        self._unsaved.clear()
        self._full_logged = False
        if excess > 0:
            self._reached_limit(limit, shed_events, excess - shed_bytes)
        self._update_limit_level()

    def _shed_rows(self, excess: int, keep: set[int], counts: Counter[tuple[str, ShedClass]]) -> tuple[int, int]:
        """Delete the oldest sheddable rows, class by class, until `excess` bytes are gone (inside the caller's
        transaction). Returns (events, bytes) deleted; adds them to `counts` per machine and class."""
        events = size = 0
        for cls in SHED_ORDER:
            after = 0
            while size < excess:
                rows = self._db.execute(
                    # `shed > 0` lets SQLite use the partial index (it cannot infer it from `shed = ?`); without
                    # it, a class with no rows left costs a scan of the whole table at every commit.
                    # Kept rows (`acked`) were delivered: never shed, never counted as backlog.
                    "SELECT id, topic, bytes FROM outbox WHERE shed = ? AND shed > 0 AND acked IS NULL AND id > ? "
                    "ORDER BY id LIMIT ?",
                    (int(cls), after, _SHED_CHUNK),
                ).fetchall()
                if not rows:
                    break
                victims = []
                for row_id, topic, n in rows:
                    after = row_id
                    if row_id in keep:
                        continue
                    victims.append((row_id,))
                    counts[(_machine_of(topic), cls)] += 1
                    events, size = events + 1, size + int(n)
                    if size >= excess:
                        break
                self._db.executemany("DELETE FROM outbox WHERE id = ?", victims)
            if size >= excess:
                break
        return events, size

    def _limit(self) -> int:
        limit = self.max_bytes if self.max_bytes is not None else 2**63 - 1
        free = self._measure_free()
        if self.min_free_bytes and free is not None:
            room = free - self.min_free_bytes
            limit = min(limit, max(self._bytes + max(room, 0), LOW_DISK_FLOOR))
        self.limit_bytes = limit
        return limit

    def _measure_free(self) -> int | None:
        try:
            self.disk_free_bytes = self._disk_free()
        except OSError:
            self.disk_free_bytes = None
        return self.disk_free_bytes

    def _filesystem_free(self) -> int:
        return shutil.disk_usage(self.path.parent).free

    def _reached_limit(self, limit: int, shed: int, still_over: int) -> None:
        self._episode_shed += shed
        if not self._at_limit:
            self._at_limit = True
            why = (
                f"collector.outbox_max_mb = {limit / MB:g} MB"
                if limit == self.max_bytes
                else f"only {(self.disk_free_bytes or 0) / MB:.0f} MB free on the disk, "
                f"collector.spool_min_free_mb = {self.min_free_bytes / MB:g} MB"
            )
            log.error(
                "outbox %s reached its limit (%s): shedding the oldest telemetry (cycle starts, then states, "
                "then cycle ends) and counting it; part and alarm events are never shed",
                self.path, why,
            )
        if still_over > 0 and not self._over_logged:
            self._over_logged = True
            log.error(
                "outbox %s: only part and alarm events (or events being sent) left; they are kept beyond the "
                "limit (%d bytes over)", self.path, still_over,
            )

    def _update_limit_level(self) -> None:
        if self._at_limit and self._bytes <= self.limit_bytes // 2:
            self._at_limit = False
            self._over_logged = False
            log.info(
                "outbox %s back under half its limit; %d events were shed meanwhile (%s)",
                self.path, self._episode_shed, self._shed_summary(),
            )
            self._episode_shed = 0

    def _shed_summary(self) -> str:
        by_class: Counter[str] = Counter()
        for (_machine, cls), n in self._shed.items():
            by_class[cls.name.lower()] += n
        return ", ".join(f"{name} {n}" for name, n in sorted(by_class.items())) or "none"

    def _hold(self, exc: sqlite3.OperationalError) -> None:
        """The disk refused the transaction: keep the batches in memory; shed held telemetry beyond the cap."""
        held = self.unsaved_events
        if held > self._unsaved_max:
            for cls in SHED_ORDER:
                for batch in self._unsaved:
                    kept = []
                    for row in batch.rows:
                        if held > self._unsaved_max and row[2] == cls:
                            batch.shed[(_machine_of(row[0]), cls)] += 1
                            held -= 1
                        else:
                            kept.append(row)
                    batch.rows = kept
        if not self._full_logged:
            self._full_logged = True
            log.error(
                "outbox %s: the disk refused the write (%s); %d events held in memory and retried. Parts are safe "
                "(counted again from the machine's counter if the collector stops now); free some disk space",
                self.path, exc, self.unsaved_events,
            )

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version >= _SCHEMA_VERSION:
            return
        columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(outbox)")}
        with self._transaction():
            if "acked" not in columns:  # an outbox from before the replay: every row it holds is waiting
                self._db.execute("ALTER TABLE outbox ADD COLUMN acked INTEGER")
            if "shed" not in columns:  # an outbox from before the limit: classify the rows it holds
                self._db.execute("ALTER TABLE outbox ADD COLUMN shed INTEGER NOT NULL DEFAULT 0")
                self._db.execute("ALTER TABLE outbox ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
                rows = self._db.execute("SELECT id, topic, CAST(payload AS BLOB) FROM outbox").fetchall()
                self._db.executemany(
                    "UPDATE outbox SET shed = ?, bytes = ? WHERE id = ?",
                    [(int(_stored_class(t, bytes(p))), len(t.encode()) + len(p), i) for i, t, p in rows],
                )
            self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL, I/O errors)
            self._db.execute("ROLLBACK")


def _disk_refused(exc: sqlite3.OperationalError) -> bool:
    """The disk, not our SQL: full, an I/O error, or a database size cap reached."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "disk" in str(exc) or "full" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def _machine_of(topic: str) -> str:
    parts = topic.split("/")
    return parts[3] if len(parts) == 5 else ""


def _stored_class(topic: str, payload: bytes) -> ShedClass:
    """The class of a row stored before the schema had one (an unreadable one is kept: never shed)."""
    try:
        return shed_class(Event.model_validate_json(payload))
    except ValueError:
        return ShedClass.NEVER


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0

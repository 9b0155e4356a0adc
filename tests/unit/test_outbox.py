"""The outbox keeps messages and resume points atomically, in order, across a reopen (a crash); at its limit it
sheds the oldest telemetry class by class, never a part, an alarm or an event in flight, and counts exactly
what it shed; when the disk refuses a write it holds the events in memory and writes them later, in order."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors import outbox as outbox_module
from collectors.outbox import SHED_ORDER, Message, Outbox, ShedClass, shed_class
from copeau.contract import (
    AlarmData,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventKind,
    MachineState,
    PartData,
    SpoolLevel,
    StateData,
)

TS0 = 1_800_000_000_000_000_000


def test_commit_pending_acknowledge_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.commit("m1", next_seq=2, snapshot={"counter": 5}, messages=[("t/a", b"1"), ("t/b", b"2")])
    box.commit("m2", next_seq=1, snapshot={"counter": 9}, messages=[("t/c", b"3")])
    rows = box.pending(after_id=0, limit=10)
    assert [(r.topic, r.payload) for r in rows] == [("t/a", b"1"), ("t/b", b"2"), ("t/c", b"3")]
    box.acknowledge([rows[0].id])
    box.close()

    reopened = Outbox(path)  # as after a crash: what was not acknowledged is still there, in order
    assert [r.payload for r in reopened.pending(after_id=0, limit=10)] == [b"2", b"3"]
    assert reopened.machine("m1") is not None
    assert reopened.machine("m1").next_seq == 2
    assert reopened.machine("m2").snapshot == {"counter": 9}
    assert reopened.machine("nope") is None
    assert reopened.depth() == 2
    assert reopened.stats().bytes == len(b"t/b2") + len(b"t/c3")


def test_a_failed_commit_writes_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10)
    box.commit("m1", next_seq=1, snapshot={"counter": 1}, messages=[("t", b"ok")])

    def broken(*_args: object) -> tuple[int, int]:
        raise RuntimeError("a bug while shedding")

    box._shed_rows = broken  # type: ignore[method-assign]  # fails after the inserts, inside the transaction
    with pytest.raises(RuntimeError):
        box.commit("m1", next_seq=3, snapshot={"counter": 2}, messages=[Message("t", b"x" * 20, ShedClass.STATE)])
    with pytest.raises(TypeError):  # a payload that is not bytes: refused before anything is written
        box.commit("m1", next_seq=3, snapshot={"counter": 2}, messages=[("t", b"x"), ("t", object())])  # type: ignore[list-item]
    assert box.depth() == 1
    assert box.machine("m1").next_seq == 1
    assert box.unsaved_events == 0  # a bug is raised, not held in memory as if the disk were full
    assert [r.payload for r in box.pending(after_id=0, limit=10)] == [b"ok"]


# -- the shedding policy ---------------------------------------------------------------------------------------


def _event(seq: int, kind: EventKind, data: object, machine: str = "m1") -> Event:
    return Event(site="s", machine=machine, kind=kind, seq=seq, ts=TS0 + seq * 10**9, data=data)


def test_shed_classes_follow_the_policy() -> None:
    start = _event(0, EventKind.CYCLE, CycleData(phase=CyclePhase.START))
    end = _event(1, EventKind.CYCLE, CycleData(phase=CyclePhase.END, started_ts=TS0, duration_s=1.0,
                                                 outcome=CycleOutcome.COMPLETED))
    state = _event(2, EventKind.STATE, StateData(state=MachineState.IDLE))
    part = _event(3, EventKind.PART, PartData(count=1))
    alarm = _event(4, EventKind.ALARM, AlarmData(active=True))
    assert [shed_class(e) for e in (start, state, end, part, alarm)] == [
        ShedClass.CYCLE_START, ShedClass.STATE, ShedClass.CYCLE_END, ShedClass.NEVER, ShedClass.NEVER
    ]
    assert SHED_ORDER == (ShedClass.CYCLE_START, ShedClass.STATE, ShedClass.CYCLE_END)


def _production(cycles: int) -> list[list[Event]]:
    """Polls of a machine making `cycles` parts: each cycle is (state running + cycle start), (cycle end +
    part + state idle), with an alarm raised and cleared every 10 cycles. One list of events per poll.
    Per 10 cycles: 10 parts, 2 alarm events, 40 telemetry events (10 starts, 20 states, 10 ends)."""
    polls: list[list[Event]] = []
    seq = 0

    def ev(kind: EventKind, data: object) -> Event:
        nonlocal seq
        seq += 1
        return _event(seq - 1, kind, data)

    for i in range(cycles):
        polls.append([ev(EventKind.STATE, StateData(state=MachineState.RUNNING, previous=MachineState.IDLE)),
                      ev(EventKind.CYCLE, CycleData(phase=CyclePhase.START))])
        polls.append([ev(EventKind.CYCLE, CycleData(phase=CyclePhase.END, started_ts=TS0, duration_s=6.0,
                                                    outcome=CycleOutcome.COMPLETED)),
                      ev(EventKind.PART, PartData(count=1, counter=i + 1)),
                      ev(EventKind.STATE, StateData(state=MachineState.IDLE, previous=MachineState.RUNNING))])
        if i % 10 == 9:
            polls.append([ev(EventKind.ALARM, AlarmData(active=True, code="E1"))])
            polls.append([ev(EventKind.ALARM, AlarmData(active=False, code="E1"))])
    return polls


def _commit_polls(box: Outbox, polls: list[list[Event]], keep: set[int] | None = None) -> int:
    next_seq = 0
    for events in polls:
        next_seq = events[-1].seq + 1
        box.commit("m1", next_seq=next_seq, snapshot={}, keep=keep or set(),
                   messages=[Message(e.topic, e.encode(), shed_class(e)) for e in events])
    return next_seq


def _stored_events(box: Outbox) -> list[Event]:
    return [Event.model_validate_json(r.payload) for r in box.pending(after_id=0, limit=1_000_000)]


def test_at_the_limit_parts_stay_and_the_oldest_telemetry_goes_first_class_by_class(tmp_path: Path) -> None:
    polls = _production(200)  # 200 parts, 40 alarm events, 800 telemetry events
    all_events = [e for p in polls for e in p]
    sizes = {e.seq: len(e.topic.encode()) + len(e.encode()) for e in all_events}
    limit = 90_000  # about 40 % of the 1040 events a long broker outage leaves in the outbox
    box = Outbox(tmp_path / "o.sqlite", max_bytes=limit)
    next_seq = _commit_polls(box, polls)

    stored = _stored_events(box)
    stored_seqs = {e.seq for e in stored}
    kinds = Counter(e.kind for e in stored)
    assert kinds[EventKind.PART] == 200 and kinds[EventKind.ALARM] == 40, "a part or an alarm was shed"
    assert sum(e.data.count for e in stored if e.kind is EventKind.PART) == 200  # type: ignore[union-attr]
    stats = box.stats()
    assert stats.bytes == sum(sizes[s] for s in stored_seqs) <= limit
    assert stats.events == len(stored) == box.depth()
    assert stats.level is SpoolLevel.LIMIT

    # Shed counts are exact, and with what is stored they account for every sequence number.
    shed = {cls: stats.shed.get(("m1", cls), 0) for cls in ShedClass}
    assert shed[ShedClass.NEVER] == 0
    for cls in SHED_ORDER:
        made = sum(1 for e in all_events if shed_class(e) is cls)
        kept = sum(1 for e in stored if shed_class(e) is cls)
        assert shed[cls] == made - kept
    assert len(stored) + stats.shed_events == next_seq == len(all_events)

    # Class by class: every cycle start went before any state, every state before any cycle end; within a
    # class the oldest went first (what is kept of a class is its newest events).
    assert shed[ShedClass.CYCLE_START] == 200
    assert 0 < shed[ShedClass.STATE] < 400 and shed[ShedClass.CYCLE_END] == 0
    kept_states = sorted(e.seq for e in stored if e.kind is EventKind.STATE)
    all_states = sorted(e.seq for e in all_events if e.kind is EventKind.STATE)
    assert kept_states == all_states[-len(kept_states):]


@dataclass
class _Model:
    """The shedding rule, as plainly as it can be written: a list of rows in id order."""

    limit: int
    rows: list[tuple[int, int, int, str]] = field(default_factory=list)  # id, class, bytes, machine
    next_id: int = 1
    shed: Counter[tuple[str, int]] = field(default_factory=Counter)

    def commit(self, new: list[tuple[int, int, str]], keep: set[int]) -> None:
        for cls, size, machine in new:
            self.rows.append((self.next_id, cls, size, machine))
            self.next_id += 1
        excess = sum(r[2] for r in self.rows) - self.limit
        for cls in (1, 2, 3):
            for row in list(self.rows):
                if excess <= 0:
                    return
                if row[1] == cls and row[0] not in keep:
                    self.rows.remove(row)
                    self.shed[(row[3], cls)] += 1
                    excess -= row[2]

    def acknowledge(self, ids: set[int]) -> None:
        self.rows = [r for r in self.rows if r[0] not in ids]


_row = st.tuples(st.integers(0, 3), st.integers(1, 60), st.sampled_from(["m1", "m2"]))
_step = st.one_of(
    st.tuples(st.just("commit"), st.lists(_row, min_size=1, max_size=6)),
    st.tuples(st.just("send"), st.integers(0, 5)),  # hand the oldest rows to the broker (kept from shedding)
    st.tuples(st.just("ack"), st.integers(0, 5)),  # the broker acknowledges the oldest rows in flight
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 400), steps=st.lists(_step, max_size=40))
def test_shedding_matches_a_reference_model(tmp_path_factory: pytest.TempPathFactory, limit: int,
                                            steps: list[tuple[str, object]]) -> None:
    box = Outbox(tmp_path_factory.mktemp("o") / "o.sqlite", max_bytes=limit)
    model = _Model(limit)
    inflight: list[int] = []
    committed_never = 0
    for action, arg in steps:
        if action == "commit":
            new = [(c, size, m) for c, size, m in arg]  # type: ignore[attr-defined]
            messages = []
            for cls, size, machine in new:
                topic = f"copeau/v1/s/{machine}/k"
                messages.append(Message(topic, b"x" * (size), ShedClass(cls)))
            model_new = [(cls, len(topic.encode()) + size, machine) for (cls, size, machine) in new]
            committed_never += sum(1 for c, _s, _m in new if c == 0)
            box.commit("m1", next_seq=0, snapshot={}, messages=messages, keep=set(inflight))
            model.commit(model_new, set(inflight))
        elif action == "send":
            waiting = [r[0] for r in model.rows if r[0] not in inflight]
            inflight.extend(waiting[: int(arg)])  # type: ignore[call-overload]
        else:
            acked, inflight[:] = inflight[: int(arg)], inflight[int(arg):]  # type: ignore[call-overload]
            box.acknowledge(acked)
            model.acknowledge(set(acked))
        rows = box.pending(after_id=0, limit=10_000)
        assert [r.id for r in rows] == [r[0] for r in model.rows]
        stats = box.stats()
        assert stats.bytes == sum(r[2] for r in model.rows)
        assert {(m, int(c)): n for (m, c), n in stats.shed.items()} == dict(model.shed)
        assert stats.events == len(model.rows)
    # Nothing of class NEVER was ever shed.
    assert all(c != 0 for (_m, c) in model.shed)


def test_events_in_flight_are_never_shed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=200)
    box.commit("m1", next_seq=2, snapshot={},
               messages=[Message("copeau/v1/s/m1/state", b"a" * 80, ShedClass.STATE),
                         Message("copeau/v1/s/m1/state", b"b" * 80, ShedClass.STATE)])
    first = box.pending(after_id=0, limit=1)[0].id  # handed to the broker, not acknowledged
    box.commit("m1", next_seq=3, snapshot={}, keep={first},
               messages=[Message("copeau/v1/s/m1/state", b"c" * 80, ShedClass.STATE)])
    assert [r.payload[:1] for r in box.pending(after_id=0, limit=10)] == [b"a", b"c"]
    assert box.stats().shed == {("m1", ShedClass.STATE): 1}


def test_shed_counts_and_sizes_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_bytes=20_000)
    next_seq = _commit_polls(box, _production(50))
    before = box.stats()
    box.close()
    again = Outbox(path, max_bytes=20_000)
    after = again.stats()
    assert (after.events, after.bytes, after.shed) == (before.events, before.bytes, before.shed)
    assert after.events + after.shed_events == next_seq


def test_the_limit_is_logged_once_then_its_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=15_000)  # the 48 parts and alarms take about 8 kB
    with caplog.at_level(logging.INFO, logger="collectors.outbox"):
        _commit_polls(box, _production(40))
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "reached its limit" in errors[0].getMessage()
        assert box.level is SpoolLevel.LIMIT
        box.acknowledge([r.id for r in box.pending(after_id=0, limit=10_000)])  # the broker is back
    assert box.level is SpoolLevel.OK
    assert "back under half its limit" in caplog.records[-1].getMessage()


def test_only_parts_left_are_kept_beyond_the_limit(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=100)
    for i in range(10):
        e = _event(i, EventKind.PART, PartData(count=2))
        box.commit("m1", next_seq=i + 1, snapshot={}, messages=[Message(e.topic, e.encode(), shed_class(e))])
    assert box.depth() == 10
    assert box.stats().bytes > 100
    assert box.level is SpoolLevel.LIMIT
    assert box.stats().shed_events == 0


def test_below_the_free_space_minimum_the_outbox_stops_growing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "LOW_DISK_FLOOR", 2_000)
    free = [10_000_000]
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10**9, min_free_bytes=5_000_000, disk_free=lambda: free[0])
    polls = _production(60)
    _commit_polls(box, polls[:40])
    grown = box.stats().bytes
    assert grown > 2_000 and box.stats().shed_events == 0  # plenty of room: nothing shed
    free[0] = 4_000_000  # somebody filled the disk: below the minimum
    box.commit("m1", next_seq=1000, snapshot={}, messages=[
        Message(e.topic, e.encode(), shed_class(e)) for p in polls[40:] for e in p
    ])
    stats = box.stats()
    parts_added = sum(len(e.topic.encode()) + len(e.encode()) for p in polls[40:] for e in p
                      if e.kind is EventKind.PART)
    # No growth beyond the size it had, except the parts, which are never shed.
    assert stats.bytes <= grown
    assert parts_added > 0
    assert stats.shed_events > 0 and stats.limit_bytes == grown
    assert stats.disk_free_bytes == 4_000_000


# -- when the disk refuses writes ------------------------------------------------------------------------------


def _refuse_growth(box: Outbox) -> None:
    """The database may not take one more page: SQLite answers SQLITE_FULL, as on a full disk."""
    box._db.execute("PRAGMA max_page_count = 1")  # clamped to the current size


def _allow_growth(box: Outbox) -> None:
    box._db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_holds_events_in_memory_in_order_then_writes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    _refuse_growth(box)
    parts = [_event(i, EventKind.PART, PartData(count=1, counter=i)) for i in range(300)]
    with caplog.at_level(logging.INFO, logger="collectors.outbox"):
        for e in parts:
            box.commit("m1", next_seq=e.seq + 1, snapshot={"counter": e.seq},
                       messages=[Message(e.topic, e.encode(), shed_class(e))])
        assert box.level is SpoolLevel.FULL
        assert box.unsaved_events + box.depth() == 300  # nothing dropped; what the disk took, it has
        assert box.unsaved_events > 0
        assert box.machine("m1").next_seq == 300  # where the machine is, even if not on disk yet
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        assert not box.flush()  # still full
        _allow_growth(box)
        assert box.flush()
    assert box.level is SpoolLevel.OK and box.unsaved_events == 0
    assert [Event.model_validate_json(r.payload).seq for r in box.pending(after_id=0, limit=1000)] == list(range(300))
    assert "accepts writes again" in caplog.records[-1].getMessage()
    box.close()
    assert Outbox(tmp_path / "o.sqlite").machine("m1").next_seq == 300


def test_held_telemetry_is_shed_beyond_the_memory_cap_but_never_parts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", unsaved_max_events=150)
    _refuse_growth(box)
    polls = _production(40)  # 40 parts, 8 alarm events, 160 telemetry events
    next_seq = _commit_polls(box, polls)  # the first few may fit in the pages the file has
    assert 40 < box.unsaved_events <= 150
    _allow_growth(box)
    assert box.flush()
    stored = _stored_events(box)
    assert sum(1 for e in stored if e.kind is EventKind.PART) == 40
    assert sum(1 for e in stored if e.kind is EventKind.ALARM) == 8
    stats = box.stats()
    assert len(stored) + sum(n for (m, _c), n in stats.shed.items() if m == "m1") == next_seq
    assert stats.shed.get(("m1", ShedClass.CYCLE_END), 0) == 0  # starts and states went first


def test_an_outbox_from_before_the_limit_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL);
        CREATE TABLE machine (machine TEXT PRIMARY KEY, next_seq INTEGER NOT NULL, snapshot TEXT NOT NULL);
    """)
    events = [e for p in _production(3) for e in p]
    db.executemany("INSERT INTO outbox (topic, payload) VALUES (?, ?)", [(e.topic, e.encode()) for e in events])
    db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", ("copeau/v1/s/m1/state", b"not json"))
    db.commit()
    db.close()
    box = Outbox(path, max_bytes=1)  # everything sheddable goes at the next commit
    unreadable = len("copeau/v1/s/m1/state") + len(b"not json")
    assert box.stats().bytes == sum(len(e.topic.encode()) + len(e.encode()) for e in events) + unreadable
    box.commit("m1", next_seq=len(events), snapshot={}, messages=[])
    kept = [r.payload for r in box.pending(after_id=0, limit=100)]
    assert [Event.model_validate_json(p).kind for p in kept[:-1]] == [EventKind.PART] * 3
    assert kept[-1] == b"not json"  # unreadable: kept, never shed
    assert box.stats().shed_events == len(events) - 3


# -- acknowledged rows kept for a replay after a broker restart ------------------------------------------------


def test_acknowledged_rows_are_kept_replayed_and_pruned_only_once_acknowledged_again(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, retain_acknowledged=True)
    box.commit("m1", next_seq=3, snapshot={}, messages=[("t/a", b"1"), ("t/b", b"2"), ("t/c", b"3")])
    a, b, c = box.pending(after_id=0, limit=10)
    box.acknowledge([a.id, b.id], at=100.0)
    # Kept, not backlog: neither pending nor counted in the depth or the limit's bytes.
    assert [r.payload for r in box.pending(after_id=0, limit=10)] == [b"3"]
    assert box.depth() == 1
    stats = box.stats()
    assert (stats.events, stats.bytes, stats.replay_events, stats.replay_bytes) == (1, 4, 2, 8)
    assert box.prune(before=100.0) == 0  # acknowledged at 100: not before it
    # A new connection: everything kept is published again, and nothing is prunable until acknowledged again.
    upto = box.start_replay()
    assert upto == b.id
    assert [r.payload for r in box.retained(after_id=0, upto_id=upto, limit=10)] == [b"1", b"2"]
    assert box.prune(before=1e9) == 0
    box.acknowledge([a.id, b.id, c.id], at=200.0)  # the replay and the backlog, acknowledged on the new link
    assert box.stats().replay_events == 3
    box.close()

    reopened = Outbox(path, retain_acknowledged=True)  # a restart (a power cut): kept rows are still there
    assert reopened.depth() == 0
    assert reopened.stats().replay_events == 3
    assert reopened.prune(before=1e9) == 0  # not acknowledged by this process yet
    assert reopened.start_replay() == c.id
    reopened.acknowledge([a.id, b.id, c.id], at=300.0)
    assert reopened.prune(before=300.5) == 3
    assert reopened.stats().replay_events == 0
    assert reopened.retained(after_id=0, upto_id=c.id, limit=10) == []


def test_kept_rows_are_never_shed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=200, retain_acknowledged=True)
    box.commit("m1", next_seq=5, snapshot={},
               messages=[Message(f"copeau/v1/s/m1/state{i}", b"x" * 10, ShedClass.STATE) for i in range(5)])
    kept = [r.id for r in box.pending(after_id=0, limit=10)]
    box.acknowledge(kept, at=1.0)
    # Fill the outbox past its limit with new telemetry: only the new (unacknowledged) rows may be shed.
    box.commit("m1", next_seq=15, snapshot={},
               messages=[Message(f"copeau/v1/s/m1/state{i}", b"y" * 10, ShedClass.STATE) for i in range(10)])
    stats = box.stats()
    assert stats.replay_events == 5
    assert stats.bytes <= 200
    assert stats.shed_events == 10 - stats.events
    assert [r.id for r in box.retained(after_id=0, upto_id=max(kept), limit=10)] == kept


def test_without_retention_acknowledged_rows_are_deleted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.commit("m1", next_seq=1, snapshot={}, messages=[("t/a", b"1")])
    box.acknowledge([r.id for r in box.pending(after_id=0, limit=10)])
    assert box.start_replay() == 0
    assert box.stats().replay_events == 0


def test_an_outbox_from_before_the_replay_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
        " shed INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO outbox (topic, payload, shed, bytes) VALUES ('t/a', x'31', 0, 4); PRAGMA user_version = 1;"
    )
    db.close()
    box = Outbox(path, retain_acknowledged=True)
    assert [r.payload for r in box.pending(after_id=0, limit=10)] == [b"1"]  # waiting, not kept
    assert box.depth() == 1
    assert box.stats().replay_events == 0

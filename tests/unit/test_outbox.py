"""The outbox keeps messages and resume points atomically, in order, across a reopen (a crash)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collectors.outbox import Outbox


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


def test_a_failed_commit_writes_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.commit("m1", next_seq=1, snapshot={"counter": 1}, messages=[("t", b"ok")])
    with pytest.raises(sqlite3.ProgrammingError):
        # The second message is not bytes-like: the whole commit, resume point included, must roll back.
        box.commit("m1", next_seq=3, snapshot={"counter": 2}, messages=[("t", b"x"), ("t", object())])  # type: ignore[list-item]
    assert box.depth() == 1
    assert box.machine("m1").next_seq == 1

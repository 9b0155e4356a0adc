"""The live board's pure model (web/board.py): MQTT messages, job contexts, stored parts and progress in, tiles out.
Time is injected (`now`, monotonic seconds); no server, no broker."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copeau.contract import (
    AlarmData,
    CollectorHealth,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventContext,
    EventKind,
    GatewayHealth,
    JobContext,
    MachineState,
    PartData,
    StateData,
)
from orders.progress import NS, compute_progress
from web.board import Applied, JobInfo, LiveBoard, MachineInfo, OfflineReason, TileState

SITE = "ecole"
MILL, LATHE = "fraiseuse-1", "tour-1"
T0 = 1_800_000_000 * NS  # a plausible event time (2027)
JOB = EventContext(order="CMD-1", operation=10, apprentice="AP-7K3Q")
KEY = ("CMD-1", 10)


def board(stale_after_s: float = 60.0) -> LiveBoard:
    return LiveBoard([MachineInfo(MILL, "Fraiseuse 1", "mill"), MachineInfo(LATHE, "Tour 1", "lathe")],
                     site=SITE, collector="collector-1", stale_after_s=stale_after_s)


def event(kind: EventKind, data: object, *, seq: int = 0, ts: int = T0, machine: str = MILL,
          ctx: EventContext | None = None) -> Event:
    return Event(site=SITE, machine=machine, kind=kind, seq=seq, ts=ts, data=data, ctx=ctx)  # type: ignore[arg-type]


def state(s: MachineState, ts: int = T0, machine: str = MILL) -> Event:
    return event(EventKind.STATE, StateData(state=s), ts=ts, machine=machine)


def part(seq: int, *, ts: int | None = None, count: int = 1, machine: str = MILL,
         ctx: EventContext | None = JOB) -> Event:
    return event(EventKind.PART, PartData(count=count), seq=seq, ts=ts if ts is not None else T0 + seq * NS,
                 machine=machine, ctx=ctx)


def send(b: LiveBoard, e: Event, *, now: float = 0.0) -> set[str]:
    applied = b.message(e.topic, e.encode(), now=now)
    assert applied.problem is None
    return set(applied.changed)


def context(b: LiveBoard, ctx: EventContext, *, ts: int = T0, machine: str = MILL) -> set[str]:
    payload = JobContext(site=SITE, machine=machine, ts=ts, context=ctx).encode()
    applied = b.message(f"copeau/v1/{SITE}/{machine}/context", payload, now=0.0)
    assert applied.problem is None
    return set(applied.changed)


# -- state


def test_state_events_drive_the_tile_and_words_are_states_not_colours() -> None:
    b = board()
    assert b.tile(MILL).state is TileState.UNKNOWN
    assert send(b, state(MachineState.RUNNING)) == {MILL}
    tile = b.tile(MILL)
    assert (tile.state, tile.since_ns, tile.offline_reason) == (TileState.RUNNING, T0, None)
    send(b, state(MachineState.IDLE, T0 + NS))
    assert b.tile(MILL).state is TileState.IDLE
    send(b, event(EventKind.ALARM, AlarmData(active=True, code="E42", text="Porte ouverte"), ts=T0 + 2 * NS))
    send(b, state(MachineState.ALARM, T0 + 2 * NS))
    tile = b.tile(MILL)
    assert tile.state is TileState.ALARM and tile.alarm is not None
    assert (tile.alarm.code, tile.alarm.text) == ("E42", "Porte ouverte")
    send(b, state(MachineState.OFFLINE, T0 + 3 * NS))
    tile = b.tile(MILL)
    assert (tile.state, tile.offline_reason, tile.alarm) == (TileState.OFFLINE, OfflineReason.MACHINE, None)
    assert b.tile(LATHE).state is TileState.UNKNOWN  # the other machine is untouched


def test_a_late_state_event_does_not_override_a_newer_one() -> None:
    b = board()
    send(b, state(MachineState.IDLE, T0 + 5 * NS))
    assert send(b, state(MachineState.RUNNING, T0)) == set()  # a collector's backlog, delivered after
    assert b.tile(MILL).state is TileState.IDLE


def test_collector_offline_turns_every_machine_offline_until_it_is_back() -> None:
    b = board()
    send(b, state(MachineState.RUNNING))
    send(b, state(MachineState.IDLE, machine=LATHE))
    topic = f"copeau/v1/{SITE}/collectors/collector-1/status"
    assert set(b.message(topic, b'{"status":"offline"}', now=1.0).changed) == {MILL, LATHE}
    assert {(t.state, t.offline_reason) for t in b.snapshot().tiles} == {(TileState.OFFLINE, OfflineReason.COLLECTOR)}
    assert b.message(topic, b'{"status":"offline"}', now=2.0).changed == frozenset()  # retained again: no change
    b.message(topic, b'{"status":"online"}', now=3.0)
    assert (b.tile(MILL).state, b.tile(LATHE).state) == (TileState.RUNNING, TileState.IDLE)
    # Another site's collector, or another collector of this site, is not ours.
    b.message(f"copeau/v1/{SITE}/collectors/collector-9/status", b'{"status":"offline"}', now=4.0)
    b.message("copeau/v1/autre/collectors/collector-1/status", b'{"status":"offline"}', now=4.0)
    assert b.tile(MILL).state is TileState.RUNNING


# -- offline by silence, with an injected clock


def test_a_running_machine_not_heard_of_for_stale_after_s_is_offline() -> None:
    b = board(stale_after_s=60.0)
    send(b, state(MachineState.RUNNING), now=100.0)
    send(b, state(MachineState.IDLE, machine=LATHE), now=100.0)
    assert b.expire(now=159.9) == set()
    assert b.expire(now=160.0) == {MILL}  # the idle lathe has nothing to say: its silence proves nothing
    tile = b.tile(MILL)
    assert (tile.state, tile.offline_reason) == (TileState.OFFLINE, OfflineReason.STALE)
    assert b.expire(now=500.0) == set()  # said once
    assert b.tile(LATHE).state is TileState.IDLE
    # News from the machine (any event) brings it back.
    send(b, event(EventKind.CYCLE, CycleData(phase=CyclePhase.START), ts=T0 + NS), now=501.0)
    assert b.tile(MILL).state is TileState.RUNNING
    assert b.expire(now=560.9) == set()
    assert b.expire(now=561.0) == {MILL}


def test_a_state_seeded_from_influxdb_starts_the_silence_clock() -> None:
    b = board(stale_after_s=60.0)
    assert b.seed_state(MILL, MachineState.RUNNING, T0, now=10.0) == {MILL}
    assert b.seed_state(MILL, MachineState.IDLE, T0 - NS, now=10.0) == set()  # older than what is shown
    assert b.expire(now=69.0) == set()
    assert b.expire(now=70.0) == {MILL}


def health(ts: int, *, readable: dict[str, bool], interval_s: float = 10.0, collector: str = "collector-1",
           site: str = SITE) -> tuple[str, bytes]:
    """A collector's health report (copeau/contract.py), as published: (topic, payload)."""
    metrics = {"outbox_events": 0, "outbox_bytes": 0, "outbox_file_bytes": 0, "outbox_limit_bytes": 0,
               "disk_free_bytes": 0, "spool_level": 0, "shed_events": 0, "unsaved_events": 0, "published": 0,
               "acknowledged": 0, "mqtt_connected": True, "mqtt_reconnects": 0, "uptime_s": 1.0}
    machines = {m: {"readable": ok, "next_seq": 0, "reconnects": 0, "polls": 1, "missed_intervals": 0}
                for m, ok in readable.items()}
    report = CollectorHealth.model_validate({"site": site, "service": collector, "ts": ts, "interval_s": interval_s,
                                             "metrics": metrics, "machines": machines})
    return report.topic, report.encode()


def test_health_reports_are_news_for_idle_machines_too() -> None:
    """With the collector's health reports, a machine they stop covering is offline after three missed reports,
    idle or not; without them, an idle machine is never taken for silent."""
    b = board(stale_after_s=900.0)
    send(b, state(MachineState.IDLE), now=0.0)
    send(b, state(MachineState.IDLE, machine=LATHE), now=0.0)
    topic, payload = health(T0, readable={MILL: True, LATHE: False})
    assert b.message(topic, payload, now=100.0) == Applied()  # news, but nothing to show
    assert b.expire(now=129.9) == set()
    assert b.expire(now=130.0) == {MILL}  # three 10 s reports missed: the collector no longer reads it
    assert (b.tile(MILL).state, b.tile(MILL).offline_reason) == (TileState.OFFLINE, OfflineReason.STALE)
    assert b.tile(LATHE).state is TileState.IDLE  # not read, but not covered either: its `state` event says
    # The same report again (retained, after a reconnection) is no news; a newer one is.
    assert b.message(topic, payload, now=131.0).changed == frozenset()
    assert b.tile(MILL).state is TileState.OFFLINE
    topic, payload = health(T0 + 10 * NS, readable={MILL: True})
    assert b.message(topic, payload, now=132.0).changed == {MILL}
    assert b.tile(MILL).state is TileState.IDLE
    # Another collector's report, or the gateway's, says nothing about our machines.
    for other in (health(T0 + 20 * NS, readable={MILL: True}, collector="collector-9"),):
        assert b.message(*other, now=200.0).changed == frozenset()
    assert b.expire(now=200.0) == {MILL}
    gateway = f"copeau/v1/{SITE}/health/gateway/gw-1"
    assert b.message(gateway, b'{"anything": 1}', now=201.0).changed == frozenset()  # and counted as malformed
    bad = b.message(f"copeau/v1/{SITE}/health/collector/collector-1", b'{"v":1}', now=202.0)
    assert bad.problem is not None and b.malformed == 2


def test_stale_after_s_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stale_after_s"):
        board(stale_after_s=0)


# -- malformed and foreign messages


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    (f"copeau/v1/{SITE}/{MILL}/part", b"not json", "payload"),
    (f"copeau/v1/{SITE}/{MILL}/part", b'{"v":1}', "site"),
    (f"copeau/v1/{SITE}/{MILL}/state", part(1).encode(), "topic says"),  # a part payload on the state topic
    (f"copeau/v1/{SITE}/{MILL}/bogus", state(MachineState.IDLE).encode(), "topic says"),
    (f"copeau/v1/{SITE}/{MILL}/context", b'{"v":1,"site":"ecole"}', "job context"),
    (f"copeau/v1/{SITE}/{MILL}/context",
     JobContext(site=SITE, machine=LATHE, ts=T0).encode(), "context is for"),
    (f"copeau/v1/{SITE}/collectors/collector-1/status", b"offline", "status"),
    (f"copeau/v1/{SITE}/collectors/collector-1/status", b'{"status":"asleep"}', "unknown status"),
])
def test_a_malformed_message_is_counted_and_changes_nothing(topic: str, payload: bytes, reason: str) -> None:
    b = board()
    send(b, state(MachineState.RUNNING))
    before = b.snapshot()
    applied = b.message(topic, payload, now=1.0)
    assert applied.changed == frozenset()
    assert applied.problem is not None and reason in applied.problem
    assert b.malformed == 1
    after = b.snapshot()
    assert after.tiles == before.tiles and after.malformed == 1


def test_foreign_messages_are_ignored_not_malformed() -> None:
    b = board()
    other_site = state(MachineState.RUNNING).model_copy(update={"site": "autre"})
    unknown_machine = state(MachineState.RUNNING).model_copy(update={"machine": "perceuse-9"})
    for topic, payload in [
        (other_site.topic, other_site.encode()),
        (unknown_machine.topic, unknown_machine.encode()),
        (f"copeau/v1/{SITE}/{MILL}/badge", b'{"v":1,"code":"BADGE-ZOE"}'),
        ("autre/racine/x/y/z", b"{}"),
    ]:
        assert b.message(topic, payload, now=0.0).changed == frozenset()
    assert b.malformed == 0
    assert b.tile(MILL).state is TileState.UNKNOWN


# -- the job, its parts and its progress


def test_parts_are_the_union_of_stored_and_live_points_never_counted_twice() -> None:
    b = board()
    assert context(b, JOB) == {MILL}
    assert b.unloaded_operations() == {KEY} and b.unknown_jobs() == {KEY}
    tile = b.tile(MILL)
    assert tile.job is not None and (tile.job.order, tile.job.operation, tile.job.apprentice) == (
        "CMD-1", 10, "AP-7K3Q")
    assert tile.made is None  # InfluxDB not asked yet: unknown, not 0

    send(b, part(5))  # heard live before InfluxDB answered
    assert b.tile(MILL).made is None
    # InfluxDB holds parts 1..5 (5 already heard live) of this machine, and 2 parts made on the lathe.
    stored = [(MILL, T0 + s * NS, 1) for s in range(1, 6)] + [(LATHE, T0 + NS, 2)]
    assert b.stored_parts(KEY, stored) == {MILL}
    tile = b.tile(MILL)
    assert (tile.made, tile.good, tile.scrap) == (7, 7, 0)
    send(b, part(6))
    send(b, part(6))  # redelivered (QoS 1, at least once): the same point
    assert b.tile(MILL).made == 8
    assert b.stored_parts(KEY, [*stored, (MILL, T0 + 6 * NS, 1)]) == set()  # found stored later: nothing new
    assert b.tile(MILL).made == 8
    # Parts of another job, or with no job, are not this job's (the tile only learns that the machine spoke).
    send(b, part(7, ctx=EventContext(order="CMD-2", operation=10)))
    send(b, part(8, ctx=None))
    assert b.tile(MILL).made == 8
    assert b.tile(MILL).last_event_ns == T0 + 8 * NS


def test_job_details_progress_and_scrap() -> None:
    b = board()
    context(b, JOB)
    b.stored_parts(KEY, [(MILL, T0 + s * NS, 1) for s in range(12)])
    due = T0 + 86_400 * NS
    assert b.job(JobInfo(order="CMD-1", operation=10, quantity=25, standard_cycle_s=42.5, due_ns=due, scrap=2)) == {
        MILL}
    assert b.unknown_jobs() == set()
    tile = b.tile(MILL)
    assert tile.job is not None and (tile.job.quantity, tile.job.standard_cycle_s, tile.job.due_ns) == (25, 42.5, due)
    assert (tile.made, tile.scrap, tile.good) == (12, 2, 10)
    assert tile.eta is None

    p = compute_progress(order="CMD-1", operation=10, quantity=25, made=12, scrap=3, due_ns=due, now_ns=T0,
                         standard_cycle_s=42.5)
    other = compute_progress(order="CMD-9", operation=10, quantity=5, made=0, scrap=0, due_ns=due, now_ns=T0,
                             standard_cycle_s=10)
    assert b.progress([p, other]) == {MILL}
    tile = b.tile(MILL)
    assert (tile.scrap, tile.good) == (3, 9)  # the tracker's scrap is the newer
    assert tile.eta is not None
    assert (tile.eta.eta_ns, tile.eta.due_ns, tile.eta.late, tile.eta.basis, tile.eta.remaining) == (
        p.eta_ns, due, False, "standard", 16)
    # The next round, a few seconds later, moves the ETA by less than a minute: the TV is left alone.
    again = compute_progress(order="CMD-1", operation=10, quantity=25, made=12, scrap=3, due_ns=due,
                             now_ns=T0 + 5 * NS, standard_cycle_s=42.5)
    if again.eta_ns // (60 * NS) == p.eta_ns // (60 * NS):
        assert b.progress([again, other]) == set()


def test_a_new_context_replaces_the_job_and_an_older_one_is_ignored() -> None:
    b = board()
    context(b, JOB, ts=T0)
    b.stored_parts(KEY, [(MILL, T0, 3)])
    assert context(b, EventContext(), ts=T0 - NS) == set()  # older than what is shown
    assert b.tile(MILL).made == 3
    assert context(b, EventContext(), ts=T0 + NS) == {MILL}  # the job ended
    tile = b.tile(MILL)
    assert (tile.job, tile.made) == (None, None)
    assert b.shown_operations() == set()
    # The same job again later: its parts are read again from InfluxDB.
    context(b, JOB, ts=T0 + 2 * NS)
    assert b.unloaded_operations() == {KEY}


def test_two_machines_on_the_same_operation_share_its_count() -> None:
    b = board()
    context(b, JOB)
    context(b, EventContext(order="CMD-1", operation=10, apprentice="AP-2B"), machine=LATHE)
    b.stored_parts(KEY, [])
    assert send(b, part(1, machine=LATHE)) == {MILL, LATHE}
    assert (b.tile(MILL).made, b.tile(LATHE).made) == (1, 1)


def test_last_completed_cycle_only() -> None:
    b = board()
    end = CycleData(phase=CyclePhase.END, started_ts=T0 - 40 * NS, duration_s=40.0, outcome=CycleOutcome.COMPLETED)
    send(b, event(EventKind.CYCLE, end))
    assert b.tile(MILL).last_cycle_s == 40.0
    aborted = end.model_copy(update={"duration_s": 3.0, "outcome": CycleOutcome.ABORTED})
    send(b, event(EventKind.CYCLE, aborted, ts=T0 + NS))
    older = end.model_copy(update={"duration_s": 99.0})
    assert send(b, event(EventKind.CYCLE, older, ts=T0 - NS)) == set()
    assert b.seed_cycle(MILL, 77.0, T0 - NS) == set()  # InfluxDB's is older than the one heard
    assert b.tile(MILL).last_cycle_s == 40.0


# -- revisions: what a stream sends


def test_changes_since_sends_only_the_tiles_that_changed() -> None:
    b = board()
    start = b.snapshot()
    assert [t.machine for t in start.tiles] == [MILL, LATHE] and start.feed_connected is False
    assert b.changes_since(start.rev) is None
    send(b, state(MachineState.RUNNING))
    update = b.changes_since(start.rev)
    assert update is not None and [t.machine for t in update.tiles] == [MILL]
    assert update.tiles[0].rev == update.rev
    assert b.feed_connected(True) is True and b.feed_connected(True) is False
    feed = b.changes_since(update.rev)
    assert feed is not None and feed.tiles == [] and feed.feed_connected is True
    b.message(f"copeau/v1/{SITE}/{MILL}/part", b"garbage", now=0.0)
    assert b.changes_since(feed.rev) is None  # a malformed message changes no tile


@given(st.lists(st.tuples(st.sampled_from(["live", "stored"]), st.sampled_from([MILL, LATHE]),
                          st.integers(0, 30), st.integers(1, 3)), max_size=60))
def test_the_count_never_goes_down_and_counts_each_point_once(steps: list[tuple[str, str, int, int]]) -> None:
    """Parts heard live and found stored, in any order, redelivered any number of times."""
    b = board()
    context(b, JOB)
    context(b, JOB, machine=LATHE)
    b.stored_parts(KEY, [])
    truth: dict[tuple[str, int], int] = {}
    stored: list[tuple[str, int, int]] = []
    last = 0
    for source, machine, i, drawn in steps:
        ts = T0 + i * NS
        count = truth.setdefault((machine, ts), drawn)  # a point has one count, however often it is seen
        if source == "live":
            send(b, part(i, ts=ts, count=count, machine=machine))
        else:
            stored.append((machine, ts, count))
            b.stored_parts(KEY, stored)
        made = b.tile(MILL).made
        assert made is not None and made >= last
        last = made
    assert last == sum(truth.values())


def test_status_payload_must_be_an_object() -> None:
    b = board()
    applied = b.message(f"copeau/v1/{SITE}/collectors/collector-1/status", json.dumps(["offline"]).encode(), now=0)
    assert applied.problem is not None and b.malformed == 1


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                     lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=8)
_VALID = [state(MachineState.RUNNING), part(1), event(EventKind.ALARM, AlarmData(active=True, code="E1")),
          event(EventKind.CYCLE, CycleData(phase=CyclePhase.END, started_ts=T0 - NS, duration_s=1.0,
                                           outcome=CycleOutcome.COMPLETED))]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid event, context or status with one field replaced by anything JSON can hold."""
    base = draw(st.sampled_from([json.loads(e.encode()) for e in _VALID] + [
        json.loads(JobContext(site=SITE, machine=MILL, ts=T0, context=JOB).encode()), {"status": "online"},
        json.loads(health(T0, readable={MILL: True})[1])]))
    path = draw(st.sampled_from([(k,) for k in base] + [("data", k) for k in base.get("data", {})]))
    target = base
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(_JSON)
    return json.dumps(base).encode()


@given(topic=st.sampled_from([f"copeau/v1/{SITE}/{m}/{k}" for m in (MILL, LATHE, "inconnue")
                              for k in ("state", "cycle", "part", "alarm", "context", "badge", "autre")]
                             + [f"copeau/v1/{SITE}/collectors/collector-1/status", f"copeau/v1/{SITE}/health/x/y",
                                f"copeau/v1/{SITE}/health/collector/collector-1"])
       | st.text(max_size=40),
       payload=st.binary(max_size=120) | _JSON.map(lambda v: json.dumps(v).encode()) | _mutated())
def test_no_message_can_break_the_board(topic: str, payload: bytes) -> None:
    """Whatever comes on MQTT: the board applies it, ignores it, or counts it as malformed, and never raises."""
    b = board()
    applied = b.message(topic, payload, now=1.0)
    assert b.malformed in (0, 1)
    assert (applied.problem is not None) == (b.malformed == 1)
    assert not (applied.problem and applied.changed)
    b.snapshot()  # and the board still renders


# -- Copeau's own services


def gateway_health(ts: int, *, dead_letters: int = 0, influx_ok: bool = True, interval_s: float = 10.0,
                   service: str = "gw-1") -> tuple[str, bytes]:
    metrics = {"received": 10, "stored": 10, "dead_letters": dead_letters, "write_retries": 0, "batches": 1,
               "queue_depth": 3, "health_stored": 0, "mqtt_connected": True, "mqtt_reconnects": 1,
               "influx_ok": influx_ok, "uptime_s": 1.0}
    report = GatewayHealth.model_validate({"site": SITE, "service": service, "ts": ts, "interval_s": interval_s,
                                           "metrics": metrics})
    return report.topic, report.encode()


def test_services_strip_shows_each_service_and_its_trouble() -> None:
    """Every collector's and gateway's latest report is on the board; one that stops reporting, or says it is in
    trouble (dead letters are counted, InfluxDB failing is trouble), is flagged."""
    b = board()
    assert b.snapshot().services == []
    rev = b.rev
    b.message(*health(T0, readable={MILL: True}), now=0.0)
    b.message(*gateway_health(T0, dead_letters=2), now=0.0)
    assert b.rev > rev and b.changes_since(rev) is not None
    collector, gateway = b.snapshot().services
    assert (collector.kind, collector.service, collector.outbox_events, collector.trouble) == (
        "collector", "collector-1", 0, False)
    assert (gateway.kind, gateway.dead_letters, gateway.queue_depth, gateway.influx_ok, gateway.trouble) == (
        "gateway", 2, 3, True, False)
    # The same retained report again (a reconnection) is no news.
    rev = b.rev
    b.message(*gateway_health(T0, dead_letters=2), now=5.0)
    assert b.rev == rev
    b.message(*gateway_health(T0 + NS, influx_ok=False), now=10.0)
    assert b.snapshot().services[1].trouble
    # The collector misses three reports: silent, and in trouble.
    assert b.expire(now=29.0) == set() and not b.snapshot().services[0].silent
    b.expire(now=30.0)
    assert b.snapshot().services[0].silent and b.snapshot().services[0].trouble
    assert b.snapshot().services[1].silent is False  # the gateway spoke at 10.0

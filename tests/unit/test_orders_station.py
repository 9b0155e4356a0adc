"""The station flow (badge → job → declaration) and its refusals, with the database on a temporary SQLite file,
a fake part counter and a recorder for published job contexts. Every refusal must leave everything as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from copeau.config import WebSettings, Workshop
from copeau.contract import JobContext
from orders import catalog
from orders.database import make_engine, session_factory
from orders.errors import (
    DeclarationTooLarge,
    MachineBusy,
    NoOpenSession,
    NotIdentified,
    OrderClosed,
    TooManyAttempts,
    UnknownBadge,
    UnknownJob,
    UnknownMachine,
    UnknownScrapReason,
    WrongMachine,
)
from orders.migrate import upgrade
from orders.models import QualityDeclaration, ScrapCount, WorkSession
from orders.station import TRANSITIONS, IllegalScan, Scan, Stations, Step, Via, step_after
from tests.conftest import make_workshop, modbus_machine

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
ORDERS = """commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)
CMD-1;Durand;BRIDE-45;20;2026-12-18;10;fraiseuse;42,5;900
CMD-1;Durand;BRIDE-45;20;2026-12-18;20;tour;30;600
"""


@dataclass
class FakeCounts:
    """Parts 'counted by the machine', set by the test."""

    parts: int = 0
    calls: list[str] = field(default_factory=list)

    def session_parts(self, *, machine: str, order: str, operation: int, since_ns: int) -> int:
        self.calls.append(f"{machine} {order}/{operation} since {since_ns}")
        return self.parts

    def last_cycle_s(self, *, machine: str, since_ns: int) -> float | None:
        return 41.0

    def made_by_operation(self, *, order: str) -> dict[int, int]:
        return {10: self.parts}

    def recent_parts(self, *, order: str, operation: int, since_ns: int) -> list[tuple[int, int]]:
        return []


@dataclass
class World:
    stations: Stations
    counts: FakeCounts
    published: list[JobContext]
    clock: Iterator[float]
    workshop: Workshop

    def snapshot(self) -> tuple[int, ...]:
        """(sessions, declarations, scrap counts, open sessions): what a refusal must leave unchanged."""
        with self.stations.sessions() as db:
            rows = [int(db.scalar(select(func.count()).select_from(m)) or 0)
                    for m in (WorkSession, QualityDeclaration, ScrapCount)]
            open_ = select(func.count()).select_from(WorkSession).where(WorkSession.ended_at.is_(None))
            return (*rows, int(db.scalar(open_) or 0))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'station.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions.begin() as db:
        catalog.import_orders(db, data=ORDERS, now=T0)
        catalog.create_apprentice(db, first_name="Zoé", last_name="Lefèvre", badge="BADGE-ZOE", now=T0)
        catalog.create_apprentice(db, first_name="Noah", last_name="Garnier", badge="BADGE-NOAH", now=T0)
    workshop = make_workshop(tmp_path, mqtt_port=1, machines=[
        modbus_machine("fraiseuse-1", 15021), {**modbus_machine("tour-1", 15022), "kind": "lathe"}])
    counts, published = FakeCounts(), []
    clock = itertools.count(1000.0, 1.0)  # one second per call: the throttle's window is driven by the test
    stations = Stations(machines=workshop.machines, site=workshop.site.id, sessions=sessions, counts=counts,
                        publish=published.append, settings=WebSettings(), clock=lambda: next(clock))
    yield World(stations, counts, published, clock, workshop)
    engine.dispose()


def badge(w: World, code: str, *, machine: str = "fraiseuse-1", via: Via = Via.KIOSK, at: datetime = T0) -> Step:
    return w.stations.scan(machine=machine, code=code, via=via, now=at).step


def test_badge_then_job_card_then_declaration(world: World) -> None:
    view = world.stations.scan(machine="fraiseuse-1", code="BADGE-ZOE", via=Via.KIOSK, now=T0)
    assert (view.step, view.first_name) == (Step.IDENTIFIED, "Zoé")
    assert [job.code for job in view.planned] == ["CMD-1/10"]  # the lathe operation is not offered on a mill
    view = world.stations.scan(machine="fraiseuse-1", code="CMD-1/10", via=Via.KIOSK, now=T0)
    assert (view.step, view.job.code if view.job else None) == (Step.RUNNING, "CMD-1/10")
    (started,) = world.published
    code = started.context.apprentice
    assert (started.machine, started.context.order, started.context.operation) == ("fraiseuse-1", "CMD-1", 10)
    assert code and code.startswith("AP-")
    assert "Zoé" not in started.encode().decode() and "Lefèvre" not in started.encode().decode()

    world.counts.parts = 7
    live = world.stations.view(machine="fraiseuse-1", now=T0 + timedelta(minutes=5))
    assert (live.session_parts, live.job_good, live.last_cycle_s) == (7, 7, 41.0)
    done = world.stations.declare(machine="fraiseuse-1", good=5, scrap={"COTE": 1, "etat": 1},
                                  now=T0 + timedelta(minutes=6))
    assert (done.step, done.ended_session) == (Step.IDLE, 1)
    assert world.published[-1].context.order is None  # the machine has no job any more
    assert world.snapshot() == (1, 1, 2, 0)
    with world.stations.sessions() as db:
        assert catalog.declared_scrap(db, order_id=1) == {10: 2}


def test_unknown_badge_changes_nothing(world: World) -> None:
    before = world.snapshot()
    with pytest.raises(UnknownBadge) as info:
        badge(world, "BADGE-INCONNU")
    assert str(info.value) == "Badge inconnu (BADGE-INCONNU). Demandez à votre maître professionnel de l'enregistrer."
    assert world.snapshot() == before
    assert world.stations.view(machine="fraiseuse-1", now=T0).step is Step.IDLE
    assert world.published == []


def test_job_for_another_kind_of_machine_is_refused(world: World) -> None:
    badge(world, "BADGE-ZOE")
    before = world.snapshot()
    with pytest.raises(WrongMachine) as info:
        badge(world, "CMD-1/20")  # a lathe operation scanned on a mill
    assert str(info.value) == (
        "Le travail CMD-1/20 se fait sur un tour, et fraiseuse-1 est une fraiseuse. Rien n'a démarré.")
    assert info.value.message("en") == (
        "Job CMD-1/20 is done on a lathe, and fraiseuse-1 is a mill. Nothing was started.")
    assert world.snapshot() == before
    assert world.stations.view(machine="fraiseuse-1", now=T0).step is Step.IDENTIFIED  # still waiting for a job


def test_second_badge_in_on_a_busy_machine_is_refused(world: World) -> None:
    badge(world, "BADGE-ZOE")
    badge(world, "CMD-1/10")
    before = world.snapshot()
    with pytest.raises(MachineBusy) as info:
        badge(world, "BADGE-NOAH")
    assert str(info.value) == "fraiseuse-1 est déjà occupée (travail CMD-1/10). Il faut d'abord terminer ce travail."
    with pytest.raises(MachineBusy):
        badge(world, "CMD-1/10")
    assert world.snapshot() == before
    assert len(world.published) == 1


def test_declaration_larger_than_the_parts_made_is_refused(world: World) -> None:
    badge(world, "BADGE-ZOE")
    badge(world, "CMD-1/10")
    world.counts.parts = 4
    before = world.snapshot()
    with pytest.raises(DeclarationTooLarge) as info:
        world.stations.declare(machine="fraiseuse-1", good=4, scrap={"COTE": 1}, now=T0)
    assert str(info.value) == (
        "Vous déclarez 5 pièce(s), mais la machine n'en a compté que 4 pendant ce travail. Corrigez les nombres.")
    with pytest.raises(UnknownScrapReason):
        world.stations.declare(machine="fraiseuse-1", good=1, scrap={"PAS-UN-MOTIF": 1}, now=T0)
    assert world.snapshot() == before  # the session is still open, nothing declared
    assert world.stations.view(machine="fraiseuse-1", now=T0).step is Step.RUNNING


def test_one_reason_written_two_ways_adds_up(world: World) -> None:
    """"cote" and "COTE" are the same reason: 1 + 2 scrap, not the last one only (found by the fuzz)."""
    badge(world, "BADGE-ZOE")
    badge(world, "CMD-1/10")
    world.counts.parts = 5
    world.stations.declare(machine="fraiseuse-1", good=2, scrap={"cote": 1, "COTE ": 2}, now=T0)
    with world.stations.sessions() as db:
        declaration = db.scalars(select(QualityDeclaration)).one()
        assert declaration.scrap == 3
        assert [(c.reason.code, c.count) for c in declaration.scrap_counts] == [("COTE", 3)]


def test_job_before_badge_and_declaration_without_session(world: World) -> None:
    with pytest.raises(NotIdentified):
        badge(world, "CMD-1/10")
    with pytest.raises(NoOpenSession):
        world.stations.declare(machine="fraiseuse-1", good=0, scrap={}, now=T0)
    with pytest.raises(UnknownMachine):
        badge(world, "BADGE-ZOE", machine="perceuse-9")
    badge(world, "BADGE-ZOE")
    with pytest.raises(UnknownJob):
        badge(world, "CMD-404/10")
    assert world.snapshot() == (0, 0, 0, 0)


def test_closed_order_cannot_be_started(world: World) -> None:
    with world.stations.sessions.begin() as db:
        catalog.close_order(db, reference="CMD-1", now=T0)
    badge(world, "BADGE-ZOE")
    with pytest.raises(OrderClosed):
        badge(world, "CMD-1/10")


def test_identification_expires(world: World) -> None:
    badge(world, "BADGE-ZOE")
    late = T0 + timedelta(seconds=WebSettings().identify_timeout_s + 1)
    assert world.stations.view(machine="fraiseuse-1", now=late).step is Step.IDLE
    with pytest.raises(NotIdentified):
        badge(world, "CMD-1/10", at=late)


def test_unknown_badges_are_throttled_per_kiosk(world: World) -> None:
    for _ in range(5):
        with pytest.raises(UnknownBadge):
            badge(world, "essai")
    with pytest.raises(TooManyAttempts) as info:
        badge(world, "BADGE-ZOE")  # even a good badge waits: codes must not be tried one after the other
    assert str(info.value).startswith("Trop d'essais avec des badges inconnus. Attendez ")
    assert badge(world, "BADGE-ZOE", machine="tour-1") is Step.IDENTIFIED  # another kiosk is not affected
    for _ in range(60):  # the fake clock moves one second per call; the window is 60 s
        next(world.clock)
    assert badge(world, "BADGE-ZOE") is Step.IDENTIFIED


def test_reader_own_badge_ends_the_session_but_not_a_double_read(world: World) -> None:
    badge(world, "BADGE-ZOE", via=Via.READER)
    badge(world, "CMD-1/10", via=Via.READER)
    assert badge(world, "BADGE-ZOE", via=Via.READER, at=T0 + timedelta(seconds=2)) is Step.RUNNING
    view = world.stations.scan(machine="fraiseuse-1", code="BADGE-ZOE", via=Via.READER,
                               now=T0 + timedelta(minutes=30))
    assert (view.step, view.ended_session) == (Step.IDLE, 1)
    assert world.snapshot() == (1, 0, 0, 0)  # closed, to be declared later by a maître
    world.counts.parts = 3
    world.stations.declare_for_session(session_id=1, good=3, scrap={}, now=T0 + timedelta(minutes=40))
    assert world.snapshot() == (1, 1, 0, 0)


def test_kiosk_own_badge_asks_for_the_declaration(world: World) -> None:
    badge(world, "BADGE-ZOE")
    badge(world, "CMD-1/10")
    view = world.stations.scan(machine="fraiseuse-1", code="BADGE-ZOE", via=Via.KIOSK, now=T0)
    assert (view.step, view.ask_declaration) == (Step.RUNNING, True)


def test_republish_says_what_every_machine_does(world: World) -> None:
    badge(world, "BADGE-ZOE")
    badge(world, "CMD-1/10")
    world.published.clear()
    world.stations.republish_contexts(now=T0)
    by_machine = {c.machine: c.context for c in world.published}
    assert by_machine["fraiseuse-1"].order == "CMD-1"
    assert by_machine["tour-1"].order is None


def test_transition_table() -> None:
    assert step_after(Step.IDLE, Scan.BADGE) is Step.IDENTIFIED
    assert step_after(Step.IDENTIFIED, Scan.JOB) is Step.RUNNING
    assert step_after(Step.RUNNING, Scan.DECLARE) is Step.IDLE
    illegal = [(step, scan) for step in Step for scan in Scan if scan not in TRANSITIONS[step]]
    assert (Step.IDLE, Scan.JOB) in illegal
    assert (Step.RUNNING, Scan.BADGE) in illegal
    for step, scan in illegal:
        with pytest.raises(IllegalScan):
            step_after(step, scan)

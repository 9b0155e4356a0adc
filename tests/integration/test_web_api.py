"""The web service through FastAPI's TestClient, against a temporary SQLite file, the real mosquitto (`broker`) and
the real influxd (`influx`): kiosk flow, retained job contexts seen by a real MQTT subscriber, the badge flow over
MQTT, CSV import, access rules, and the `order_progress` points.

Every refusal must come with a clear French message (English with ?lang=en) and leave the database as it was.
Parts "made by the machine" are written to InfluxDB exactly as the gateway writes them (same encoder, same
context tags), so the counts the service reads are the ground truth the test wrote.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from sqlalchemy import func, select

from copeau.config import InfluxSettings, Workshop
from copeau.contract import (
    BadgeScan,
    ControlKind,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventContext,
    EventKind,
    JobContext,
    PartData,
    control_topic,
)
from copeau.services import ManagedProcess
from gateway.influx import InfluxWriter
from gateway.lineprotocol import event_line
from gateway.service import context_tags
from orders import catalog
from orders.models import Customer, Operation, Order, QualityDeclaration, ScrapCount, WorkSession
from orders.progress import NS, due_instant
from tests.conftest import Influx, make_workshop, modbus_machine, wait_until
from web.app import create_app

with warnings.catch_warnings():
    # Starlette 1.x would rather its TestClient used the `httpx2` package and warns when it falls back to httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

SITE = "test-site"
MILL, LATHE = "fraiseuse-1", "tour-1"
KEYS = {MILL: "cle-de-la-fraiseuse-1-pour-les-tests", LATHE: "cle-du-tour-1-pour-les-tests-xxxx"}
PASSWORD = "mot-de-passe-des-tests"
NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
ORDERS = """commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)
CMD-2026-017;Mécanique Durand;BRIDE-45;20;2026-12-18;10;fraiseuse;42,5;900
CMD-2026-017;Mécanique Durand;BRIDE-45;20;2026-12-18;20;tour;30;600
"""
WAIT_S = 15.0


def influx_port(influx: Influx) -> int:
    return int(influx.url.rsplit(":", 1)[1])


def web_workshop(tmp_path: Path, *, broker: ManagedProcess, influx: Influx, database: str) -> Workshop:
    return make_workshop(tmp_path, mqtt_port=broker.port, influx_port=influx_port(influx), database=database,
                         machines=[modbus_machine(MILL, 15021), {**modbus_machine(LATHE, 15022), "kind": "lathe"}])


def seed(app: Any) -> dict[str, str]:
    """Orders, two apprentices and a maître. Returns badge → pseudonymous code."""
    with app.state.copeau.transaction() as db:
        catalog.import_orders(db, data=ORDERS, now=NOW)
        zoe = catalog.create_apprentice(db, first_name="Zoé", last_name="Lefèvre", badge="BADGE-ZOE", now=NOW)
        noah = catalog.create_apprentice(db, first_name="Noah", last_name="Garnier", badge="BADGE-NOAH", now=NOW)
        catalog.create_maitre(db, login="mdupont", display_name="M. Dupont", password=PASSWORD, now=NOW)
        return {"BADGE-ZOE": zoe.code, "BADGE-NOAH": noah.code}


@dataclass
class Harness:
    app: Any
    client: Any  # the kiosk side: no cookies, the key in the X-Kiosk-Key header
    workshop: Workshop
    database: str
    influx: Influx
    codes: dict[str, str]

    def kiosk(self, method: str, machine: str, action: str, json: Any = None, *, lang: str | None = None) -> Any:
        url = f"/api/kiosque/{machine}/{action}" + (f"?lang={lang}" if lang else "")
        return self.client.request(method, url, json=json, headers={"X-Kiosk-Key": KEYS[machine]})

    def maitre(self) -> tuple[Any, str]:
        """A separate client logged in as a maître, and its CSRF token."""
        client = TestClient(self.app)
        answer = client.post("/api/connexion", json={"login": "mdupont", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return client, answer.json()["csrf"]

    def snapshot(self) -> dict[str, int]:
        """Row counts, and open sessions: what a refusal must leave unchanged."""
        with self.app.state.copeau.sessions() as db:
            counts = {m.__tablename__: int(db.scalar(select(func.count()).select_from(m)) or 0)
                      for m in (Order, Operation, Customer, WorkSession, QualityDeclaration, ScrapCount)}
            counts["open"] = int(db.scalar(select(func.count()).select_from(WorkSession)
                                           .where(WorkSession.ended_at.is_(None))) or 0)
            return counts

    def write_parts(self, *, machine: str, order: str, operation: int, apprentice: str, counts: list[int],
                    start_ns: int, every_s: float = 60.0, cycle_s: float = 41.5) -> None:
        """Part and cycle-end points as the gateway writes them (the machine's ground truth)."""
        ctx = EventContext(order=order, operation=operation, apprentice=apprentice)
        lines = []
        for i, count in enumerate(counts):
            ts = start_ns + int(i * every_s * NS)
            part = Event(site=SITE, machine=machine, kind=EventKind.PART, seq=2 * i, ts=ts,
                         data=PartData(count=count), ctx=ctx)
            cycle = Event(site=SITE, machine=machine, kind=EventKind.CYCLE, seq=2 * i + 1, ts=ts,
                          data=CycleData(phase=CyclePhase.END, started_ts=ts - int(cycle_s * NS), duration_s=cycle_s,
                                         outcome=CycleOutcome.COMPLETED), ctx=ctx)
            lines += [event_line(e, context_tags=context_tags(e)) for e in (part, cycle)]
        writer = InfluxWriter(InfluxSettings(host="127.0.0.1", port=influx_port(self.influx), database=self.database))
        try:
            assert not writer.write(lines).rejected
        finally:
            writer.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def web(request: pytest.FixtureRequest, tmp_path: Path, broker: ManagedProcess, influx: Influx) -> Iterator[Harness]:
    """The service on each relational store Copeau supports: SQLite (the default) and PostgreSQL."""
    database = influx.new_database("web")
    workshop = web_workshop(tmp_path, broker=broker, influx=influx, database=database)
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").new_database("web")
    else:
        url = f"sqlite:///{tmp_path / 'copeau.sqlite'}"
    app = create_app(workshop, database_url=url, mqtt=True, progress=False, kiosk_keys=KEYS)
    with TestClient(app) as client:
        codes = seed(app)
        yield Harness(app, client, workshop, database, influx, codes)


@dataclass
class Watcher:
    """A real MQTT subscriber to the job contexts (it receives the retained ones when it subscribes)."""

    port: int
    contexts: dict[str, list[JobContext]] = field(default_factory=dict)
    raw: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{time.monotonic_ns()}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._message
        self.client.on_connect = lambda c, *_: c.subscribe(f"copeau/v1/{SITE}/+/{ControlKind.CONTEXT.value}", qos=1)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def _message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        context = JobContext.model_validate_json(msg.payload)
        with self.lock:
            self.raw.append(msg.payload)
            self.contexts.setdefault(context.machine, []).append(context)

    def last(self, machine: str) -> JobContext | None:
        with self.lock:
            seen = self.contexts.get(machine)
            return seen[-1] if seen else None

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watcher(broker: ManagedProcess) -> Iterator[Watcher]:
    w = Watcher(broker.port)
    yield w
    w.stop()


def start_job(web: Harness, badge: str = "BADGE-ZOE", job: str = "CMD-2026-017/10", machine: str = MILL) -> Any:
    first = web.kiosk("POST", machine, "scan", {"code": badge})
    assert first.status_code == 200, first.text
    assert first.json()["step"] == "identified"
    second = web.kiosk("POST", machine, "scan", {"code": job})
    assert second.status_code == 200, second.text
    assert second.json()["step"] == "running"
    return second.json()


# -- the flow


def test_badge_then_job_publishes_the_retained_context_with_the_code_and_no_name(
    web: Harness, broker: ManagedProcess
) -> None:
    state = start_job(web)
    assert (state["first_name"], state["job"]["code"], state["job"]["quantity"]) == ("Zoé", "CMD-2026-017/10", 20)
    # A subscriber that connects afterwards gets the retained context: what a restarted collector would see.
    late = Watcher(broker.port)
    try:
        context = wait_until(lambda: (c := late.last(MILL)) and c.context.order and c,
                             timeout=WAIT_S, what="the retained job context of fraiseuse-1")
        assert context.context == EventContext(order="CMD-2026-017", operation=10, apprentice=web.codes["BADGE-ZOE"])
        assert all(b"Zo" not in raw and b"Lef" not in raw for raw in late.raw)  # no name on the wire
        idle = wait_until(lambda: late.last(LATHE), timeout=WAIT_S, what="the lathe's (empty) context")
        assert idle.context == EventContext()
    finally:
        late.stop()


def test_job_contexts_are_published_again_when_the_broker_comes_back_without_them(
    web: Harness, broker: ManagedProcess, broker_factory: Any, tmp_path: Path
) -> None:
    """A broker killed with kill -9 loses the retained messages it received since its last save (about 2 s): here,
    all of them (a fresh state directory). After reconnecting, the service publishes every machine's context again,
    so that a collector that connects then still learns which job is running."""
    start_job(web)
    broker.kill()
    fresh = broker_factory(port=broker.port, state_dir=tmp_path / "fresh-broker")
    late = Watcher(fresh.port)
    try:
        context = wait_until(lambda: (c := late.last(MILL)) and c.context.order and c, timeout=WAIT_S,
                             what="the running job's context, published again after the reconnection")
        assert context.context == EventContext(order="CMD-2026-017", operation=10, apprentice=web.codes["BADGE-ZOE"])
        idle = wait_until(lambda: late.last(LATHE), timeout=WAIT_S, what="the lathe's context")
        assert idle.context == EventContext()
    finally:
        late.stop()


def test_parts_appear_and_the_declaration_closes_the_session(web: Harness, watcher: Watcher) -> None:
    state = start_job(web)
    started_ns = int(datetime.fromisoformat(state["started_at"]).timestamp() * NS)
    web.write_parts(machine=MILL, order="CMD-2026-017", operation=10, apprentice=web.codes["BADGE-ZOE"],
                    counts=[1, 1, 2], start_ns=started_ns + NS)
    live = web.kiosk("GET", MILL, "etat").json()
    assert (live["session_parts"], live["job_good"], live["last_cycle_s"]) == (4, 4, 41.5)

    before = web.snapshot()
    too_many = web.kiosk("POST", MILL, "declaration", {"good": 4, "scrap": {"COTE": 1}})
    assert too_many.status_code == 422
    assert too_many.json()["message"] == (
        "Vous déclarez 5 pièce(s), mais la machine n'en a compté que 4 pendant ce travail. Corrigez les nombres.")
    assert web.snapshot() == before

    done = web.kiosk("POST", MILL, "declaration", {"good": 3, "scrap": {"COTE": 1}})
    assert done.status_code == 200, done.text
    assert (done.json()["step"], done.json()["ended_session"]) == ("idle", 1)
    after = web.snapshot()
    assert (after["quality_declarations"], after["declaration_scrap"], after["open"]) == (1, 1, 0)
    wait_until(lambda: (c := watcher.last(MILL)) and c.context == EventContext(), timeout=WAIT_S,
               what="the empty context once the job ended")


# -- refusals: a clear French message, and nothing changed


def test_unknown_badge(web: Harness) -> None:
    before = web.snapshot()
    answer = web.kiosk("POST", MILL, "scan", {"code": "BADGE-INCONNU"})
    assert answer.status_code == 404
    assert answer.json() == {"error": "unknown_badge", "errors": [], "message": (
        "Badge inconnu (BADGE-INCONNU). Demandez à votre maître professionnel de l'enregistrer.")}
    english = web.kiosk("POST", MILL, "scan", {"code": "BADGE-INCONNU"}, lang="en")
    assert english.json()["message"] == "Unknown badge (BADGE-INCONNU). Ask your maître professionnel to register it."
    assert web.snapshot() == before
    assert web.kiosk("GET", MILL, "etat").json()["step"] == "idle"


def test_job_meant_for_another_kind_of_machine(web: Harness, watcher: Watcher) -> None:
    assert web.kiosk("POST", MILL, "scan", {"code": "BADGE-ZOE"}).status_code == 200
    before = web.snapshot()
    answer = web.kiosk("POST", MILL, "scan", {"code": "CMD-2026-017/20"})
    assert answer.status_code == 409
    assert answer.json()["message"] == (
        "Le travail CMD-2026-017/20 se fait sur un tour, et fraiseuse-1 est une fraiseuse. Rien n'a démarré.")
    tapped = web.kiosk("POST", MILL, "travail", {"order": "CMD-2026-017", "operation": 20})
    assert tapped.status_code == 409
    assert web.snapshot() == before
    wait_until(lambda: watcher.last(MILL), timeout=WAIT_S, what="the retained context")
    assert watcher.last(MILL).context == EventContext()  # still no job on the mill


def test_second_badge_in_on_a_busy_machine(web: Harness) -> None:
    start_job(web)
    before = web.snapshot()
    answer = web.kiosk("POST", MILL, "scan", {"code": "BADGE-NOAH"})
    assert answer.status_code == 409
    assert answer.json()["message"] == (
        "fraiseuse-1 est déjà occupée (travail CMD-2026-017/10). Il faut d'abord terminer ce travail.")
    assert web.snapshot() == before
    state = web.kiosk("GET", MILL, "etat").json()
    assert (state["first_name"], state["job"]["code"]) == ("Zoé", "CMD-2026-017/10")


def test_a_declaration_larger_than_the_parts_made_is_refused_and_changes_nothing(
    web: Harness, watcher: Watcher
) -> None:
    """Issue #4: good + scrap above what the machine counted during the session is refused, at the kiosk and on a
    maître's correction, in plain French (English on request), with the database and the job context untouched."""
    code = web.codes["BADGE-ZOE"]
    before_session = time.time_ns() - 3600 * NS
    state = start_job(web)
    started_ns = int(datetime.fromisoformat(state["started_at"]).timestamp() * NS)
    # 5 parts of the same job made an hour earlier (another session), then 2 in this one: only the 2 count.
    web.write_parts(machine=MILL, order="CMD-2026-017", operation=10, apprentice=code, counts=[5],
                    start_ns=before_session)
    web.write_parts(machine=MILL, order="CMD-2026-017", operation=10, apprentice=code, counts=[1, 1],
                    start_ns=started_ns + NS)
    live = web.kiosk("GET", MILL, "etat").json()
    assert (live["session_parts"], live["job_good"]) == (2, 7)
    context = wait_until(lambda: (c := watcher.last(MILL)) and c.context.order and c, timeout=WAIT_S,
                         what="the job's context")

    before = web.snapshot()
    refused = web.kiosk("POST", MILL, "declaration", {"good": 2, "scrap": {"COTE": 1}})
    assert refused.status_code == 422
    assert refused.json() == {"error": "declaration_too_large", "errors": [], "message": (
        "Vous déclarez 3 pièce(s), mais la machine n'en a compté que 2 pendant ce travail. Corrigez les nombres.")}
    english = web.kiosk("POST", MILL, "declaration", {"good": 3, "scrap": {}}, lang="en")
    assert english.status_code == 422
    assert english.json()["message"] == (
        "You declare 3 part(s), but the machine counted only 2 during this job. Fix the numbers.")
    assert web.snapshot() == before  # no declaration, no scrap count, the session still open
    still = web.kiosk("GET", MILL, "etat").json()
    assert (still["step"], still["session_parts"], still["ended_session"]) == ("running", 2, None)
    assert watcher.last(MILL) == context  # no "job ended" context was published

    # A maître's correction is checked the same way: the session is closed without a declaration, then declared.
    client, csrf = web.maitre()
    (session,) = client.get("/api/sessions", params={"open_only": True}).json()
    closed = client.post(f"/api/sessions/{session['id']}/cloture", headers={"X-CSRF-Token": csrf})
    assert closed.status_code == 200, closed.text
    before = web.snapshot()
    too_many = client.post(f"/api/sessions/{session['id']}/declaration", headers={"X-CSRF-Token": csrf},
                           json={"good": 1, "scrap": {"COTE": 1, "REGLAGE": 1}})
    assert too_many.status_code == 422
    assert too_many.json()["message"] == (
        "Vous déclarez 3 pièce(s), mais la machine n'en a compté que 2 pendant ce travail. Corrigez les nombres.")
    assert web.snapshot() == before
    # The numbers that fit are accepted: the refusal was about the count, nothing else.
    fits = client.post(f"/api/sessions/{session['id']}/declaration", headers={"X-CSRF-Token": csrf},
                       json={"good": 1, "scrap": {"COTE": 1}})
    assert fits.status_code == 200, fits.text
    assert web.snapshot()["quality_declarations"] == before["quality_declarations"] + 1


def test_too_many_unknown_badges(web: Harness) -> None:
    for _ in range(5):
        assert web.kiosk("POST", MILL, "scan", {"code": "essai"}).status_code == 404
    answer = web.kiosk("POST", MILL, "scan", {"code": "BADGE-ZOE"})
    assert answer.status_code == 429
    assert answer.json()["message"].startswith("Trop d'essais avec des badges inconnus. Attendez ")
    assert int(answer.headers["Retry-After"]) > 0
    assert web.kiosk("POST", LATHE, "scan", {"code": "BADGE-ZOE"}).status_code == 200  # per kiosk


def test_csv_with_bad_rows_imports_nothing_and_reports_every_line(web: Harness) -> None:
    client, csrf = web.maitre()
    before = web.snapshot()
    bad = ("commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)\n"
           "CMD-9;Durand;P;10;2026-12-18;10;fraiseuse;30;0\n"
           "CMD-10;Durand;P;zéro;2026-12-18;10;fraiseuse;30;0\n"
           "CMD-11;Durand;P;10;2026-12-18;10;perceuse;30;0\n"
           "CMD-2026-017;Mécanique Durand;BRIDE-45;20;2026-12-18;30;fraiseuse;42;0\n")
    answer = client.post("/api/commandes/import", files={"fichier": ("commandes.csv", bad.encode(), "text/csv")},
                         headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 422
    assert answer.json()["message"] == "Le fichier n'a pas été importé : 3 erreur(s). Aucune commande n'a été ajoutée."
    assert answer.json()["errors"] == [
        "Ligne 3 : colonne « quantité » : « zéro » n'est pas un nombre entier",
        "Ligne 4 : colonne « machine » : « perceuse » n'est pas un type de machine (tour ou fraiseuse)",
        "Ligne 5 : la commande CMD-2026-017 existe déjà dans Copeau",
    ]
    assert web.snapshot() == before
    page = client.post("/admin/import", files={"fichier": ("commandes.csv", bad.encode(), "text/csv")},
                       data={"csrf": csrf})
    assert page.status_code == 422
    assert "Ligne 4 : colonne « machine » : « perceuse » n&#39;est pas un type de machine" in page.text
    assert web.snapshot() == before
    good = bad.splitlines()[0] + "\n" + bad.splitlines()[1] + "\n"
    imported = client.post("/api/commandes/import", files={"fichier": ("c.csv", good.encode(), "text/csv")},
                           headers={"X-CSRF-Token": csrf})
    assert imported.status_code == 201, imported.text
    assert [o["reference"] for o in imported.json()["imported"]] == ["CMD-9"]



def test_csv_with_a_quote_never_closed_is_refused_in_french(web: Harness) -> None:
    client, csrf = web.maitre()
    before = web.snapshot()
    row = "CMD-9;Durand;P;10;2026-12-18;10;fraiseuse;30;0\n"
    bad = ("commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)\n"
           + row + 'CMD-10;"Durand;P;10;2026-12-18;10;fraiseuse;30;0\n' + row * 4000)
    answer = client.post("/api/commandes/import", files={"fichier": ("commandes.csv", bad.encode(), "text/csv")},
                         headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"] == [
        "Ligne 3 : ligne illisible : une cellule dépasse 131072 caractères (un guillemet « \" » jamais refermé ?)"]
    assert web.snapshot() == before


def test_the_api_documentation_needs_no_internet(web: Harness) -> None:
    page = web.client.get("/api/docs")
    assert page.status_code == 200
    scripts = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert sorted(scripts) == ["/api/docs/static/swagger-ui-bundle.js", "/api/docs/static/swagger-ui.css"]
    assert "http" not in " ".join(re.findall(r'(?:src|href)="([^"]+)"', page.text))  # nothing from another site
    for url in scripts:
        asset = web.client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100_000, url
    assert web.client.get("/api/openapi.json").json()["info"]["title"] == "Copeau"

# -- access


def test_kiosk_keys_and_admin_routes(web: Harness) -> None:
    key = {"X-Kiosk-Key": KEYS[MILL]}
    for path in ("/api/commandes", "/api/apprentis", "/api/sessions", "/api/avancement"):
        answer = web.client.get(path, headers=key)
        assert answer.status_code == 403, path
        assert answer.json()["message"] == (
            "Une borne n'a pas accès à cette page : elle sert seulement aux actions de sa machine.")
    assert web.client.get("/admin", headers=key).status_code == 403
    assert web.client.post("/api/apprentis", json={"first_name": "A", "last_name": "B", "badge": "XYZ"},
                           headers=key).status_code == 403
    # A logged-in maître on a browser that also holds a kiosk key is still a kiosk there.
    client, _ = web.maitre()
    assert client.get("/api/commandes").status_code == 200
    assert client.get("/api/commandes", headers=key).status_code == 403
    # Another machine's key, no key, a wrong key in the kiosk address.
    assert web.client.get(f"/api/kiosque/{LATHE}/etat", headers=key).status_code == 403
    no_key = web.client.get(f"/api/kiosque/{MILL}/etat")
    assert no_key.status_code == 401
    assert "pas encore autorisée pour fraiseuse-1" in no_key.json()["message"]
    assert TestClient(web.app).get(f"/kiosque/{MILL}?cle=mauvaise-cle-de-borne").status_code == 403
    assert web.client.get("/api/commandes").status_code == 401


def test_changes_by_a_maitre_need_the_csrf_token_and_our_origin(web: Harness) -> None:
    client, csrf = web.maitre()
    body = {"first_name": "Inès", "last_name": "Moreau", "badge": "BADGE-INES"}
    refused = client.post("/api/apprentis", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"] == "csrf_rejected"
    assert client.post("/api/apprentis", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
                       ).status_code == 403
    created = client.post("/api/apprentis", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://testserver"})
    assert created.status_code == 201, created.text
    assert created.json()["code"].startswith("AP-")


def test_kiosk_page_with_its_key_cookie_in_french_and_english(web: Harness) -> None:
    browser = TestClient(web.app)
    opened = browser.get(f"/kiosque/{MILL}?cle={KEYS[MILL]}", follow_redirects=False)
    assert (opened.status_code, opened.headers["location"]) == (303, f"/kiosque/{MILL}")
    page = browser.get(f"/kiosque/{MILL}")
    assert page.status_code == 200
    assert "Scannez votre badge" in page.text and "Cote hors tolérance" in page.text
    english = browser.get(f"/kiosque/{MILL}?lang=en")
    assert "Scan your badge" in english.text and "Dimension out of tolerance" in english.text
    assert "Scan your badge" in browser.get(f"/kiosque/{MILL}").text  # the choice is remembered
    # The cookie alone is not enough to change something: the page's CSRF token must come with it.
    assert browser.post(f"/api/kiosque/{MILL}/scan", json={"code": "BADGE-ZOE"}).status_code == 403
    token = page.text.split('data-csrf="', 1)[1].split('"', 1)[0]
    scanned = browser.post(f"/api/kiosque/{MILL}/scan", json={"code": "BADGE-ZOE"}, headers={"X-CSRF-Token": token})
    assert scanned.status_code == 200


def test_login_form_and_management_pages(web: Harness) -> None:
    browser = TestClient(web.app)
    assert browser.get("/admin", follow_redirects=False).headers["location"] == "/connexion?suite=/admin"
    wrong = browser.post("/connexion", data={"login": "mdupont", "password": "non", "suite": "/admin"})
    assert wrong.status_code == 401
    assert "Identifiant ou mot de passe incorrect." in wrong.text
    logged = browser.post("/connexion", data={"login": "mdupont", "password": PASSWORD, "suite": "//evil.example"},
                          follow_redirects=False)
    assert (logged.status_code, logged.headers["location"]) == (303, "/admin")  # never an open redirect
    orders = browser.get("/admin")
    assert orders.status_code == 200
    assert "CMD-2026-017/10" in orders.text and "Commandes en cours" in orders.text
    for path, text in (("/admin/apprentis", web.codes["BADGE-ZOE"]), ("/admin/sessions", "Sessions de travail"),
                       ("/admin/motifs", "Cote hors tolérance"), ("/admin/import", "temps de cycle (s)")):
        page = browser.get(path)
        assert page.status_code == 200 and text in page.text, path


# -- MQTT badge readers


def test_badge_flow_over_mqtt(web: Harness, broker: ManagedProcess, watcher: Watcher) -> None:
    reader = paho.Client(CallbackAPIVersion.VERSION2, client_id="reader-fraiseuse-1",
                         protocol=MQTTProtocolVersion.MQTTv5)
    reader.connect("127.0.0.1", broker.port)
    reader.loop_start()
    topic = control_topic(SITE, MILL, ControlKind.BADGE)
    try:
        wait_until(web.app.state.copeau.link.link.connected.is_set, timeout=WAIT_S,
                   what="the web service's MQTT connection")
        # The service subscribes right after connecting: retry the first scan until it is seen.
        wait_until(lambda: reader.publish(topic, BadgeScan(code="BADGE-NOAH").model_dump_json().encode(), qos=1)
                   and web.kiosk("GET", MILL, "etat").json()["step"] == "identified",
                   timeout=WAIT_S, what="the reader's badge scan to identify Noah", interval=0.3)
        assert web.kiosk("GET", MILL, "etat").json()["first_name"] == "Noah"
        reader.publish(topic, BadgeScan(code="CMD-2026-017/10").model_dump_json().encode(), qos=1)
        context = wait_until(lambda: (c := watcher.last(MILL)) and c.context.order and c, timeout=WAIT_S,
                             what="the job context published after the reader's job-card scan")
        assert context.context.apprentice == web.codes["BADGE-NOAH"]
        assert web.snapshot()["open"] == 1
    finally:
        reader.disconnect()
        reader.loop_stop()


# -- progress


def test_order_progress_is_written_to_influxdb(web: Harness) -> None:
    start_job(web)
    # 4 parts at one a minute (the first marks the start of the rate window), 1 declared as scrap.
    t0 = time.time_ns()
    web.write_parts(machine=MILL, order="CMD-2026-017", operation=10, apprentice=web.codes["BADGE-ZOE"],
                    counts=[1, 1, 1, 1], start_ns=t0)
    assert web.kiosk("POST", MILL, "declaration", {"good": 3, "scrap": {"COTE": 1}}).status_code == 200
    now = datetime.fromtimestamp((t0 + 180 * NS) / NS, tz=UTC)
    tracker = web.app.state.copeau.tracker
    progress = {(p.order, p.operation): p for p in tracker.run_once(now=now, force=True)}
    p10 = progress[("CMD-2026-017", 10)]
    due = due_instant(date(2026, 12, 18), "Europe/Paris")
    now_ns = int(now.timestamp()) * NS + now.microsecond * 1000
    assert (p10.made, p10.scrap, p10.good, p10.remaining) == (4, 1, 3, 17)
    assert p10.eta_ns == pytest.approx(now_ns + 17 * 60 * NS, abs=1000)  # one part a minute
    assert p10.delay_s == pytest.approx((now_ns + 17 * 60 * NS - due) / NS, abs=1e-3)
    p20 = progress[("CMD-2026-017", 20)]
    assert (p20.made, p20.remaining, p20.basis.value) == (0, 20, "standard")
    assert p20.eta_ns == now_ns + (20 * 30 + 600) * NS

    series = web.influx.query(web.database, 'SELECT "good","scrap","remaining","made","eta_ts","delay_s","late" '
                                            "FROM \"order_progress\" WHERE \"order\" = 'CMD-2026-017' "
                                            "AND \"operation\" = '10'")
    (row,) = series[0]["values"]
    assert row[1:5] == [3, 1, 17, 4]
    assert row[5] == p10.eta_ns and row[6] == pytest.approx(p10.delay_s) and row[7] is False
    api = web.maitre()[0].get("/api/avancement")
    assert {(p["order"], p["operation"], p["good"], p["remaining"]) for p in api.json()} == {
        ("CMD-2026-017", 10, 3, 17), ("CMD-2026-017", 20, 0, 20)}

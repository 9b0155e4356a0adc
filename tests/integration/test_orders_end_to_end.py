"""Issue #4, end to end: orders imported from CSV, an apprentice badged in on a machine with a job, the machine
makes parts; the collector stamps them with the job context the kiosk service published, the gateway stores them in
InfluxDB, and the progress tracker turns them into `order_progress`.

Real mosquitto, influxd, collector, gateway and web service; the machine is played by the test through a
FunctionSource, so its part counter and the time of each reading are the ground truth.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from collectors.core import Sample
from collectors.runner import Collector
from collectors.source import FunctionSource
from copeau.services import ManagedProcess
from gateway.service import Gateway
from orders import catalog
from orders.progress import NS, due_instant
from tests.conftest import Influx, make_workshop, modbus_machine, wait_until
from web.app import create_app

with warnings.catch_warnings():
    # Starlette 1.x would rather its TestClient used the `httpx2` package and warns when it falls back to httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

MILL = "fraiseuse-1"
KEY = "cle-de-la-fraiseuse-1-de-bout-en-bout"
PASSWORD = "mot-de-passe-de-bout-en-bout"
ORDERS = """commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)
CMD-E2E;Mécanique Durand;BRIDE-45;10;2026-12-18;10;fraiseuse;50;600
"""
PARTS = [1, 1, 2, 1, 1]  # parts seen at each of five readings, one minute apart: 6 parts
WAIT_S = 30.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Machine:
    """The machine, driven by the test: its counter, and the time its readings carry."""

    def __init__(self) -> None:
        self.counter = 1000
        self.clock_ns = time.time_ns()
        self._lock = threading.Lock()

    def read(self) -> Sample:
        with self._lock:
            self.clock_ns += 1  # readings between two parts: a nanosecond apart, so part times stay exact
            return Sample(self.clock_ns, cycle_running=False, counter=self.counter)

    def make(self, parts: int, *, at_ns: int) -> None:
        """`parts` more on the counter, seen by the next reading, which carries the time `at_ns`."""
        with self._lock:
            self.clock_ns = at_ns - 1
            self.counter += parts


def test_parts_carry_the_job_and_progress_is_right(tmp_path: Path, broker: ManagedProcess, influx: Influx) -> None:
    database = influx.new_database("e2e")
    workshop = make_workshop(tmp_path, mqtt_port=broker.port, influx_port=int(influx.url.rsplit(":", 1)[1]),
                             database=database, machines=[modbus_machine(MILL, 15021, poll=0.02)])
    app = create_app(workshop, database_url=f"sqlite:///{tmp_path / 'copeau.sqlite'}", progress=False,
                     kiosk_keys={MILL: KEY})
    gateway = Gateway(workshop)
    gateway.start()
    try:
        with TestClient(app) as kiosk:
            # A maître imports the orders and registers the apprentice.
            maitre = TestClient(app)
            with app.state.copeau.transaction() as db:  # the first maître comes from `copeau web --add-maitre`
                catalog.create_maitre(db, login="mdupont", display_name="M. Dupont", password=PASSWORD,
                                      now=datetime.now(UTC))
            csrf = maitre.post("/api/connexion", json={"login": "mdupont", "password": PASSWORD}).json()["csrf"]
            imported = maitre.post("/api/commandes/import", headers={"X-CSRF-Token": csrf},
                                   files={"fichier": ("commandes.csv", ORDERS.encode(), "text/csv")})
            assert imported.status_code == 201, imported.text
            added = maitre.post("/api/apprentis", headers={"X-CSRF-Token": csrf},
                                json={"first_name": "Zoé", "last_name": "Lefèvre", "badge": "BADGE-ZOE"})
            code = added.json()["code"]

            # The apprentice badges in at the machine's kiosk and scans the job card.
            key = {"X-Kiosk-Key": KEY}
            assert kiosk.post(f"/api/kiosque/{MILL}/scan", json={"code": "BADGE-ZOE"}, headers=key).status_code == 200
            started = kiosk.post(f"/api/kiosque/{MILL}/scan", json={"code": "CMD-E2E/10"}, headers=key)
            assert started.json()["step"] == "running", started.text

            # The machine makes 6 parts, one reading a minute, once the collector knows the job.
            machine = Machine()
            t0 = machine.clock_ns + 60 * NS
            collector = Collector(workshop, sources={MILL: FunctionSource(MILL, machine.read)},
                                  outbox=tmp_path / "outbox.sqlite")
            asyncio.run(produce(collector, machine, t0))

            where = "\"order\" = 'CMD-E2E' AND \"operation\" = '10'"
            wait_until(lambda: influx.scalar(database, f'SELECT sum("count") FROM "part" WHERE {where}') == 6,
                       timeout=WAIT_S, what="the 6 parts in InfluxDB, tagged with the job")
            points = influx.query(database, 'SELECT "count", "apprentice", "order", "operation" FROM "part"')
            rows = points[0]["values"]
            assert [(r[1], r[2], r[3], r[4]) for r in rows] == [(n, code, "CMD-E2E", "10") for n in PARTS]
            assert [r[0] for r in rows] == [t0 + i * 60 * NS for i in range(len(PARTS))]
            apprentices = influx.query(database, 'SHOW TAG VALUES FROM "part" WITH KEY = "apprentice"')
            assert [v[1] for v in apprentices[0]["values"]] == [code]  # the code, never the name

            # End of job: 5 good, 1 scrap; the machine counted 6.
            declared = kiosk.post(f"/api/kiosque/{MILL}/declaration", headers=key,
                                  json={"good": 5, "scrap": {"COTE": 1}})
            assert declared.status_code == 200, declared.text

            # Progress at the last part: 10 ordered, 6 made, 1 scrap → 5 good, 5 to make. Recent rate: the 5 parts
            # after the first reading took 4 minutes → 5 more parts take 4 minutes.
            now_ns = (t0 + 4 * 60 * NS) // 1000 * 1000  # a datetime holds microseconds
            now = EPOCH + timedelta(microseconds=now_ns // 1000)
            (p,) = app.state.copeau.tracker.run_once(now=now, force=True)
            assert (p.made, p.scrap, p.good, p.remaining, p.basis.value) == (6, 1, 5, 5, "recent")
            assert p.eta_ns == pytest.approx(now_ns + 240 * NS, abs=NS // 1000)
            assert p.delay_s == pytest.approx((now_ns + 240 * NS - due_instant(date(2026, 12, 18), "Europe/Paris"))
                                              / NS, abs=1e-3)
            stored = influx.query(database, f'SELECT "good","scrap","remaining","eta_ts" FROM "order_progress" '
                                            f"WHERE {where}")
            assert stored[0]["values"][0][1:] == [5, 1, 5, p.eta_ns]
    finally:
        gateway.stop()


async def produce(collector: Collector, machine: Machine, t0: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        async with asyncio.timeout(WAIT_S):
            # The retained context reaches the collector when it subscribes; it keeps it in its outbox.
            while b"CMD-E2E" not in collector.outbox.contexts().get(MILL, b""):
                await asyncio.sleep(0.02)
            for i, parts in enumerate(PARTS):
                machine.make(parts, at_ns=t0 + i * 60 * NS)
                while collector.stats.views[MILL].counter != machine.counter:
                    await asyncio.sleep(0.02)
            while collector.outbox.depth():  # every event handed to the broker and acknowledged
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task

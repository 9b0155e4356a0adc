"""Issue #4, acceptance 1, end to end: orders imported from CSV, an apprentice badged in with a job on a simulated
Modbus mill, the mill makes parts; the collector stamps them with the job context the kiosk service published, the
gateway stores them in InfluxDB, and the progress tracker turns them into `order_progress`.

Everything is real: mosquitto, influxd, the web service (driven through its API), the collector, the gateway and
the Modbus simulator (`ModbusMachineSimulator`) playing a short finite scenario. What the simulator really did is in
its ground-truth file; the expected counts, ETA and delay are computed from it and from the scrap declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collectors.runner import Collector
from copeau.config import ModbusMachine, Workshop
from copeau.contract import JobContext
from copeau.services import ManagedProcess, free_port
from gateway.service import Gateway
from orders import catalog
from orders.progress import NS
from simulators.groundtruth import Truth, read_truth, truth_path
from simulators.modbus import ModbusMachineSimulator
from simulators.scenario import plan
from tests.conftest import Influx, make_workshop, modbus_machine, wait_for, wait_until
from web.app import create_app

with warnings.catch_warnings():
    # Starlette 1.x would rather its TestClient used the `httpx2` package and warns when it falls back to httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

# About 12 s; a hang anywhere in the pipeline fails after 2 minutes rather than the suite's 5.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MILL = "fraiseuse-1"
KEY = "cle-de-la-fraiseuse-1-de-bout-en-bout"
PASSWORD = "mot-de-passe-de-bout-en-bout"
ORDER, OPERATION, QUANTITY = "CMD-E2E", 10, 25  # 12 made, 3 scrap: 16 remain, not the 11 the rate is measured on
FIRST_NAME, LAST_NAME, BADGE = "Zoé", "Lefèvre", "BADGE-ZOE"
POLL_S = 0.02
# 12 parts, about 0.7 s apart, in about 9 s. Seed 2 opens with 0.44 s of idle (checked below): the collector, retrying
# every 0.1 s at most while the module is not up yet, reads it before its first cycle starts, so that the baseline
# of the counter is 0 and every cycle is seen from its start. No `bad_every`: Modbus does not report quality.
SCENARIO = {"seed": 2, "cycle_s": 0.4, "cycle_jitter_s": 0.05, "idle_s": 0.3, "parts": 12}
RECONNECT_MAX_S = 0.1
SCRAP = {"COTE": 2, "REGLAGE": 1}  # declared at the end of the job
# A part point carries the time of the reading that saw the counter move. That time is taken just before the
# request, so it may precede the change by the request's own duration (EARLY_S); it follows it by at most one poll
# interval, with room for a loaded machine (LATE_S).
EARLY_S, LATE_S = 0.05, 0.25
WAIT_S = 20.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_parts_carry_the_job_and_progress_matches_ground_truth(
    tmp_path: Path, broker: ManagedProcess, influx: Influx
) -> None:
    database = influx.new_database("e2e")
    workshop = make_workshop(
        tmp_path, mqtt_port=broker.port, influx_port=int(influx.url.rsplit(":", 1)[1]), database=database,
        machines=[modbus_machine(MILL, free_port(), poll=POLL_S, simulation=SCENARIO)],
        collector={"reconnect_max_s": RECONNECT_MAX_S},
    )
    simulation = workshop.machines[0].simulation
    assert simulation is not None
    first_idle = next(plan(simulation))
    assert first_idle.kind == "idle" and first_idle.duration_s >= 4 * RECONNECT_MAX_S
    zone = ZoneInfo(workshop.web.timezone)
    due = datetime.now(zone).date() - timedelta(days=1)  # due yesterday: the order is late
    orders_csv = (
        "commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)\n"
        f"{ORDER};Mécanique Durand;BRIDE-45;{QUANTITY};{due:%d/%m/%Y};{OPERATION};fraiseuse;50;600\n"
    )
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
                                   files={"fichier": ("commandes.csv", orders_csv.encode(), "text/csv")})
            assert imported.status_code == 201, imported.text
            added = maitre.post("/api/apprentis", headers={"X-CSRF-Token": csrf},
                                json={"first_name": FIRST_NAME, "last_name": LAST_NAME, "badge": BADGE})
            assert added.status_code == 201, added.text
            code = added.json()["code"]
            assert FIRST_NAME not in code and LAST_NAME not in code

            # The apprentice badges in at the machine's kiosk and scans the job card, before the machine runs.
            key = {"X-Kiosk-Key": KEY}
            badged = kiosk.post(f"/api/kiosque/{MILL}/scan", json={"code": BADGE}, headers=key)
            assert badged.json()["step"] == "identified", badged.text
            started = kiosk.post(f"/api/kiosque/{MILL}/scan", json={"code": f"{ORDER}/{OPERATION}"}, headers=key)
            assert started.json()["step"] == "running", started.text

            # The collector learns the job (retained context), then the mill plays its scenario to the end.
            asyncio.run(produce(workshop, code))
            truth = read_truth(truth_path(workshop.state_dir, MILL))
            assert truth.parts == SCENARIO["parts"] and truth.bad == 0
            part_ts = [r["ts"] for r in truth.records if r["event"] == "part"]

            # InfluxDB holds every part, each with the job: order, operation and the apprentice's code.
            wait_until(lambda: influx.scalar(database, 'SELECT sum("count") FROM "part"') == truth.parts,
                       timeout=WAIT_S, what=f"the {truth.parts} parts of the ground truth in InfluxDB")
            job = {"order": ORDER, "operation": str(OPERATION), "apprentice": code, "machine": MILL}
            parts = rows(influx, database, 'SELECT * FROM "part"')
            assert [{k: p[k] for k in job} for p in parts] == [job] * truth.parts
            assert [p["count"] for p in parts] == [1] * truth.parts  # one reading per part: parts are 0.5 s apart
            lags = [(p["time"] - ts) / NS for p, ts in zip(parts, part_ts, strict=True)]
            assert all(-EARLY_S <= lag <= LATE_S for lag in lags), lags
            where = f"\"order\" = '{ORDER}' AND \"operation\" = '{OPERATION}' AND \"apprentice\" = '{code}'"
            assert influx.scalar(database, f'SELECT sum("count") FROM "part" WHERE {where}') == truth.parts
            apprentices = influx.query(database, 'SHOW TAG VALUES FROM "part" WITH KEY = "apprentice"')
            assert [v[1] for v in apprentices[0]["values"]] == [code]

            # So does every cycle: each one of the truth, seen from its start, its duration within the reading lags.
            completed = [c for c in truth.cycles if c.completed]
            ends = 'SELECT * FROM "cycle" WHERE "phase" = \'end\''
            wait_until(lambda: len(rows(influx, database, ends)) == len(completed), timeout=WAIT_S,
                       what=f"the {len(completed)} cycles of the ground truth in InfluxDB")
            cycles = rows(influx, database, 'SELECT * FROM "cycle"')
            assert [{k: c[k] for k in job} for c in cycles] == [job] * 2 * len(completed)
            durations = [c["duration_s"] for c in cycles if c["phase"] == "end"]
            assert all(c["outcome"] == "completed" for c in cycles if c["phase"] == "end")
            for measured, real in zip(durations, completed, strict=True):
                assert measured == pytest.approx(real.duration_s, abs=EARLY_S + LATE_S)

            # The kiosk shows the parts of the session; the apprentice declares the end of the job.
            state = kiosk.get(f"/api/kiosque/{MILL}/etat", headers=key).json()
            assert (state["session_parts"], state["job_good"]) == (truth.parts, truth.parts), state
            scrap = sum(SCRAP.values())
            declared = kiosk.post(f"/api/kiosque/{MILL}/declaration", headers=key,
                                  json={"good": truth.parts - scrap, "scrap": SCRAP})
            assert declared.status_code == 200, declared.text
            assert declared.json()["step"] == "idle"

            # Progress, computed from the ground truth and the declared scrap.
            now = datetime.now(UTC)
            (p,) = app.state.copeau.tracker.run_once(now=now, force=True)
            expected = expected_progress(truth, scrap=scrap, now=now, due_ns=end_of_day_ns(due, zone))
            # The tracker's rate comes from the times of the readings, not of the parts: with every lag within
            # [-EARLY_S, LATE_S] (checked above), the span it measures is off by EARLY_S + LATE_S at most, and the
            # ETA by that times remaining / (parts after the first).
            tolerance_s = expected["remaining"] * (EARLY_S + LATE_S) / (truth.parts - 1)
            assert (p.quantity, p.made, p.scrap, p.good, p.remaining, p.basis.value) == (
                QUANTITY, expected["made"], scrap, expected["good"], expected["remaining"], "recent")
            assert p.due_ns == expected["due_ns"]
            assert p.eta_ns == pytest.approx(expected["eta_ns"], abs=tolerance_s * NS)
            assert p.delay_s == pytest.approx(expected["delay_s"], abs=tolerance_s)
            assert p.late
            # Exactly, from the readings InfluxDB holds: the parts after the first one over the span of the readings.
            span_ns = parts[-1]["time"] - parts[0]["time"]
            exact_eta_ns = expected["now_ns"] + round(expected["remaining"] * span_ns / (truth.parts - 1))
            assert abs(p.eta_ns - exact_eta_ns) <= 1  # ns
            assert p.delay_s == pytest.approx((exact_eta_ns - expected["due_ns"]) / NS, abs=1e-6)

            # The point the tracker wrote says the same.
            (stored,) = rows(influx, database, f"SELECT * FROM \"order_progress\" WHERE \"order\" = '{ORDER}' "
                                               f"AND \"operation\" = '{OPERATION}'")
            assert {k: stored[k] for k in ("quantity", "made", "good", "scrap", "remaining", "basis", "late")} == {
                "quantity": QUANTITY, "made": truth.parts, "good": expected["good"], "scrap": scrap,
                "remaining": expected["remaining"], "basis": "recent", "late": True}
            assert (stored["time"], stored["eta_ts"], stored["due_ts"]) == (expected["now_ns"], p.eta_ns, p.due_ns)
            assert stored["delay_s"] == pytest.approx(p.delay_s, abs=1e-9)

            # The apprentice's name (and badge) is nowhere in InfluxDB: not in any measurement, tag or field.
            everything = influx_dump(influx, database)
            assert {"part", "cycle", "state", "order_progress"} <= set(everything)
            text = json.dumps(everything, ensure_ascii=False)
            assert code in text
            for secret in (FIRST_NAME, LAST_NAME, BADGE):
                assert secret.casefold() not in text.casefold(), secret
    finally:
        gateway.stop()


async def produce(workshop: Workshop, code: str) -> None:
    """Run the collector; once it holds the job context, run the simulated mill's scenario to its end; return
    once the collector has read the final counter and the broker has acknowledged every event."""
    machine = workshop.machines[0]
    assert isinstance(machine, ModbusMachine)
    collector = Collector(workshop)
    sim = ModbusMachineSimulator(machine, truth_path=truth_path(workshop.state_dir, machine.id))
    stop = asyncio.Event()
    collector_task = asyncio.create_task(collector.run(stop), name="collector")
    sim_task: asyncio.Task[None] | None = None
    try:
        # The retained context reaches the collector when it subscribes; it keeps it in its outbox.
        await wait_for(lambda: job_of(collector.outbox.contexts().get(MILL)) == (ORDER, OPERATION, code),
                       timeout=WAIT_S, what="the collector holding the job context")
        sim_task = asyncio.create_task(sim.run(), name="mill")
        await wait_for(lambda: sim.finished.is_set() or sim_task.done(), timeout=WAIT_S, what="the scenario's end")
        assert not sim_task.done(), sim_task  # a finite scenario ends idle, still serving
        await wait_for(lambda: collector.stats.views[MILL].counter == sim.counter or collector_task.done(),
                       timeout=WAIT_S, what=f"the collector reading the final counter {sim.counter}")
        await wait_for(lambda: collector.outbox.depth() == 0 or collector_task.done(), timeout=WAIT_S,
                       what="every event acknowledged by the broker")
        assert not collector_task.done(), collector_task
    finally:
        stop.set()
        await collector_task
        if sim_task is not None:
            sim_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sim_task


def job_of(payload: bytes | None) -> tuple[str | None, int | None, str | None] | None:
    if payload is None:
        return None
    ctx = JobContext.model_validate_json(payload).context
    return ctx.order, ctx.operation, ctx.apprentice


def end_of_day_ns(day: date, zone: ZoneInfo) -> int:
    """A due date means the end of that day (the next midnight) in the school's time zone."""
    return (datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone) - EPOCH) // timedelta(microseconds=1) * 1000


def expected_progress(truth: Truth, *, scrap: int, now: datetime, due_ns: int) -> dict[str, Any]:
    """The right answer, from what the machine really did: the rate is that of the parts after the first one,
    over the time from the first part to the last (docs/orders-and-kiosk.md, "Order progress")."""
    made = truth.parts
    good = made - scrap
    remaining = QUANTITY - good
    times = [r["ts"] for r in truth.records if r["event"] == "part"]
    now_ns = (now - EPOCH) // timedelta(microseconds=1) * 1000
    eta_ns = now_ns + round(remaining * (times[-1] - times[0]) / (made - 1))
    return {"made": made, "good": good, "remaining": remaining, "now_ns": now_ns, "due_ns": due_ns,
            "eta_ns": eta_ns, "delay_s": (eta_ns - due_ns) / NS}


def rows(influx: Influx, database: str, q: str) -> list[dict[str, Any]]:
    """The points of a one-series query, as {column: value}, in time order."""
    series = influx.query(database, q)
    assert len(series) <= 1, series
    return [dict(zip(s["columns"], v, strict=True)) for s in series for v in s["values"]]


def influx_dump(influx: Influx, database: str) -> dict[str, Any]:
    """Every measurement of the database with its tag keys, tag values, field keys and points."""
    names = [v[0] for s in influx.query(database, "SHOW MEASUREMENTS") for v in s["values"]]
    return {
        name: {
            "tag keys": influx.query(database, f'SHOW TAG KEYS FROM "{name}"'),
            "tag values": influx.query(database, f'SHOW TAG VALUES FROM "{name}" WITH KEY =~ /.*/'),
            "field keys": influx.query(database, f'SHOW FIELD KEYS FROM "{name}"'),
            "points": influx.query(database, f'SELECT * FROM "{name}"'),
        }
        for name in names
    }

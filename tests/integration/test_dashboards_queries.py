"""Every panel's InfluxQL, expanded as Grafana expands it, run against a real InfluxDB seeded with a known history.

The history is written as the gateway writes it (`gateway.service`'s line for each `copeau.contract.Event`, with
the job context as tags) and as the order service writes `order_progress` (`orders.tracking.progress_line`).
Expected numbers are worked out from the seed below by plain arithmetic, never by running a query.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from copeau.config import InfluxSettings
from copeau.contract import (
    AlarmData,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventContext,
    EventKind,
    MachineState,
    PartData,
    StateData,
)
from copeau.influxql import InfluxQuery
from dashboards import boards
from dashboards.catalogue import LANGUAGES, Texts
from dashboards.generate import board_json
from dashboards.macros import TimeRange, Variable, expand
from gateway.influx import InfluxWriter
from gateway.lineprotocol import event_line
from gateway.service import context_tags
from orders.progress import NS, Progress, compute_progress
from orders.tracking import progress_line
from tests.conftest import Influx

pytestmark = pytest.mark.integration

SITE = "ecole-test"
NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=3)  # the whole history lies inside Grafana's `now-6h` and the 72 h of InfluxDB 3
T0_NS = int(T0.timestamp()) * NS
RANGE = TimeRange("now-6h")
RANGE_S = 6 * 3600

A10 = EventContext(order="CMD-A", operation=10, apprentice="AP-01")
B10 = EventContext(order="CMD-B", operation=10, apprentice="AP-02")
B20 = EventContext(order="CMD-B", operation=20, apprentice="AP-01")


@dataclass(frozen=True)
class Cycle:
    """One cycle of the seed: when, how long, and what the part counter(s) said when it ended."""

    machine: str
    start_s: int  # after T0
    duration_s: float
    completed: bool
    count: int  # parts counted at its end
    good: int | None  # the good-part counter's move at its end; None for a machine without one (Modbus)
    ctx: EventContext | None


CYCLES = [
    # tour-1 (OPC UA, reports quality): 5 parts, the third one scrap.
    *(Cycle("tour-1", 600 * i, d, True, 1, 0 if i == 2 else 1, A10) for i, d in enumerate([100, 110, 95, 120, 105])),
    # tour-2 (OPC UA): one aborted cycle; its good counter moves late (0, 0, then 2): scrap is 3 − 2 = 1.
    Cycle("tour-2", 300, 200, True, 1, 0, B10),
    Cycle("tour-2", 900, 180, False, 0, None, B10),
    Cycle("tour-2", 1500, 190, True, 1, 0, B10),
    Cycle("tour-2", 2100, 210, True, 1, 2, B10),
    # fraiseuse-1 (Modbus retrofit, no quality): 2 parts a cycle; the last cycle has no job context.
    Cycle("fraiseuse-1", 1000, 300, True, 2, None, B20),
    Cycle("fraiseuse-1", 2000, 310, True, 2, None, B20),
    Cycle("fraiseuse-1", 5000, 290, True, 2, None, None),
]
RUNNING_NOW = Cycle("tour-2", 6000, 0, False, 0, None, B10)  # started, not ended: tour-2 is running
ALARM = ("fraiseuse-1", 3000, 3600)  # raised at T0+3000 s, cleared at T0+3600 s
MACHINES = ("fraiseuse-1", "tour-1", "tour-2")
# The operations' standard cycle and set-up times, as the orders database holds them.
STANDARD_S = {("CMD-A", "10"): 105.0, ("CMD-B", "10"): 200.0, ("CMD-B", "20"): 300.0}
SETUP_S = {("CMD-A", "10"): 600.0, ("CMD-B", "10"): 900.0, ("CMD-B", "20"): 1200.0}


def seed_events() -> list[Event]:
    """The events a collector would have published for the history above."""
    events: list[Event] = []
    seq: dict[str, int] = defaultdict(int)

    def emit(machine: str, at_s: float, data: Any, ctx: EventContext | None) -> None:
        kind = {StateData: EventKind.STATE, CycleData: EventKind.CYCLE, PartData: EventKind.PART,
                AlarmData: EventKind.ALARM}[type(data)]
        events.append(Event(site=SITE, machine=machine, kind=kind, seq=seq[machine], ts=T0_NS + round(at_s * NS),
                            data=data, ctx=ctx))
        seq[machine] += 1

    for machine in MACHINES:
        emit(machine, 1, StateData(state=MachineState.IDLE), None)
    for c in [*CYCLES, RUNNING_NOW]:
        emit(c.machine, c.start_s, StateData(state=MachineState.RUNNING, previous=MachineState.IDLE), c.ctx)
        emit(c.machine, c.start_s, CycleData(phase=CyclePhase.START), c.ctx)
        if c is RUNNING_NOW:
            continue
        end = c.start_s + c.duration_s
        outcome = CycleOutcome.COMPLETED if c.completed else CycleOutcome.ABORTED
        emit(c.machine, end, CycleData(phase=CyclePhase.END, started_ts=T0_NS + c.start_s * NS,
                                       duration_s=c.duration_s, outcome=outcome), c.ctx)
        if c.count or c.good:
            emit(c.machine, end, PartData(count=c.count, good=c.good), c.ctx)
        emit(c.machine, end, StateData(state=MachineState.IDLE, previous=MachineState.RUNNING), c.ctx)
    machine, raised, cleared = ALARM
    emit(machine, raised, AlarmData(active=True, code="E42", text="Porte ouverte"), None)
    emit(machine, raised, StateData(state=MachineState.ALARM, previous=MachineState.IDLE), None)
    emit(machine, cleared, AlarmData(active=False, code="E42"), None)
    emit(machine, cleared, StateData(state=MachineState.IDLE, previous=MachineState.ALARM), None)
    return events


def seed_progress() -> list[Progress]:
    """order_progress points: an older and a newer one per operation (the boards must show the newer)."""
    hour = 3600 * NS
    out = []

    def standard(order: str, operation: int) -> dict[str, float]:
        return {"standard_cycle_s": STANDARD_S[(order, str(operation))], "setup_s": SETUP_S[(order, str(operation))]}

    for at in (T0_NS + 1800 * NS, T0_NS + 7200 * NS):
        newer = at > T0_NS + 3600 * NS
        out += [
            # CMD-A op 10: due one hour after its ETA on the newer point: at risk (1 h of margin, under 4 h).
            compute_progress(order="CMD-A", operation=10, quantity=10, made=5 if newer else 2, scrap=1 if newer else 0,
                             due_ns=at + 6 * 105 * NS + hour, now_ns=at, **standard("CMD-A", 10)),
            # CMD-B op 10: comfortable (two days of margin).
            compute_progress(order="CMD-B", operation=10, quantity=4, made=3 if newer else 1, scrap=1 if newer else 0,
                             due_ns=at + 48 * hour, now_ns=at, **standard("CMD-B", 10)),
            # CMD-B op 20: late (due an hour ago).
            compute_progress(order="CMD-B", operation=20, quantity=8, made=4, scrap=0,
                             due_ns=at - hour, now_ns=at, **standard("CMD-B", 20)),
        ]
    return out


PROGRESS = seed_progress()
LATEST = {(p.order, str(p.operation)): p for p in sorted(PROGRESS, key=lambda p: p.at_ns)}


# --- fixtures and helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(influx: Influx) -> InfluxQuery:
    name = influx.new_database("dash")
    port = int(influx.url.rsplit(":", 1)[1])
    settings = InfluxSettings(host="127.0.0.1", port=port, database=name)
    writer = InfluxWriter(settings)
    lines = [event_line(e, context_tags=context_tags(e)) for e in seed_events()]  # as the gateway writes them
    lines += [progress_line(p, site=SITE) for p in PROGRESS]  # as the order service writes them
    result = writer.write(lines)
    assert not result.rejected, result.rejected
    assert result.stored == len(lines)
    return InfluxQuery(settings)


def all_selected() -> dict[str, Variable]:
    return {name: Variable(all_value=boards.ALL_VALUE) for name in ("site", "machine", "order", "apprentice")}


def run(db: InfluxQuery, query: str, **selected: list[str]) -> list[dict[str, Any]]:
    """Expand `query` as Grafana would (variables on All unless given), run it, and flatten the rows:
    one dict per row with the series' tags and the columns."""
    variables = all_selected()
    for name, values in selected.items():
        variables[name] = Variable(all_value=boards.ALL_VALUE, selected=tuple(values))
    q = expand(query, time_range=RANGE, now=NOW, interval="1m", interval_ms=60_000, variables=variables)
    rows = []
    for series in db.series(q):
        for values in series.get("values", []):
            rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))})
    return rows


def by(rows: list[dict[str, Any]], tag: str, column: str) -> dict[str, Any]:
    return {row[tag]: row[column] for row in rows}


def completed(machine: str | None = None) -> list[Cycle]:
    return [c for c in CYCLES if c.completed and (machine is None or c.machine == machine)]


def key_of(c: Cycle, tag: str) -> str:
    value = getattr(c.ctx, tag, None) if c.ctx is not None else None
    return "" if value is None else str(value)


def scrap_pct(cycles: list[Cycle]) -> float:
    with_good = [c for c in cycles if c.good is not None]
    made = sum(c.count for c in with_good)
    return (made - sum(c.good or 0 for c in with_good)) / made * 100


# --- every query runs ----------------------------------------------------------------------------------------------


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for lang in LANGUAGES:
        for name in boards.BOARDS:
            for panel in board_json(name, lang)["panels"]:
                for target in panel.get("targets", []):
                    if "query" in target:
                        out.append((f"{lang}/{name}#{panel['id']}{target['refId']}", target["query"], panel["title"]))
    return out


def test_every_panel_query_runs_on_real_influxdb(db: InfluxQuery) -> None:
    queries = panel_queries()
    assert len(queries) > 40
    answered = 0
    for where, query, title in queries:
        rows = run(db, query)  # raises StoreError with InfluxDB's message if the query fails
        answered += bool(rows)
        assert rows, f"{where} ({title}) returned nothing for the seeded history: {query}"
    assert answered == len(queries)


def test_every_variable_query_runs_and_lists_the_seeded_values(db: InfluxQuery) -> None:
    expected = {
        "site": {SITE},
        "machine": set(MACHINES),
        "order": {"CMD-A", "CMD-B"},
        "apprentice": {"AP-01", "AP-02"},
    }
    for name in boards.BOARDS:
        for variable in board_json(name, "fr")["templating"]["list"]:
            rows = run(db, variable["query"])
            assert {row["value"] for row in rows} == expected[variable["name"]], variable["query"]
    codes = {row["value"] for row in run(db, boards.variables(Texts("fr"))[3].build().query)}  # type: ignore[arg-type]
    assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9-]{1,15}", code) for code in codes)  # pseudonymous codes only


def test_absolute_time_range_expands_to_milliseconds_and_finds_the_same_parts(db: InfluxQuery) -> None:
    absolute = TimeRange(T0 - timedelta(minutes=1), NOW)
    q = expand(boards.Q_PARTS_BY_ORDER, time_range=absolute, now=NOW, interval="1m", interval_ms=60_000,
               variables=all_selected())
    assert f"time >= {int((T0 - timedelta(minutes=1)).timestamp() * 1000)}ms" in q
    assert sum(s["values"][0][1] for s in db.series(q)) == sum(c.count for c in CYCLES)


# --- the numbers on the key panels ---------------------------------------------------------------------------------


def test_live_board_shows_state_job_parts_and_last_cycle(db: InfluxQuery) -> None:
    assert by(run(db, boards.Q_LIVE_STATE), "machine", "state") == {
        "tour-1": "idle", "tour-2": "running", "fraiseuse-1": "idle",
    }
    job = {row["machine"]: (row["order"], row["operation"], row["apprentice"]) for row in run(db, boards.Q_LIVE_JOB)}
    assert job["tour-1"] == ("CMD-A", "10", "AP-01")
    assert job["tour-2"] == ("CMD-B", "10", "AP-02")  # from the cycle that is running now
    assert job["fraiseuse-1"] in {("", "", ""), (None, None, None)}  # its last cycle ran without a job
    assert by(run(db, boards.Q_LIVE_PARTS), "machine", "parts") == {
        m: sum(c.count for c in CYCLES if c.machine == m) for m in MACHINES
    }
    assert by(run(db, boards.Q_LIVE_LAST_CYCLE), "machine", "last_cycle_s") == {
        m: max((c for c in CYCLES if c.machine == m), key=lambda c: c.start_s).duration_s for m in MACHINES
    }


def test_parts_per_order_with_all_and_with_selections(db: InfluxQuery) -> None:
    expected: dict[str, int] = defaultdict(int)
    for c in CYCLES:
        expected[key_of(c, "order")] += c.count
    assert by(run(db, boards.Q_PARTS_BY_ORDER), "order", "parts") == expected  # "" = parts made without a job
    only_ap01 = {o: sum(c.count for c in CYCLES if key_of(c, "order") == o and key_of(c, "apprentice") == "AP-01")
                 for o in ("CMD-A", "CMD-B")}
    assert by(run(db, boards.Q_PARTS_BY_ORDER, apprentice=["AP-01"]), "order", "parts") == only_ap01
    two = run(db, boards.Q_PARTS_BY_ORDER, machine=["tour-1", "tour-2"])  # multi-value: =~ /^(tour-1|tour-2)$/
    assert by(two, "order", "parts") == {"CMD-A": 5, "CMD-B": 3}
    assert by(run(db, boards.Q_PARTS_BY_ORDER, order=["CMD-B"]), "order", "parts") == {"CMD-B": expected["CMD-B"]}


def test_scrap_rate_by_order_machine_and_apprentice(db: InfluxQuery) -> None:
    for query, tag in ((boards.Q_SCRAP_RATE_BY_ORDER, "order"), (boards.Q_SCRAP_RATE_BY_MACHINE, "machine"),
                       (boards.Q_SCRAP_RATE_BY_APPRENTICE, "apprentice")):
        groups: dict[str, list[Cycle]] = defaultdict(list)
        for c in CYCLES:
            if c.good is not None:  # only machines that report quality have a scrap rate
                groups[c.machine if tag == "machine" else key_of(c, tag)].append(c)
        got = by(run(db, query), tag, "scrap_pct")
        assert got == pytest.approx({k: scrap_pct(v) for k, v in groups.items()}), query
    assert by(run(db, boards.Q_SCRAP_RATE_BY_ORDER), "order", "scrap_pct") == pytest.approx(
        {"CMD-A": 20.0, "CMD-B": 100 / 3}
    )
    scrap = {row["order"]: (row["parts"], row["scrap"]) for row in run(db, boards.Q_SCRAP_BY_ORDER)}
    assert scrap == {"CMD-A": (5, 1), "CMD-B": (3, 1)}
    with_good = [c for c in CYCLES if c.good is not None]
    fpy = sum(c.good or 0 for c in with_good) / sum(c.count for c in with_good) * 100
    assert run(db, boards.Q_FIRST_PASS_YIELD)[0]["fpy_pct"] == pytest.approx(fpy)  # 6 good of 8 = 75 %


def test_cycle_time_per_apprentice_and_operation(db: InfluxQuery) -> None:
    rows = run(db, boards.Q_APPRENTICE_CYCLE_TABLE)
    got = {(r["apprentice"], r["order"], r["operation"]): (r["cycles"], r["mean_s"], r["best_s"]) for r in rows}
    expected = {}
    for ctx in (A10, B10, B20):
        durations = [c.duration_s for c in completed() if c.ctx == ctx]
        expected[(ctx.apprentice, ctx.order, str(ctx.operation))] = (
            len(durations), pytest.approx(sum(durations) / len(durations)), min(durations))
    durations = [c.duration_s for c in completed() if c.ctx is None]
    expected[("", "", "")] = (len(durations), pytest.approx(sum(durations) / len(durations)), min(durations))
    assert got == expected


def against_standard(
    rows: list[dict[str, Any]], measured: str, standards: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """What the panel's transformations (`boards._against_standard`) do with the two queries' rows: each row of the
    cycle query gets the standard of its (order, operation) and the ratio; a row with no standard gets neither."""
    by_operation = {(s["order"], s["operation"]): s["standard_cycle_s"] for s in standards}
    out = []
    for row in rows:
        standard = by_operation.get((row["order"], row["operation"]))
        ratio = row[measured] / standard if standard is not None else None
        out.append({**row, "standard_cycle_s": standard, f"{measured}_vs_standard": ratio})
    return out


def test_cycle_time_against_the_standard(db: InfluxQuery) -> None:
    standards = run(db, boards.Q_STANDARD)
    assert {(r["order"], r["operation"]): r["standard_cycle_s"] for r in standards} == STANDARD_S
    # Atelier en direct: the last completed cycle of each machine against the standard of its operation.
    live = against_standard(run(db, boards.Q_LIVE_LAST_COMPLETED), "last_cycle_s", standards)
    got = {r["machine"]: (r["last_cycle_s"], r["standard_cycle_s"], r["last_cycle_s_vs_standard"]) for r in live}
    expected: dict[str, tuple[float, float | None, float | None]] = {}
    for m in MACHINES:
        last = max(completed(m), key=lambda c: c.start_s)
        std = STANDARD_S.get((key_of(last, "order"), key_of(last, "operation")))
        expected[m] = (last.duration_s, std, None if std is None else last.duration_s / std)
    assert set(got) == set(expected)
    for m in MACHINES:
        assert got[m] == pytest.approx(expected[m]), m
    assert got["tour-1"] == pytest.approx((105, 105, 1.0))  # on the standard
    assert got["tour-2"] == pytest.approx((210, 200, 1.05))  # 5 % slower; its aborted 180 s cycle does not count
    assert got["fraiseuse-1"] == (290, None, None)  # made without a job: no standard to compare with

    # Apprentis: mean cycle per apprentice and operation against the standard.
    table = against_standard(run(db, boards.Q_APPRENTICE_CYCLE_TABLE), "mean_s", standards)
    got_table = {(r["apprentice"], r["order"], r["operation"]): r["mean_s_vs_standard"] for r in table
                 if r["order"]}
    expected_table = {}
    for ctx in (A10, B10, B20):
        durations = [c.duration_s for c in completed() if c.ctx == ctx]
        expected_table[(ctx.apprentice, ctx.order, str(ctx.operation))] = (
            sum(durations) / len(durations) / STANDARD_S[(ctx.order, str(ctx.operation))])
    assert got_table == pytest.approx(expected_table)  # AP-01 on CMD-A/10: 106 s for 105 s; on CMD-B/20: 305 for 300

    # Apprentis, over time: each completed cycle in its bucket, per apprentice and operation, beside the standard.
    trend = run(db, boards.Q_APPRENTICE_CYCLE_BY_OPERATION)
    minute = 60 * NS
    got_trend = {(r["apprentice"], r["order"], r["operation"], r["time"]): r["cycle_s"] for r in trend}
    expected_trend = {}
    for c in completed():
        end_ns = T0_NS + round((c.start_s + c.duration_s) * NS)
        expected_trend[(key_of(c, "apprentice"), key_of(c, "order"), key_of(c, "operation"),
                        end_ns // minute * minute)] = c.duration_s  # the seed's cycles are minutes apart
    assert got_trend == pytest.approx(expected_trend)
    lines: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in run(db, boards.Q_STANDARD_TREND):
        lines[(r["order"], r["operation"])].append(r["standard_s"])
    assert lines == {key: [std, std] for key, std in STANDARD_S.items()}  # two progress points per operation


def test_utilisation_and_oee_factors(db: InfluxQuery) -> None:
    running = {m: sum(c.duration_s for c in CYCLES if c.machine == m) for m in MACHINES}
    utilisation = {m: running[m] / RANGE_S * 100 for m in MACHINES}
    assert by(run(db, boards.Q_UTILISATION), "machine", "utilisation_pct") == pytest.approx(utilisation)
    assert by(run(db, boards.Q_OEE_AVAILABILITY), "machine", "availability_pct") == pytest.approx(utilisation)
    performance = {}
    for m in MACHINES:
        done = [c.duration_s for c in completed(m)]
        performance[m] = len(done) * min(done) / sum(done) * 100
    assert by(run(db, boards.Q_OEE_PERFORMANCE), "machine", "performance_pct") == pytest.approx(performance)
    quality = {m: 100 - scrap_pct([c for c in CYCLES if c.machine == m]) for m in ("tour-1", "tour-2")}
    assert by(run(db, boards.Q_OEE_QUALITY), "machine", "quality_pct") == pytest.approx(quality)
    assert by(run(db, boards.Q_ALARMS_RAISED), "machine", "alarms") == {"fraiseuse-1": 1}
    states = [(r["machine"], r["state"]) for r in run(db, boards.Q_STATE_TIMELINE, machine=["fraiseuse-1"])]
    assert ("fraiseuse-1", "alarm") in states
    assert len(states) == 1 + 2 * 3 + 2  # first idle, running/idle per cycle, alarm/idle


def test_order_progress_eta_delay_and_late_orders(db: InfluxQuery) -> None:
    rows = run(db, boards.Q_PROGRESS)
    got = {(r["order"], r["operation"]): r for r in rows}
    assert set(got) == set(LATEST)
    for key, p in LATEST.items():
        row = got[key]
        assert (row["made"], row["good"], row["scrap"], row["quantity"], row["remaining"]) == (
            p.made, p.good, p.scrap, p.quantity, p.remaining)
        assert row["progress_pct"] == pytest.approx(p.good / p.quantity * 100)
        assert row["eta"] == pytest.approx(p.eta_ns / 1e6)
        assert row["due"] == pytest.approx(p.due_ns / 1e6)
        assert row["delay_s"] == pytest.approx(p.delay_s)
    flagged = {(r["order"], r["operation"]) for r in run(db, boards.Q_DELAY)
               if r["delay_s"] > -boards.AT_RISK_MARGIN_S}
    assert flagged == {("CMD-A", "10"), ("CMD-B", "20")}  # CMD-A at risk (1 h margin), CMD-B/20 late
    assert LATEST[("CMD-B", "20")].late
    assert not LATEST[("CMD-A", "10")].late

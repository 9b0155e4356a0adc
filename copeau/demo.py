"""`copeau demo`: a simulated workshop, end to end, in one process.

Simulated machines (Modbus retrofit mills, OPC UA lathes and mill) → collector → MQTT (managed mosquitto) →
gateway → InfluxDB (managed influxd).
Every few seconds it prints, per machine, what InfluxDB holds (state, parts, last cycle time), and the
InfluxQL that gives the same numbers. On stop (Ctrl-C, SIGTERM or DEMO_SECONDS) it lets the simulated
machines finish the cycle in progress, lets every part reach InfluxDB, and compares InfluxDB with the
simulators' ground truth (`<state_dir>/truth/*.jsonl`). The exit code says whether they match.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from collectors.runner import Collector
from copeau.config import Workshop
from copeau.i18n import t
from copeau.influxql import InfluxQuery
from gateway.service import Gateway
from simulators.groundtruth import read_truth, truth_path
from simulators.workshop import SimulatedWorkshop
from web.demo import DemoWebService

SUMMARY_EVERY_S = 5.0


def _rfc3339(ts_ns: int) -> str:
    """Exact to the nanosecond: a run that starts right after another must not count the other's last part."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def summary_queries(site: str, since_ns: int) -> dict[str, str]:
    """The InfluxQL behind the live summary (printed for the user, run as is)."""
    since = _rfc3339(since_ns)
    where = f"\"site\" = '{site}' AND time >= '{since}'"
    return {
        "parts": f'SELECT sum("count") FROM "part" WHERE {where} GROUP BY "machine"',
        "good": f'SELECT sum("good") FROM "part" WHERE {where} GROUP BY "machine"',
        "state": f'SELECT last("state") FROM "state" WHERE "site" = \'{site}\' GROUP BY "machine"',
        "cycle": f'SELECT last("duration_s") FROM "cycle" WHERE {where} AND "phase" = \'end\' GROUP BY "machine"',
    }


async def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


class Demo:
    def __init__(self, workshop: Workshop) -> None:
        self.workshop = workshop
        self.machines = [m for m in workshop.machines if m.simulation is not None]
        self.influx = InfluxQuery(workshop.influxdb)
        self.started_ns = time.time_ns()
        self.queries = summary_queries(workshop.site.id, self.started_ns)

    def stored_parts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.influx.by_tag(self.queries["parts"], "machine").items()}

    def print_summary(self) -> None:
        parts = self.stored_parts()
        good = self.influx.by_tag(self.queries["good"], "machine")
        states = self.influx.by_tag(self.queries["state"], "machine")
        cycles = self.influx.by_tag(self.queries["cycle"], "machine")
        now = datetime.now().strftime("%H:%M:%S")
        print(
            t(
                "demo.table_header",
                time=now,
                machine=t("demo.col.machine"),
                protocol=t("demo.col.protocol"),
                state=t("demo.col.state"),
                parts=t("demo.col.parts"),
                scrap=t("demo.col.scrap"),
                cycle=t("demo.col.cycle"),
            )
        )
        for m in self.machines:
            state = states.get(m.id)
            cycle = cycles.get(m.id)
            made = parts.get(m.id, 0)
            # Scrap is known only where the machine reports quality (OPC UA PartsGood).
            scrap = "—" if m.id not in good else str(made - int(good[m.id]))
            print(
                t(
                    "demo.table_header",
                    time=" " * len(now),
                    machine=m.id,
                    protocol="OPC UA" if m.protocol == "opcua" else "Modbus",
                    state=t(f"state.{state}") if state else t("state.unknown"),
                    parts=made,
                    scrap=scrap,
                    cycle=f"{cycle:.1f} s" if cycle is not None else "—",
                )
            )
        print(flush=True)


async def run_demo(
    workshop: Workshop, *, seconds: float | None, until: Callable[[asyncio.Event, float | None], Awaitable[None]]
) -> bool:
    """Run the demo until a signal or `seconds`; return True when InfluxDB matches the ground truth."""
    demo = Demo(workshop)
    print(t("demo.header", site=workshop.site.name, machines=len(demo.machines)))
    print(t("demo.stop_after", seconds=int(seconds)) if seconds else t("demo.stop_hint"))
    print(t("demo.query_hint", url=workshop.influxdb.url, db=workshop.influxdb.database))
    for q in demo.queries.values():
        print(f"  {q}")
    print(t("demo.curl_hint", url=workshop.influxdb.url, db=workshop.influxdb.database))
    print(flush=True)

    # Each demo run starts a fresh ground truth: the simulated machines start again from their scenario.
    for m in demo.machines:
        truth_path(workshop.state_dir, m.id).unlink(missing_ok=True)

    stop = asyncio.Event()
    await until(stop, seconds)
    # The kiosk service first: simulated apprentices badge in before the machines make their first part, so that
    # every part says for which job it was made.
    web = DemoWebService(workshop)
    await asyncio.to_thread(web.start)
    try:
        return await _run(demo, workshop, web, stop)
    finally:
        await asyncio.to_thread(web.stop)


async def _run(demo: Demo, workshop: Workshop, web: DemoWebService, stop: asyncio.Event) -> bool:
    await asyncio.to_thread(web.badge_in_apprentices)
    for line in web.addresses():
        print(line)
    print(flush=True)
    sims = SimulatedWorkshop(workshop)
    await sims.prepare()  # OPC UA address spaces take 2–3 s to build: before any machine plays
    gateway = Gateway(workshop)
    gateway.start()
    collector = Collector(workshop)
    for m in demo.machines:  # they start their scenario again: last run's counters no longer apply
        collector.outbox.forget_resume_point(m.id)
    collector_stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sims.run(), name="simulators")
            collector_task = tg.create_task(collector.run(collector_stop), name="collector")
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SUMMARY_EVERY_S):
                        await stop.wait()
                if not stop.is_set():
                    demo.print_summary()
            print(t("demo.stopping"), flush=True)
            ok = await _finish(demo, sims, collector, collector_stop)
            await collector_task
            sim_task.cancel()
    finally:
        gateway.stop()
    print(t("demo.done"), flush=True)
    return ok


async def _finish(demo: Demo, sims: SimulatedWorkshop, collector: Collector, collector_stop: asyncio.Event) -> bool:
    """Stop production, let every part reach InfluxDB, then compare with the ground truth."""
    sims.stop_production()
    longest_cycle = max(
        (m.simulation.cycle_s + m.simulation.cycle_jitter_s for m in demo.machines if m.simulation), default=0.0
    )
    await _wait_for(lambda: sims.finished, longest_cycle + 5)
    views = collector.stats.views
    await _wait_for(lambda: all(views[m].counter == sims.counter(m) for m in sims.machine_ids), 15)
    collector_stop.set()
    truths = {m.id: read_truth(truth_path(demo.workshop.state_dir, m.id)) for m in demo.machines}
    await _wait_for(lambda: demo.stored_parts() == {k: v.parts for k, v in truths.items() if v.parts}, 15)
    demo.print_summary()
    stored = demo.stored_parts()
    ok = True
    for m in demo.machines:
        truth = truths[m.id].parts
        got = stored.get(m.id, 0)
        key = "demo.check_ok" if got == truth else "demo.check_bad"
        ok = ok and got == truth
        print(t(key, machine=m.id, stored=got, truth=truth, file=truth_path(demo.workshop.state_dir, m.id)))
    return ok

"""Full-refresh time of the "Atelier en direct" and "Commandes" boards over 90 days of a 20-machine school (issue #7,
item 5): `python -m bench.dashboards [--days 90] [--machines 20] [--runs 7]`.

Theory of operation:

1. Start a private influxd with Copeau's managed configuration (`copeau.services.influxd_process`, which fsyncs
   every write) in a temporary folder, on free loopback ports. One change: snapshot the cache and compact shards
   seconds (not hours) after writes stop, so that the history can settle the way months of history have settled
   on a school's server. The boards are measured twice: *fresh* (right after the bulk write, while influxd may
   still be snapshotting caches and compacting: `settled_at_start` in the results says whether it was) and
   *settled* (every cache snapshotted to TSM files, no compaction running).
2. Write the history (`bench.history`: the points the gateway and the order tracker would have written over
   `--days`, school hours only), timing generation (Python) and writes (InfluxDB) apart, then check that InfluxDB
   holds exactly the points generated (count per measurement).
3. A full refresh of a board, as Grafana does it: its template variables in dependency order (`site`, then
   `machine`, `order`, `apprentice` together, as they all use `$site`), then every panel, each panel's targets one
   after the other (one `/api/ds/query` per panel, whose InfluxQL targets Grafana's backend runs in turn), at most
   `--concurrency` (6, a browser's connections per host) panels at once. Queries are the boards' generated JSON,
   expanded by `dashboards.macros` with the board's default range, "All" on every variable, and the `$__interval`
   Grafana would pick for the panel's width (`grafana_interval`, maxDataPoints = the panel's width in pixels on a
   1920-px screen). Each query is a POST to `/query` with `epoch=ms`, as Grafana sends it.
4. One warm-up refresh, then `--runs` measured ones per board and state: median, min and max of the wall time,
   split into variables and panels. The target is met when the median is within it (every figure of the suite
   is a median over runs); `every_run_within_target` says whether the slowest run was too. Then each panel
   alone (its targets in turn, nothing else running), `--runs` times: the per-panel profile, which names the
   slowest panel and where the time goes.

Results: a table on stdout and bench/results/dashboards.json. Target: ≤ 300 ms per board (issue #7).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3

from bench.history import History
from bench.stats import Summary, summarize
from copeau.config import InfluxSettings
from copeau.services import create_database, free_port, influxd_process
from dashboards.boards import ALL_VALUE
from dashboards.generate import board_json
from dashboards.macros import TimeRange, Variable, expand, grafana_interval
from gateway.influx import InfluxWriter

BOARDS = ("atelier", "commandes")
TARGET_MS = 300.0
SCREEN_PX = 1850  # a 24-column panel on a 1920-px screen, less the margins: Grafana's maxDataPoints is the width
DATABASE = "copeau_bench"
RESULTS = Path(__file__).resolve().parent / "results" / "dashboards.json"
# Settle in seconds what production settles in hours (defaults: 10 min and 4 h).
_SETTLE_CONF = '  cache-snapshot-write-cold-duration = "1s"\n  compact-full-write-cold-duration = "5s"\n'
_VARIABLE_REF = re.compile(r"\$(\w+)")


# --- what a refresh sends ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    panel: str  # panel title, or "$name" for a template variable
    ref: str
    text: str  # expanded, as InfluxDB receives it


@dataclass(frozen=True)
class BoardPlan:
    name: str
    title: str
    since: str
    refresh: str
    variable_stages: list[list[Query]]
    panels: list[tuple[str, list[Query]]]

    @property
    def query_count(self) -> int:
        return sum(len(s) for s in self.variable_stages) + sum(len(q) for _, q in self.panels)


def board_plan(name: str, *, now: datetime, lang: str = "fr") -> BoardPlan:
    """Every query one full refresh of board `name` sends, expanded as Grafana expands it at `now`."""
    board = board_json(name, lang)
    since = board["time"]["from"]
    time_range = TimeRange(since, board["time"]["to"])
    range_ms = time_range.seconds(now=now) * 1000
    variables = {v["name"]: Variable(all_value=v.get("allValue") or ALL_VALUE) for v in board["templating"]["list"]}

    def expanded(query: str, interval: tuple[str, int]) -> str:
        return expand(query, time_range=time_range, now=now, interval=interval[0], interval_ms=interval[1],
                      variables=variables)

    # Variables that use no other variable first, then the ones that do (Grafana's dependency order).
    names = set(variables)
    stages: list[list[Query]] = [[], []]
    for v in board["templating"]["list"]:
        uses = set(_VARIABLE_REF.findall(v["query"])) & names
        stages[1 if uses else 0].append(Query(f"${v['name']}", "", expanded(v["query"], ("1m", 60_000))))
    panels = []
    for panel in board["panels"]:
        targets = [t for t in panel.get("targets", []) if "query" in t]
        if not targets:
            continue
        points = panel.get("maxDataPoints") or round(SCREEN_PX * panel["gridPos"]["w"] / 24)
        interval = grafana_interval(range_ms, points, panel.get("interval"))
        panels.append((panel["title"], [Query(panel["title"], t["refId"], expanded(t["query"], interval))
                                        for t in targets]))
    return BoardPlan(name=name, title=board["title"], since=since, refresh=board.get("refresh", ""),
                     variable_stages=[s for s in stages if s], panels=panels)


# --- running it ----------------------------------------------------------------------------------------------------


class QueryRunner:
    """POSTs InfluxQL to /query as Grafana's data source does; thread-safe, one connection per worker."""

    def __init__(self, url: str, database: str, *, concurrency: int) -> None:
        self.url, self.database = url, database
        self._http = urllib3.PoolManager(maxsize=concurrency, block=True, retries=False,
                                         timeout=urllib3.Timeout(connect=2.0, read=60.0))

    def run(self, query: Query) -> float:
        """Run one query; returns its wall time in ms. Raises RuntimeError if InfluxDB answers an error."""
        start = time.perf_counter()
        resp = self._http.request("POST", f"{self.url}/query",
                                  fields={"db": self.database, "q": query.text, "epoch": "ms"},
                                  encode_multipart=False)
        elapsed = (time.perf_counter() - start) * 1000
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} for {query.panel}{query.ref}: {resp.data[:300]!r}")
        result = resp.json()["results"][0]
        if "error" in result:
            raise RuntimeError(f"InfluxQL error for {query.panel}{query.ref}: {result['error']} in {query.text}")
        return elapsed

    def panel(self, queries: Sequence[Query]) -> float:
        """A panel's targets one after the other (Grafana's backend runs a request's InfluxQL queries in turn)."""
        start = time.perf_counter()
        for q in queries:
            self.run(q)
        return (time.perf_counter() - start) * 1000

    def settled(self) -> bool:
        """No data left in any shard's write cache and no compaction running (`SHOW STATS`)."""
        resp = self._http.request("POST", f"{self.url}/query", fields={"q": "SHOW STATS"}, encode_multipart=False)
        cached = active = 0
        for series in resp.json()["results"][0].get("series", []):
            row = dict(zip(series["columns"], series["values"][0], strict=True))
            if series["name"] == "tsm1_cache":
                cached += int(row.get("memBytes", 0))
            elif series["name"] == "tsm1_engine":
                active += sum(int(v) for k, v in row.items() if k.endswith("CompactionsActive"))
        return cached == 0 and active == 0

    def series(self, q: str) -> list[dict[str, Any]]:
        resp = self._http.request("POST", f"{self.url}/query", fields={"db": self.database, "q": q},
                                  encode_multipart=False)
        return list(resp.json()["results"][0].get("series", []))

    def stored_points(self) -> dict[str, int]:
        """Points per measurement, counted on a field every point of it has."""
        fields = {"state": "seq", "cycle": "seq", "part": "seq", "alarm": "seq", "order_progress": "made"}
        out = {}
        for measurement, name in fields.items():
            found = self.series(f'SELECT count("{name}") FROM "{measurement}"')
            out[measurement] = found[0]["values"][0][1] if found else 0
        return out

    def series_count(self) -> dict[str, int]:
        return {s["name"]: s["values"][0][0] for s in self.series("SHOW SERIES EXACT CARDINALITY")}


@dataclass
class Refresh:
    total_ms: float
    variables_ms: float
    panels_ms: float
    panel_ms: dict[str, float] = field(default_factory=dict)


def full_refresh(plan: BoardPlan, runner: QueryRunner, pool: ThreadPoolExecutor) -> Refresh:
    """Variables stage by stage, then the panels, up to the pool's size at once. Wall times in ms."""
    start = time.perf_counter()
    for stage in plan.variable_stages:
        list(pool.map(runner.run, stage))
    after_variables = time.perf_counter()
    panel_ms = list(pool.map(runner.panel, [queries for _, queries in plan.panels]))
    end = time.perf_counter()
    return Refresh(total_ms=(end - start) * 1000, variables_ms=(after_variables - start) * 1000,
                   panels_ms=(end - after_variables) * 1000,
                   panel_ms={title: ms for (title, _), ms in zip(plan.panels, panel_ms, strict=True)})


def measure_board(plan: BoardPlan, runner: QueryRunner, *, runs: int, concurrency: int) -> dict[str, Any]:
    """A warm-up refresh, `runs` measured full refreshes, then each panel and variable alone `runs` times."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="grafana") as pool:
        full_refresh(plan, runner, pool)  # warm-up: first touch of the shards, connections opened
        refreshes = [full_refresh(plan, runner, pool) for _ in range(runs)]
    solo: dict[str, Summary] = {}
    queries: dict[str, Summary] = {}
    for title, panel_queries in plan.panels:
        solo[title] = summarize(runner.panel(panel_queries) for _ in range(runs))
        for q in panel_queries:
            queries[f"{title} [{q.ref}]"] = summarize(runner.run(q) for _ in range(runs))
    for stage in plan.variable_stages:
        for q in stage:
            solo[q.panel] = summarize(runner.run(q) for _ in range(runs))
    slowest = max((t for t, _ in plan.panels), key=lambda t: solo[t].median)
    total = summarize(r.total_ms for r in refreshes)
    return {
        "board": plan.name, "title": plan.title, "range": plan.since, "refresh": plan.refresh,
        "queries_per_refresh": plan.query_count, "runs": runs,
        "full_refresh_ms": total.as_dict(),
        "variables_ms": summarize(r.variables_ms for r in refreshes).as_dict(),
        "panels_ms": summarize(r.panels_ms for r in refreshes).as_dict(),
        "slowest_panel": {"title": slowest, "solo_ms": solo[slowest].as_dict()},
        "solo_ms": {k: v.as_dict() for k, v in solo.items()},
        "query_ms": {k: v.as_dict() for k, v in queries.items()},
        "queries": {f"{q.panel} [{q.ref}]": q.text for s in plan.variable_stages for q in s}
        | {f"{t} [{q.ref}]": q.text for t, qs in plan.panels for q in qs},
        "meets_target": total.median <= TARGET_MS,  # figures are medians over runs (issue #7)
        "every_run_within_target": total.max <= TARGET_MS,
    }


# --- the server ----------------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Poll `predicate` until true; returns the seconds waited. Raises TimeoutError naming `what`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - start


def write_history(history: History, writer: InfluxWriter) -> dict[str, float]:
    """Write every batch; returns the seconds spent generating and writing."""
    generating = writing = 0.0
    batches = iter(history.batches())
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        generating += time.perf_counter() - start
        if batch is None:
            break
        start = time.perf_counter()
        result = writer.write(batch)
        writing += time.perf_counter() - start
        if result.rejected:
            raise RuntimeError(f"InfluxDB refused {len(result.rejected)} lines, e.g. {result.rejected[0]}")
    return {"generation_s": round(generating, 2), "write_s": round(writing, 2)}


def host_facts() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"cpu": model, "cores": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
            "system": platform.platform()}


# --- the whole benchmark -------------------------------------------------------------------------------------------


def load_history(history: History, url: str, runner: QueryRunner) -> dict[str, Any]:
    """Write the history and check that InfluxDB holds exactly the points generated; returns what was written."""
    port = int(url.rsplit(":", 1)[1])
    timing = write_history(history, InfluxWriter(InfluxSettings(host="127.0.0.1", port=port, database=DATABASE)))
    generated = history.summary()
    points = generated["points"]
    assert isinstance(points, dict)
    stored = runner.stored_points()
    if {m: stored[m] for m in points} != points:
        raise RuntimeError(f"InfluxDB holds {stored}, not the {points} points generated")
    series = runner.series_count()
    total = int(generated["points_total"])  # type: ignore[call-overload]
    return generated | timing | {"series": series, "series_total": sum(series.values()),
                                 "points_per_s_written": round(total / max(timing["write_s"], 1e-9))}


def measure(runner: QueryRunner, *, runs: int, concurrency: int) -> dict[str, list[dict[str, Any]]]:
    """Both boards, fresh from the bulk write, then once influxd has settled."""
    results: dict[str, list[dict[str, Any]]] = {}
    for state in ("fresh", "settled"):
        if state == "settled":
            waited = wait_until(runner.settled, timeout_s=600, what="influxd settling")
            print(f"  settled (caches snapshotted, compactions done) {waited:.0f} s later", flush=True)
        now = datetime.now(UTC)
        quiet = runner.settled()
        results[state] = [measure_board(board_plan(name, now=now), runner, runs=runs, concurrency=concurrency)
                          | {"settled_at_start": quiet} for name in BOARDS]
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=90, help="days of history (default 90)")
    parser.add_argument("--machines", type=int, default=20, help="machines in the school (default 20)")
    parser.add_argument("--runs", type=int, default=7, help="measured refreshes per board and state (default 7)")
    parser.add_argument("--concurrency", type=int, default=6, help="panels in flight at once (default 6)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.concurrency < 1:
        parser.error("--runs and --concurrency must be ≥ 1")

    started = datetime.now(UTC)
    facts = host_facts()
    with tempfile.TemporaryDirectory(prefix="copeau-bench-dash-") as tmp:
        proc = influxd_process(host="127.0.0.1", port=free_port(), rpc_port=free_port(), state_dir=Path(tmp),
                               config_name="bench")
        conf = Path(tmp) / "influxdb" / "influxd.conf"
        conf.write_text(conf.read_text().replace("[data]\n", "[data]\n" + _SETTLE_CONF, 1))
        proc.start()
        try:
            url = f"http://127.0.0.1:{proc.port}"
            create_database(url, DATABASE)
            version = urllib3.request("GET", f"{url}/ping").headers.get("X-Influxdb-Version", "?")
            runner = QueryRunner(url, DATABASE, concurrency=args.concurrency)
            print(f"Generating and writing {args.days} days of history for {args.machines} machines…", flush=True)
            history = load_history(History(days=args.days, machines=args.machines, now_ns=time.time_ns(),
                                           seed=args.seed), url, runner)
            print(f"  {history['points_total']:,} points "
                  f"({', '.join(f'{k} {v:,}' for k, v in history['points'].items())}), {history['series_total']:,} "
                  f"series; generated in {history['generation_s']:.1f} s, written in {history['write_s']:.1f} s "
                  f"({history['points_per_s_written']:,} points/s); InfluxDB {version} holds exactly these.",
                  flush=True)
            results = measure(runner, runs=args.runs, concurrency=args.concurrency)
        finally:
            proc.stop()

    report = {
        "benchmark": "dashboards full refresh (issue #7, item 5)",
        "date": started.isoformat(timespec="seconds"),
        "command": "python -m bench.dashboards " + " ".join(sys.argv[1:] if argv is None else argv),
        "host": facts | {"load_average_end": os.getloadavg()},
        "influxdb": version,
        "target_ms": TARGET_MS,
        "concurrency": args.concurrency,
        "history": history,
        "results": results,
        "meets_target": all(b["meets_target"] for bs in results.values() for b in bs),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_table(report)
    print(f"\nJSON: {args.output}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    def ms(s: dict[str, float]) -> str:
        return Summary(median=s["median"], min=s["min"], max=s["max"], n=int(s["n"])).text("{:,.0f}")

    print(f"\nDashboards, full refresh, {report['history']['days']} days × {report['history']['machines']} machines "
          f"({report['history']['points_total']:,} points); ≤ {report['concurrency']} panels at once; "
          f"{report['date']}; target ≤ {report['target_ms']:.0f} ms")
    header = (f"{'state':8} {'board':22} {'range':7} {'refresh':7} {'queries':>7}  {'full refresh ms':>18}  "
              f"{'variables ms':>14}  {'panels ms':>14}  slowest panel alone (ms)")
    print(header)
    print("-" * len(header))
    for state, boards in report["results"].items():
        for b in boards:
            slow = b["slowest_panel"]
            ok = ("ok" if b["every_run_within_target"] else "ok (median)") if b["meets_target"] else "MISSED"
            print(f"{state:8} {b['title'][:22]:22} {b['range']:7} {b['refresh']:7} {b['queries_per_refresh']:>7}  "
                  f"{ms(b['full_refresh_ms']):>18}  {ms(b['variables_ms']):>14}  {ms(b['panels_ms']):>14}  "
                  f"{slow['title']} {ms(slow['solo_ms'])}  [{ok}]")


if __name__ == "__main__":
    sys.exit(main())

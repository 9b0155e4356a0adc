"""`python -m bench`: the whole benchmark suite of issue #7, a table on stdout, JSON in bench/results/.

Parts (`--only` takes a comma-separated list of them):

- `gateway`   gateway throughput beside the raw broker pipe, and the gateway's peak RSS (items 1 and 3)
- `shared`    two gateways on one MQTT 5 shared subscription (`gateway.shared_group`) beside one gateway and the
              raw pipe (saturated rates)
- `latency`   publish → queryable in InfluxDB, p50/p99 at 100 and 1,000 msg/s; live board if it exists (item 2)
- `modbus`    Modbus machines one collector polls at 1 Hz without missing an interval; its CPU and RSS (items 3, 4)
- `opcua`     OPC UA machines one collector follows by subscription; its CPU (item 4)
- `profile`   py-spy profile of the gateway at saturation
- `dashboards` full refresh of two Grafana boards over 90 days (item 5, bench/dashboards.py)

`--quick` shrinks every part (about 2 minutes in all, figures indicative only); `--runs N` sets the number of runs
of the gateway and latency parts (default 3; the collector parts measure 3 windows per step).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.collector import CollectorSettings, run_modbus, run_opcua
from bench.gateway import ThroughputSettings, run_shared, run_throughput
from bench.latency import LatencySettings, run_latency
from bench.live import run_live
from bench.profile import profile_gateway
from bench.report import table
from bench.stack import Stack, machine_info

PARTS = ("gateway", "shared", "latency", "modbus", "opcua", "profile", "dashboards")
RESULTS = Path(__file__).resolve().parent / "results"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "gateway": ThroughputSettings(volume=50_000, step_s=3.0, fractions=(1.0, 1.1)),
            "latency": LatencySettings(seconds=4.0),
            "collector": CollectorSettings(modbus_steps=(50, 200), opcua_steps=(25,), windows=3, window_s=4.0,
                                           modbus_sim_processes=2),
            "profile_volume": 50_000,
            "dashboards": ["--days", "7", "--runs", "5"],
        }
    return {
        "gateway": ThroughputSettings(volume=100_000, step_s=4.0),
        "latency": LatencySettings(seconds=6.0),
        "collector": CollectorSettings(modbus_steps=(50, 200, 500, 1000), opcua_steps=(50, 100, 200), windows=3,
                                       window_s=5.0),
        "profile_volume": 100_000,
        "dashboards": [],
    }


def _cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small volumes and short windows (about 2 minutes)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {', '.join(PARTS)}")
    parser.add_argument("--runs", type=int, default=3, help="runs of the gateway and latency parts (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown or args.runs < 1:
        parser.error(f"unknown part(s) {unknown}; choose among {', '.join(PARTS)}" if unknown else "--runs ≥ 1")
    settings = _settings(args.quick)
    args.output.mkdir(parents=True, exist_ok=True)

    started = datetime.now(UTC)
    summary: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "runs": args.runs,
        "machine": machine_info(),
        "parts": {},
    }
    print(f"Copeau benchmark, {summary['date']}, {'quick, ' if args.quick else ''}{args.runs} run(s); machine "
          f"{summary['machine'].get('cpu_model', '?')}, {summary['machine']['cpus']} CPU, load average "
          f"{summary['machine']['loadavg_at_start'][0]:.2f}", flush=True)

    def log(text: str) -> None:
        print(text, flush=True)

    jobs: dict[str, Callable[[Stack], dict[str, Any]]] = {
        "gateway": lambda st: run_throughput(st, settings["gateway"], args.runs, log=log),
        "shared": lambda st: run_shared(st, settings["gateway"], args.runs, log=log),
        "latency": lambda st: run_latency(st, settings["latency"], args.runs, log=log)
        | {"live_board": run_live(st, runs=args.runs, quick=args.quick, log=log)},
        "modbus": lambda st: run_modbus(st, settings["collector"], log=log),
        "opcua": lambda st: run_opcua(st, settings["collector"], log=log),
        "profile": lambda st: profile_gateway(st, args.output, volume=settings["profile_volume"], log=log),
    }
    failed = []
    for part in PARTS:
        if part not in only:
            continue
        print(f"\n== {part}", flush=True)
        t0, busy0, when = time.monotonic(), _cpu_busy(), datetime.now(UTC).isoformat(timespec="seconds")
        load0 = os.getloadavg()[0]
        try:
            if part == "dashboards":
                result = _dashboards(settings["dashboards"], args.output)
            else:
                with Stack() as stack:
                    result = jobs[part](stack)
        except (RuntimeError, TimeoutError, OSError) as exc:
            failed.append(part)
            result = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  FAILED: {result['error']}", flush=True)
        busy1 = _cpu_busy()
        result["_meta"] = {
            "date": when,
            "seconds": round(time.monotonic() - t0, 1),
            "loadavg_1min_before": load0,
            "loadavg_1min_after": os.getloadavg()[0],
            "machine_cpu_busy_pct": round(100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1),
        }
        summary["parts"][part] = result
        if part != "dashboards":
            (args.output / f"{part}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"  ({result['_meta']['seconds']:.0f} s, machine CPU busy {result['_meta']['machine_cpu_busy_pct']}"
              f" %)", flush=True)

    _earlier_parts(summary, [p for p in PARTS if p not in only], args.output)
    summary["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    text = table(summary)
    summary["table"] = text
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (args.output / "latest.md").write_text(text + "\n")
    print("\n" + text, flush=True)
    print(f"\nJSON: {args.output}/*.json; table: {args.output / 'latest.md'}; {summary['seconds']:.0f} s in all")
    return 1 if failed else 0


def _earlier_parts(summary: dict[str, Any], parts: list[str], output: Path) -> None:
    """Parts not run this time: show their last results from `output`, marked as such, rather than nothing."""
    for part in parts:
        earlier = output / f"{part}.json"
        if earlier.exists():
            with contextlib.suppress(OSError, ValueError):
                summary["parts"][part] = json.loads(earlier.read_text()) | {"earlier_run": True}


def _dashboards(argv: list[str], output: Path) -> dict[str, Any]:
    """Item 5 lives in bench/dashboards.py (another part of the suite); run it if it is there."""
    if importlib.util.find_spec("bench.dashboards") is None:
        return {"skipped": "bench/dashboards.py is not there"}
    module = importlib.import_module("bench.dashboards")
    target = output / "dashboards.json"
    code = module.main([*argv, "--output", str(target)])
    if code:
        raise RuntimeError(f"bench.dashboards exited with {code}")
    with contextlib.suppress(OSError, ValueError):
        return dict(json.loads(target.read_text()))
    return {"error": f"no results in {target}"}


if __name__ == "__main__":
    sys.exit(main())

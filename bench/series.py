"""What a new InfluxDB series costs: the same events written straight to influxd, with a job context that changes on
every message (a new series each time) or every 1,000 messages of a machine (bench/workload.py).

Theory of operation: the events of `bench.workload.stream` are encoded by the gateway's own encoder (the same lines
the gateway writes), then posted to a fresh database in writes of 5,000 lines, one after the other, as fast as
influxd answers. influxd's CPU time (/proc) over the wall time of the writes gives its cores, and per point its
µs of CPU. No gateway, no broker: this isolates InfluxDB's share. Why it matters: the bench's load gave every
message a new context until 2026-11-28, and then measured InfluxDB's series index more than the gateway.

    .venv/bin/python -m bench.series [--points 200000]
"""

from __future__ import annotations

import argparse
import time

import urllib3

from bench.stack import Stack, cpu_seconds
from bench.workload import stream
from copeau.contract import decode_event_fields
from gateway.lineprotocol import event_fields_ctx_line


def lines(points: int, job_messages: int, prefix: str) -> list[str]:
    return [event_fields_ctx_line(decode_event_fields(m.topic, m.payload))
            for m in stream(prefix, machines=40, count=points, ts0=time.time_ns(), job_messages=job_messages)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    args = parser.parse_args()
    http = urllib3.PoolManager()
    with Stack() as stack:
        for job_messages in (1, 1000):
            body = lines(args.points, job_messages, f"j{job_messages}")
            database = stack.new_database(f"series_{job_messages}")
            writes = ["\n".join(body[i:i + 5000]).encode() for i in range(0, len(body), 5000)]
            pid = stack.pids()["influxd"]
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            for data in writes:
                resp = http.request("POST", f"{stack.influx_url}/write?db={database}&precision=ns", body=data)
                if resp.status != 204:
                    raise SystemExit(f"InfluxDB answered {resp.status}: {resp.data[:200]!r}")
            seconds, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
            stored = stack.count(database)
            if stored != args.points:
                raise SystemExit(f"{stored} points stored of {args.points}")
            print(f"new context every {job_messages:>4} message(s) of a machine: {args.points / seconds:>9,.0f} "
                  f"points/s, influxd {cpu / seconds:.2f} cores, {1e6 * cpu / args.points:.1f} µs of influxd CPU "
                  f"per point ({args.points:,} points stored)")


if __name__ == "__main__":
    main()

"""Item 2 of issue #7: latency from publish to "point queryable in InfluxDB", p50 and p99, at 100 and 1,000 msg/s.

Theory of operation: one paced publisher process sends every message of one machine at the set rate and notes when
each was written to its socket (monotonic clock, shared by every process on the machine). The gateway writes to
InfluxDB through a transparent tap (bench/tap.py) that notes when InfluxDB answered 204 to each write and what the
write held. InfluxDB 1.x answers 204 once the points are in its WAL and its in-memory cache, which queries read: a
point is queryable from that moment. A message's latency is the first 204 whose write holds its `seq`, minus the
moment it was published; every message is measured (600 and 6,000 per run), to the microsecond.

Why not a query loop: asking InfluxDB for the newest point often enough for a millisecond resolution kept influxd
busy with hundreds of queries a second, slowing the very writes being timed (the first version of this benchmark did
that). The tap costs InfluxDB nothing; it adds one loopback hop to each write, included in the figures. After each
run the bench checks with one query that every message is indeed stored.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.gateway import GatewayUnderTest
from bench.publisher import PublisherGroup, PublishJob
from bench.stack import Stack, wait_until
from bench.stats import percentile, summarize
from bench.tap import WriteTap

_SEQ = re.compile(rb"[ ,]seq=(\d+)i")


@dataclass(frozen=True)
class LatencySettings:
    rates: tuple[int, ...] = (100, 1000)
    seconds: float = 10.0


@dataclass
class LatencyRun:
    rate: int
    messages: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    missing: int  # published but never acknowledged by InfluxDB
    stored: int  # found by a query afterwards


def acknowledged(writes: list[tuple[int, bytes]], machine: str) -> dict[int, int]:
    """{seq: monotonic ns of the first 204 whose write held it} for the lines of `machine`."""
    tag = f",machine={machine},".encode()
    tag_last = f",machine={machine} ".encode()
    out: dict[int, int] = {}
    for answered, body in writes:
        for line in body.split(b"\n"):
            if tag in line or tag_last in line:
                m = _SEQ.search(line, line.find(b" "))
                if m:
                    out.setdefault(int(m.group(1)), answered)
    return out


def measure(gw: GatewayUnderTest, tap: WriteTap, tag: str, rate: int, settings: LatencySettings) -> LatencyRun:
    count = int(rate * settings.seconds)
    job = PublishJob("127.0.0.1", gw.stack.mqtt_port, f"pub-{tag}", tag, 1, count, time.time_ns(), rate=rate,
                     step_ns=int(1e9 / rate), end_marker=False, record_times=True, window=1000)
    machine = f"{tag}-00"
    with PublisherGroup([job]) as group:
        group.go()
        [result] = group.results(timeout_s=settings.seconds * 5 + 60)
    with_seq: dict[int, int] = {}

    def all_acknowledged() -> bool:
        with_seq.update(acknowledged(tap.writes, machine))
        return len(with_seq) >= count

    with contextlib.suppress(TimeoutError):  # what never came is reported as missing
        wait_until(all_acknowledged, timeout=30, interval=0.1, what=f"InfluxDB to acknowledge {count} messages")
    latencies = [(with_seq[i] - sent) / 1e6 for i, sent in enumerate(result.send_ns) if i in with_seq]
    if not latencies:
        raise RuntimeError(f"no message of {machine} was written to InfluxDB")
    stored = gw.stack.count(gw.database, where=f"\"machine\" = '{machine}'")
    return LatencyRun(rate=rate, messages=count, p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
                      max_ms=max(latencies), missing=count - len(latencies), stored=stored)


def run_latency(stack: Stack, settings: LatencySettings, runs: int, *, log: Any = print) -> dict[str, Any]:
    per_rate: dict[int, list[LatencyRun]] = {rate: [] for rate in settings.rates}
    for run in range(1, runs + 1):
        with WriteTap(stack.influx_port) as tap, GatewayUnderTest(stack, f"lat{run}", influx_port=tap.port) as gw:
            for rate in settings.rates:
                r = measure(gw, tap, f"l{run}r{rate}", rate, settings)
                per_rate[rate].append(r)
                log(f"  run {run}/{runs} at {rate:>5} msg/s: p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
                    f"max {r.max_ms:.1f} ms, missing {r.missing}, stored {r.stored}/{r.messages}")
    out: dict[str, Any] = {"settings": asdict(settings), "method": "publish → InfluxDB's 204 (tap)"}
    for rate, rs in per_rate.items():
        out[str(rate)] = {
            "p50_ms": summarize(r.p50_ms for r in rs).as_dict(),
            "p99_ms": summarize(r.p99_ms for r in rs).as_dict(),
            "max_ms": summarize(r.max_ms for r in rs).as_dict(),
            "missing": sum(r.missing for r in rs),
            "not_stored": sum(r.messages - r.stored for r in rs),
            "runs": [asdict(r) for r in rs],
        }
    return out

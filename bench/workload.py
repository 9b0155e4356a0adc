"""The messages the benchmark publishes: real Copeau events (copeau/contract.py), with a job context, about 200 bytes.

Theory of operation: a stream is a round-robin over machines; each machine plays state → cycle start → cycle end
→ part, over and over, with its own sequence number, so every message is a distinct InfluxDB point (measurement,
tags, time) and the count in InfluxDB at the end must equal the count published. The JSON is produced by string
templates, because validating 500,000 pydantic models would take longer than publishing them; a unit test checks
that each template gives exactly the bytes `Event.encode()` gives (tests/unit/test_bench_wire.py).

Job contexts: a machine keeps the same job (order, operation, apprentice code) for `job_messages` messages, then
moves to the next, as on the shop floor, where a job changes at a badge scan, after hours. Every distinct context is
a new series in InfluxDB (the context is tags), which InfluxDB 1.6 pays for in its index: with `job_messages=1`, a
new job on every message, influxd spends 12.8 µs of CPU per point against 5.6 µs (`python -m bench.series`,
BENCHMARKS.md), and the benchmark measured InfluxDB's index more than the gateway. The gateway part still measures
that case once per run, as the worst case.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

SITE = "ecole-bench"
KINDS = ("state", "cycle", "cycle", "part")  # a machine's rhythm: one of each per cycle (cycle = start, end)
_CTX = '"ctx":{"order":"CMD-2026-%03d","operation":%d,"apprentice":"AP-%04d"}'
_HEAD = '{"v":1,"site":"%s","machine":"%s","kind":"%s","seq":%d,"ts":%d,"data":'
_DATA = (
    '{"state":"running","previous":"idle"}',
    '{"phase":"start"}',
    '{"phase":"end","started_ts":%d,"duration_s":%s,"outcome":"completed"}',
    '{"count":1,"counter":%d,"reset":false,"wrapped":false,"rebuilt":false}',
)
CYCLE_NS = 6_250_000_000  # the duration written in cycle end events (6.25 s)
JOB_MESSAGES = 1000  # messages of one machine in one job (250 parts), then its next job


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    machine: str
    seq: int
    ts: int


def machine_name(stream: str, i: int) -> str:
    return f"{stream}-{i:02d}"


def event_message(machine: str, seq: int, ts: int, *, site: str = SITE, job_messages: int = JOB_MESSAGES) -> Message:
    """Message number `seq` of `machine`: its kind follows the rhythm above, its time is `ts` (ns), its job
    number `seq // job_messages`."""
    phase = seq % len(KINDS)
    kind = KINDS[phase]
    n = seq // len(KINDS)
    if phase == 2:
        data = _DATA[2] % (ts - CYCLE_NS, repr(CYCLE_NS / 1e9))
    elif phase == 3:
        data = _DATA[3] % (n + 1)
    else:
        data = _DATA[phase]
    job = seq // job_messages
    ctx = _CTX % (job % 40 + 1, 10 * (job % 3 + 1), job % 50 + 1)
    payload = (_HEAD % (site, machine, kind, seq, ts) + data + "," + ctx + "}").encode()
    return Message(f"copeau/v1/{site}/{machine}/{kind}", payload, machine, seq, ts)


def stream(prefix: str, *, machines: int, count: int, ts0: int, step_ns: int = 1_000,
           job_messages: int = JOB_MESSAGES) -> Iterator[Message]:
    """`count` messages round-robin over `machines` machines named `<prefix>-NN`, times `ts0 + k*step_ns`."""
    names = [machine_name(prefix, i) for i in range(machines)]
    for k in range(count):
        m = k % machines
        seq = k // machines
        yield event_message(names[m], seq, ts0 + k * step_ns, job_messages=job_messages)

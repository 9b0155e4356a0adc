"""Publisher processes: pre-encoded QoS 1 PUBLISH packets written to a socket, as fast as allowed or at a set rate.

Theory of operation: each publisher is its own process (so that it has a core's worth of Python to itself), with
its own MQTT connection and its own machines. It encodes every packet first, says it is ready, and waits for the
common start signal, so that all publishers start together and the encoding is not timed. It then writes packets
in chunks while fewer than `window` are unacknowledged, and counts the broker's PUBACKs. With `rate` > 0 it
sends message k at start + k/rate (a token bucket, checked at each wake-up), never ahead of time.

A publisher reports, in monotonic nanoseconds (the same clock in every process of the machine), when it sent its
first and last message and when the last PUBACK came back; with `record_times` also when each message was written
to the socket (for latency).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from bench.mqttwire import PubackCounter, connack_ok, connect_packet, publish_packet
from bench.workload import JOB_MESSAGES, Message, event_message, machine_name, stream

_SPAWN = mp.get_context("spawn")  # a fresh interpreter: nothing inherited from the bench's own threads


@dataclass(frozen=True)
class PublishJob:
    """What one publisher process publishes."""

    host: str
    port: int
    client_id: str
    prefix: str  # its machines are <prefix>-00, <prefix>-01, ...
    machines: int
    count: int
    ts0: int  # time (ns since the epoch) of the first event; the next ones are 1 µs apart unless step_ns says
    rate: float = 0.0  # messages per second; 0 = as fast as the window allows
    window: int = 2000  # unacknowledged messages at most
    chunk: int = 64  # packets per write() when sending as fast as possible
    step_ns: int = 1_000
    end_marker: bool = True  # finish with one part event of machine <prefix>-end (to see the stream's end)
    record_times: bool = False
    # Paced only: send what is due every `tick_s` seconds (one write), rather than each message as soon as it is due
    # (one write, one select() and one TCP segment per message, which costs the publisher and the broker more CPU
    # than the gateway under test at 20,000 msg/s on 2 cores). 0 = each message on its own.
    tick_s: float = 0.0
    job_messages: int = JOB_MESSAGES  # messages of one machine per job context (bench/workload.py)


@dataclass
class PublishResult:
    client_id: str
    sent: int = 0
    acked: int = 0
    first_send_ns: int = 0
    last_send_ns: int = 0
    last_ack_ns: int = 0
    send_ns: list[int] = field(default_factory=list)
    error: str | None = None


def end_marker_machine(prefix: str) -> str:
    return f"{prefix}-end"


def job_messages(job: PublishJob) -> list[Message]:
    msgs = list(stream(job.prefix, machines=job.machines, count=job.count, ts0=job.ts0, step_ns=job.step_ns,
                       job_messages=job.job_messages))
    if job.end_marker:
        msgs.append(event_message(end_marker_machine(job.prefix), 3, job.ts0 + job.count * job.step_ns))
    return msgs


def _publish(job: PublishJob, ready: Any, go: Any, results: Any) -> None:
    result = PublishResult(job.client_id)
    try:
        packets = [publish_packet(m.topic, m.payload, i % 0xFFFF + 1) for i, m in enumerate(job_messages(job))]
        sock = socket.create_connection((job.host, job.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(connect_packet(job.client_id))
        connack = sock.recv(4)
        if not connack_ok(connack):
            raise ConnectionError(f"broker refused {job.client_id}: {connack!r}")
        ready.put(job.client_id)
        go.wait()
        _send_all(sock, packets, job, result)
        sock.close()
    except (OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        ready.put(job.client_id)  # do not leave the others waiting
    results.put(result)


def _send_all(sock: socket.socket, packets: list[bytes], job: PublishJob, result: PublishResult) -> None:
    n = len(packets)
    window = min(job.window, 0xFFFE)  # a packet id is reused only after its PUBACK
    acks = PubackCounter()
    record = result.send_ns if job.record_times else None
    t0 = time.monotonic_ns()
    result.first_send_ns = t0
    sent = 0
    while acks.count < n:
        now = time.monotonic_ns()
        due = n if job.rate <= 0 else min(n, int((now - t0) * job.rate / 1e9) + 1)
        room = min(due, acks.count + window) - sent
        ticked = not job.tick_s or due >= n or now - result.last_send_ns >= job.tick_s * 1e9
        if room > 0 and ticked:
            take = room if job.rate > 0 else min(room, job.chunk)
            sock.sendall(b"".join(packets[sent : sent + take]))
            done = time.monotonic_ns()
            if record is not None:
                record.extend([done] * take)
            sent += take
            result.last_send_ns = done
            wait = 0.0  # look for PUBACKs without waiting, then send again
        elif sent < n and job.rate > 0 and acks.count + window > sent:
            next_due_ns = t0 + int(sent * 1e9 / job.rate)  # sent is the index of the next message
            wait = max(0.0, (next_due_ns - time.monotonic_ns()) / 1e9,
                       (result.last_send_ns + job.tick_s * 1e9 - time.monotonic_ns()) / 1e9 if job.tick_s else 0.0)
        else:
            wait = 1.0  # the window is full, or all is sent: only PUBACKs can come
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("broker closed the connection")
            if acks.feed(data):
                result.last_ack_ns = time.monotonic_ns()
    result.sent = sent
    result.acked = acks.count


def publish_now(host: str, port: int, client_id: str, messages: list[Message]) -> PublishResult:
    """Publish a few messages from this process and return once the broker has acknowledged them all."""
    job = PublishJob(host, port, client_id, prefix="", machines=1, count=len(messages), ts0=0, end_marker=False)
    result = PublishResult(client_id)
    packets = [publish_packet(m.topic, m.payload, i % 0xFFFF + 1) for i, m in enumerate(messages)]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(connect_packet(client_id))
        if not connack_ok(sock.recv(4)):
            raise ConnectionError(f"broker refused {client_id}")
        _send_all(sock, packets, job, result)
    return result


def run_publishers(jobs: list[PublishJob], *, timeout_s: float = 300) -> list[PublishResult]:
    """Start one process per job, release them together once all are connected, wait for all results."""
    with PublisherGroup(jobs) as group:
        group.go()
        return group.results(timeout_s)


class PublisherGroup:
    """Publishers prepared ahead (connected, packets encoded), released with `go()` — for a run that must start
    something else (a subscriber) at the same instant."""

    def __init__(self, jobs: list[PublishJob]) -> None:
        self.jobs = jobs
        self._ready, self._results, self._go = _SPAWN.Queue(), _SPAWN.Queue(), _SPAWN.Event()
        self._procs = [
            _SPAWN.Process(target=_publish, args=(job, self._ready, self._go, self._results), daemon=True)
            for job in jobs
        ]

    def __enter__(self) -> PublisherGroup:
        for p in self._procs:
            p.start()
        deadline = time.monotonic() + 60
        waiting = len(self.jobs)
        while waiting:
            try:
                self._ready.get(timeout=0.5)
                waiting -= 1
            except queue.Empty:
                dead = [p for p in self._procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(
                        f"publisher processes did not start (exit codes {[p.exitcode for p in dead]})"
                    ) from None
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def go(self) -> int:
        """Release the publishers; returns the monotonic time (ns) of the release."""
        t = time.monotonic_ns()
        self._go.set()
        return t

    def results(self, timeout_s: float = 300) -> list[PublishResult]:
        out = [self._results.get(timeout=timeout_s) for _ in self.jobs]
        errors = [r.error for r in out if r.error]
        if errors:
            raise RuntimeError(f"publisher failed: {errors[0]}")
        return out

    def __exit__(self, *_exc: object) -> None:
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()


def machine_names(job: PublishJob) -> list[str]:
    return [machine_name(job.prefix, i) for i in range(job.machines)]

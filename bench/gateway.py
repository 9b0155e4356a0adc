"""Item 1 and 3 of issue #7: the gateway's throughput (with the raw broker pipe beside it), and its peak memory.

Theory of operation — one run, all against the same mosquitto and influxd:

1. **Publisher ceiling.** The publishers publish the volume to a broker with no subscriber: the rate at which the
   broker acknowledges them. Everything below is valid only if this is well above the pipes measured next.
2. **Raw broker pipe.** `mosquitto_sub -q 1 -C N` into /dev/null, its QoS 1 session made beforehand; the
   publishers publish N messages as fast as they can; the pipe's rate is N / (time mosquitto_sub exits − release).
3. **Gateway, saturated.** `copeau gateway` (a subprocess, real contract validation, job-context tags,
   dead-lettering, acknowledgement after InfluxDB's 204) with its persistent session made beforehand and warmed up
   with one message; the same N messages as fast as possible; its rate is N / (time the last point of every
   publisher is queryable − release). The gateway writes in the order it receives (one writer thread, FIFO), and
   each publisher's messages arrive in order, so each publisher's last message (an "end" point) being queryable
   means all of that publisher's are. Then the count in InfluxDB must equal N: anything less is loss.
4. **Gateway, sustained.** Offered rates stepped up around the saturated rate (paced publishers, `step_s` each):
   a step passes when nothing is lost and the last point is queryable within `drain_limit_s` of the last publish
   (a backlog that grows at x % of the rate would leave x % of `step_s` to drain). The sustained rate is the highest
   step that passes with every step below it passing too. When every step passes, the ladder goes on up by 10 %
   until one fails (`max_steps` in all): the saturated rate can be below what the gateway sustains (seen on
   2026-11-28: steps at 1.2 × the saturated rate passed; likely because publishers that do not wait leave the
   broker a backlog to queue, not verified).
5. **Memory.** The gateway's VmHWM (peak RSS) at the end of the run; its CPU time (utime + stime) during 3.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.broker import EVENTS, raw_session, raw_subscriber, v5_session
from bench.publisher import PublisherGroup, PublishJob, PublishResult, publish_now, run_publishers
from bench.stack import CpuMeter, Stack, cpu_seconds, peak_rss_mb, stop_process, wait_until
from bench.stats import highest_passing, ladder, summarize
from bench.workload import JOB_MESSAGES, event_message


@dataclass(frozen=True)
class ThroughputSettings:
    volume: int = 200_000  # messages per saturation measurement
    publishers: int = 2
    machines_per_publisher: int = 20
    step_s: float = 6.0  # duration of each paced step
    fractions: tuple[float, ...] = (0.9, 1.0, 1.1, 1.2)  # paced steps, as fractions of the saturated rate
    drain_limit_s: float = 0.5
    tick_s: float = 0.002  # paced publishers send what is due every 2 ms (bench/publisher.py)
    max_steps: int = 10  # paced steps per run at most (the ladder goes on up while steps pass)


@dataclass
class Step:
    offered: float  # msg/s asked of the publishers
    achieved: float  # msg/s the publishers really sent
    drain_s: float  # last publish → last point queryable
    lost: int
    passed: bool


@dataclass
class ThroughputRun:
    publisher_ceiling: float = 0.0
    raw_pipe: float = 0.0
    gateway_saturated: float = 0.0
    gateway_lost: int = 0
    gateway_cpu_cores: float = 0.0  # CPU time / wall time during the saturated measurement
    # Cores used by each process during the raw pipe and the gateway's saturated measurement (bench/stack.py CpuMeter)
    raw_pipe_cpu: dict[str, float] = field(default_factory=dict)
    saturated_cpu: dict[str, float] = field(default_factory=dict)
    # The worst case for InfluxDB (bench/workload.py): a new job context, so a new series, on every message.
    new_series_saturated: float = 0.0
    new_series_lost: int = 0
    gateway_peak_rss_mib: float = 0.0
    dead_letters: int = 0
    sustained: float | None = None
    steps: list[Step] = field(default_factory=list)


class GatewayUnderTest:
    """One `copeau gateway` process with a fresh database and session, warmed up, for one run."""

    def __init__(self, stack: Stack, name: str, *, influx_port: int | None = None) -> None:
        """`influx_port`: where the gateway writes, when not straight to the stack's influxd (bench/tap.py)."""
        self.stack = stack
        self.name = name
        self.database = stack.new_database(name.replace("-", "_"))
        self.client_id = f"bench-{name}"
        self.config = stack.workshop_yaml(name, database=self.database, gateway={"client_id": self.client_id},
                                          influx_port=influx_port)
        self.proc: Any = None
        self._published = 0

    def __enter__(self) -> GatewayUnderTest:
        v5_session(self.stack.mqtt_port, self.client_id, subscribe=EVENTS, expiry_s=3600)
        self.proc = self.stack.copeau("gateway", self.config)
        warm = event_message("warmup-00", 3, time.time_ns())
        publish_now("127.0.0.1", self.stack.mqtt_port, f"{self.client_id}-warmup", [warm])
        self._published = 1
        wait_until(lambda: self.stack.count(self.database, '"part"', "\"machine\" = 'warmup-00'") == 1,
                   timeout=60, what=f"the gateway {self.name} to store its first point")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            v5_session(self.stack.mqtt_port, self.client_id, subscribe=None, expiry_s=0)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def end_points(self, prefixes: list[str]) -> int:
        regex = "|".join(f"^{p}-end$" for p in prefixes)
        return self.stack.count(self.database, '"part"', f'"machine" =~ /{regex}/')

    def stored(self, prefixes: list[str]) -> int:
        regex = "|".join(f"^{p}-" for p in prefixes)
        return self.stack.count(self.database, where=f'"machine" =~ /{regex}/')

    def dead_letters(self) -> int:
        path = Path(self.config).parent / "deadletter" / "gateway.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0


def _jobs(stack: Stack, tag: str, settings: ThroughputSettings, *, count: int, rate: float = 0.0,
          job_messages: int = JOB_MESSAGES) -> list[PublishJob]:
    n = settings.publishers
    ts0 = time.time_ns()
    return [
        PublishJob("127.0.0.1", stack.mqtt_port, f"pub-{tag}-{i}", f"{tag}p{i}", settings.machines_per_publisher,
                   count // n, ts0, rate=rate / n, window=5000 if rate else 2000, tick_s=settings.tick_s,
                   job_messages=job_messages)
        for i in range(n)
    ]


def _published(jobs: list[PublishJob]) -> int:
    return sum(j.count + (1 if j.end_marker else 0) for j in jobs)


def publisher_ceiling(stack: Stack, tag: str, settings: ThroughputSettings) -> float:
    results = run_publishers(_jobs(stack, tag, settings, count=settings.volume))
    return sum(r.acked for r in results) / _span_s(results)


def _span_s(results: list[PublishResult]) -> float:
    return (max(r.last_ack_ns for r in results) - min(r.first_send_ns for r in results)) / 1e9


def raw_pipe(stack: Stack, tag: str, settings: ThroughputSettings, *, cpu: dict[str, float] | None = None) -> float:
    """The raw pipe's rate; `cpu`, if given, receives the cores each part used meanwhile (mosquitto_sub's from
    the rusage of reaped children: it is the only child that ends during the measurement)."""
    client_id = f"raw-{tag}"
    raw_session(stack.mqtt_port, client_id, subscribe=True)
    jobs = _jobs(stack, tag, settings, count=settings.volume)
    total = _published(jobs)
    try:
        with PublisherGroup(jobs) as group:
            sub = raw_subscriber(stack.mqtt_port, client_id, total)
            meter = CpuMeter({**{k: [v] for k, v in stack.pids().items()}, "publishers": group.pids})
            children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            meter.start()
            released = group.go()
            code = sub.wait(timeout=300)
            done = time.monotonic_ns()
            used = meter.stop()
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            group.results()
        if cpu is not None:
            cpu.update(used)
            cpu["mosquitto_sub"] = round((children1.ru_utime + children1.ru_stime - children0.ru_utime
                                          - children0.ru_stime) / ((done - released) / 1e9), 3)
        if code != 0:
            raise RuntimeError(f"mosquitto_sub exited with {code}: {sub.stderr.read() if sub.stderr else ''}")
    finally:
        raw_session(stack.mqtt_port, client_id, subscribe=False)
    return total / ((done - released) / 1e9)


def _wait_end(gw: GatewayUnderTest, prefixes: list[str], *, timeout: float) -> int:
    """Poll until every publisher's end point is queryable; returns the monotonic time (ns) it was seen."""
    wait_until(lambda: gw.end_points(prefixes) == len(prefixes), timeout=timeout, interval=0.01,
               what=f"the last point of {len(prefixes)} publishers in InfluxDB")
    return time.monotonic_ns()


def _lost(gw: GatewayUnderTest, prefixes: list[str], expected: int) -> int:
    """Messages published but not stored; waits a moment in case a straggler is still being written."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: gw.stored(prefixes) >= expected, timeout=5, interval=0.2, what="every point")
    return expected - gw.stored(prefixes)


def gateway_saturated(
    gw: GatewayUnderTest, tag: str, settings: ThroughputSettings, *, job_messages: int = JOB_MESSAGES,
    cpu: dict[str, float] | None = None,
) -> tuple[float, int, float]:
    """(rate, lost, CPU cores) for `volume` messages published as fast as possible; `cpu`, if given, receives the
    cores each process used meanwhile (gateway, mosquitto, influxd, publishers)."""
    jobs = _jobs(gw.stack, tag, settings, count=settings.volume, job_messages=job_messages)
    prefixes = [j.prefix for j in jobs]
    total = _published(jobs)
    with PublisherGroup(jobs) as group:
        meter = CpuMeter({"gateway": [gw.pid], **{k: [v] for k, v in gw.stack.pids().items()},
                          "publishers": group.pids})
        cpu0 = cpu_seconds(gw.pid)
        meter.start()
        released = group.go()
        done = _wait_end(gw, prefixes, timeout=60 + settings.volume / 1000)
        cpu1 = cpu_seconds(gw.pid)
        used = meter.stop()
        group.results()
    if cpu is not None:
        cpu.update(used)
    seconds = (done - released) / 1e9
    return total / seconds, _lost(gw, prefixes, total), (cpu1 - cpu0) / seconds


def gateway_step(gw: GatewayUnderTest, tag: str, settings: ThroughputSettings, rate: float) -> Step:
    count = int(rate * settings.step_s)
    jobs = _jobs(gw.stack, tag, settings, count=count, rate=rate)
    prefixes = [j.prefix for j in jobs]
    with PublisherGroup(jobs) as group:
        released = group.go()
        results = group.results(timeout_s=settings.step_s * 10 + 60)
        last_sent = max(r.last_send_ns for r in results)
        done = _wait_end(gw, prefixes, timeout=60 + count / 1000)
    lost = _lost(gw, prefixes, _published(jobs))
    drain = max(0.0, (done - last_sent) / 1e9)
    achieved = sum(r.sent for r in results) / ((last_sent - released) / 1e9)
    return Step(offered=rate, achieved=achieved, drain_s=drain, lost=lost,
                passed=lost == 0 and drain <= settings.drain_limit_s and achieved >= 0.97 * rate)


def _cores(used: dict[str, float]) -> str:
    return ", ".join(f"{name} {cores:.2f}" for name, cores in used.items()) + f" (all {sum(used.values()):.2f})"


def _cpu_summary(per_run: list[dict[str, float]]) -> dict[str, Any]:
    names = {name for used in per_run for name in used}
    out = {name: summarize(used.get(name, 0.0) for used in per_run).as_dict() for name in sorted(names)}
    out["all"] = summarize(sum(used.values()) for used in per_run).as_dict()
    return out


def one_run(stack: Stack, run: int, settings: ThroughputSettings, *, log: Any = print) -> ThroughputRun:
    out = ThroughputRun()
    out.publisher_ceiling = publisher_ceiling(stack, f"c{run}", settings)
    log(f"    publisher ceiling (no subscriber): {out.publisher_ceiling:,.0f} msg/s")
    out.raw_pipe = raw_pipe(stack, f"r{run}", settings, cpu=out.raw_pipe_cpu)
    log(f"    raw pipe (mosquitto_sub -q 1):     {out.raw_pipe:,.0f} msg/s; cores: {_cores(out.raw_pipe_cpu)}")
    with GatewayUnderTest(stack, f"gw{run}") as gw:
        out.gateway_saturated, out.gateway_lost, out.gateway_cpu_cores = gateway_saturated(
            gw, f"g{run}", settings, cpu=out.saturated_cpu)
        log(f"    gateway, saturated:                {out.gateway_saturated:,.0f} msg/s, lost {out.gateway_lost},"
            f" {out.gateway_cpu_cores:.2f} cores")
        log(f"      cores meanwhile: {_cores(out.saturated_cpu)}")
        out.new_series_saturated, out.new_series_lost, cores = gateway_saturated(gw, f"n{run}", settings,
                                                                                 job_messages=1)
        log(f"    gateway, saturated, new series:    {out.new_series_saturated:,.0f} msg/s, lost "
            f"{out.new_series_lost}, {cores:.2f} cores (a new job context on every message)")
        rates = ladder(out.gateway_saturated, settings.fractions)
        # Up from the lowest step until one fails; if even the lowest fails, down until one passes (at most 3).
        lower = [r for r in ladder(out.gateway_saturated, (0.75, 0.6, 0.45)) if r < min(rates, default=0)]
        going_down = False
        while rates:
            rate = rates.pop(0)
            step = gateway_step(gw, f"s{run}x{len(out.steps)}", settings, rate)
            out.steps.append(step)
            log(f"    gateway, paced {rate:>8,.0f} msg/s: sent {step.achieved:,.0f}/s, drained in "
                f"{step.drain_s * 1000:,.0f} ms, lost {step.lost} → {'ok' if step.passed else 'NOT sustained'}")
            if step.passed and going_down:
                break
            if not step.passed and not going_down:
                if len(out.steps) > 1:
                    break
                going_down = True
                rates = sorted(lower, reverse=True)
            elif step.passed and not rates and not going_down and len(out.steps) < settings.max_steps:
                # Every step passed: the saturated rate was below what the gateway sustains (see the docstring),
                # so the ladder goes on up by 10 % until a step fails, rather than report its top as the ceiling.
                rates = ladder(rate, (1.1,))
        out.sustained = highest_passing([(s.offered, s.passed) for s in out.steps])
        out.gateway_peak_rss_mib = peak_rss_mb(gw.pid)
        out.dead_letters = gw.dead_letters()
    return out


def run_throughput(stack: Stack, settings: ThroughputSettings, runs: int, *, log: Any = print) -> dict[str, Any]:
    per_run = []
    for run in range(1, runs + 1):
        log(f"  run {run}/{runs}")
        per_run.append(one_run(stack, run, settings, log=log))
    sustained = [r.sustained or 0.0 for r in per_run]
    ratio = [r.gateway_saturated / r.raw_pipe for r in per_run]
    # The target's ratio: what the gateway sustains against the raw pipe's ceiling (its saturated rate, which is at
    # least what it could sustain: so the ratio is never flattered).
    sustained_ratio = [(r.sustained or 0.0) / r.raw_pipe for r in per_run]
    return {
        "settings": asdict(settings),
        "publisher_ceiling_msg_s": summarize(r.publisher_ceiling for r in per_run).as_dict(),
        "raw_pipe_msg_s": summarize(r.raw_pipe for r in per_run).as_dict(),
        "gateway_saturated_msg_s": summarize(r.gateway_saturated for r in per_run).as_dict(),
        "gateway_sustained_msg_s": summarize(sustained).as_dict(),
        "gateway_vs_raw_pipe": summarize(ratio).as_dict(),
        "gateway_sustained_vs_raw_pipe": summarize(sustained_ratio).as_dict(),
        "gateway_new_series_msg_s": summarize(r.new_series_saturated for r in per_run).as_dict(),
        "gateway_lost": sum(r.gateway_lost + r.new_series_lost for r in per_run)
        + sum(s.lost for r in per_run for s in r.steps),
        "gateway_cpu_cores": summarize(r.gateway_cpu_cores for r in per_run).as_dict(),
        "raw_pipe_cpu_cores": _cpu_summary([r.raw_pipe_cpu for r in per_run]),
        "saturated_cpu_cores": _cpu_summary([r.saturated_cpu for r in per_run]),
        "gateway_peak_rss_mib": summarize(r.gateway_peak_rss_mib for r in per_run).as_dict(),
        "dead_letters": sum(r.dead_letters for r in per_run),
        "runs": [asdict(r) for r in per_run],
    }


@contextlib.contextmanager
def saturated_gateway(stack: Stack, name: str) -> Iterator[GatewayUnderTest]:
    """A warmed-up gateway, for the profiler (bench/profile.py)."""
    with GatewayUnderTest(stack, name) as gw:
        yield gw


# -- several gateways on one shared subscription (`gateway.shared_group`, docs/configuration.md)


class SharedGateways:
    """`members` `copeau gateway` processes in one shared-subscription group, writing to one fresh database.

    The broker hands each message to one member, so a publisher's messages are split between processes and may be
    stored out of order: "the last one is queryable" no longer means "all are". The end is the count instead."""

    def __init__(self, stack: Stack, name: str, members: int) -> None:
        self.stack = stack
        self.database = stack.new_database(name.replace("-", "_"))
        self.group = f"bench-{name}"
        self.client_ids = [f"bench-{name}-{i}" for i in range(members)]
        self.configs = [stack.workshop_yaml(f"{name}-{i}", database=self.database,
                                            gateway={"client_id": cid, "shared_group": self.group})
                        for i, cid in enumerate(self.client_ids)]
        self.procs: list[Any] = []

    def __enter__(self) -> SharedGateways:
        for cid in self.client_ids:
            v5_session(self.stack.mqtt_port, cid, subscribe=f"$share/{self.group}/{EVENTS}", expiry_s=3600)
        self.procs = [self.stack.copeau("gateway", config) for config in self.configs]
        warm = [event_message(f"warmup-{i:02d}", 3, time.time_ns()) for i in range(4 * len(self.client_ids))]
        publish_now("127.0.0.1", self.stack.mqtt_port, f"{self.group}-warmup", warm)
        wait_until(lambda: self.stack.count(self.database, '"part"', "\"machine\" =~ /^warmup-/") == len(warm),
                   timeout=60, what=f"the {len(self.procs)} gateways of {self.group} to store their first points")
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs:
            stop_process(proc)
        for cid in self.client_ids:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                v5_session(self.stack.mqtt_port, cid, subscribe=None, expiry_s=0)

    def stored(self, prefixes: list[str]) -> int:
        regex = "|".join(f"^{p}-" for p in prefixes)
        return self.stack.count(self.database, where=f'"machine" =~ /{regex}/')


def shared_saturated(gws: SharedGateways, tag: str, settings: ThroughputSettings) -> tuple[float, int, float]:
    """(rate, lost, CPU cores of all members) for `volume` messages published as fast as possible."""
    jobs = _jobs(gws.stack, tag, settings, count=settings.volume)
    prefixes = [j.prefix for j in jobs]
    total = _published(jobs)
    with PublisherGroup(jobs) as group:
        cpu0 = sum(cpu_seconds(p.pid) for p in gws.procs)
        released = group.go()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: gws.stored(prefixes) >= total, timeout=60 + settings.volume / 1000, interval=0.05,
                       what="every point")
        done = time.monotonic_ns()
        cpu1 = sum(cpu_seconds(p.pid) for p in gws.procs)
        group.results()
    seconds = (done - released) / 1e9
    return total / seconds, total - gws.stored(prefixes), (cpu1 - cpu0) / seconds


def run_shared(stack: Stack, settings: ThroughputSettings, runs: int, *, members: int = 2,
               log: Any = print) -> dict[str, Any]:
    """Saturated rate of `members` gateways on one shared subscription, beside one gateway and the raw pipe."""
    per_run: list[dict[str, Any]] = []
    for run in range(1, runs + 1):
        log(f"  run {run}/{runs}")
        raw = raw_pipe(stack, f"sr{run}", settings)
        with GatewayUnderTest(stack, f"sg{run}") as gw:
            single, single_lost, single_cpu = gateway_saturated(gw, f"sg{run}", settings)
            single_rss = peak_rss_mb(gw.pid)
        with SharedGateways(stack, f"sh{run}", members) as gws:
            shared, lost, cpu = shared_saturated(gws, f"sh{run}", settings)
            rss = [peak_rss_mb(p.pid) for p in gws.procs]
        log(f"    raw pipe {raw:,.0f} msg/s; one gateway {single:,.0f} msg/s ({single_cpu:.2f} core, lost "
            f"{single_lost}); {members} in a group {shared:,.0f} msg/s ({cpu:.2f} core, lost {lost})")
        per_run.append({"raw_pipe": raw, "single": single, "single_lost": single_lost, "single_cpu": single_cpu,
                        "single_rss_mib": single_rss, "shared": shared, "shared_lost": lost, "shared_cpu": cpu,
                        "shared_rss_mib": rss})
    return {
        "settings": asdict(settings),
        "members": members,
        "raw_pipe_msg_s": summarize(r["raw_pipe"] for r in per_run).as_dict(),
        "single_msg_s": summarize(r["single"] for r in per_run).as_dict(),
        "shared_msg_s": summarize(r["shared"] for r in per_run).as_dict(),
        "shared_vs_raw_pipe": summarize(r["shared"] / r["raw_pipe"] for r in per_run).as_dict(),
        "shared_cpu_cores": summarize(r["shared_cpu"] for r in per_run).as_dict(),
        "shared_peak_rss_mib": summarize(max(r["shared_rss_mib"]) for r in per_run).as_dict(),
        "lost": sum(r["shared_lost"] + r["single_lost"] for r in per_run),
        "runs": per_run,
    }

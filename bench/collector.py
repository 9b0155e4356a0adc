"""Items 3 and 4 of issue #7: how many machines one collector process follows, its CPU, and its memory.

Theory of operation: the simulated machines run in simulator processes (bench/machines.py) for the whole part;
for each step of a ladder of machine counts, one `copeau collector` process (a subprocess, as in production) is
started on the first N machines. Once it reads every machine, `windows` consecutive windows of `window_s` seconds
are measured — the median, min and max are over those windows of one process — and the process is stopped.

- **Modbus, polled at 1 Hz.** A machine *misses an interval* when its module sees no poll for more than 1.5
  intervals: a gap of g seconds between two polls counts round(g) - 1 missed intervals (bench/stats.py
  `poll_gaps`). Poll arrival times come from the module's side (pymodbus trace hook), not from the collector. A step
  passes when no machine misses an interval in any window, every part the simulators made in the windows reached
  MQTT (each truth part's counter value is covered by a `part` event's counter range), and the process uses less
  than one core.
- **OPC UA, by subscription** (100 ms sampling, one session and one subscription per machine, the monitored items
  the collector chooses: parts, good parts, program state, channel state). A step passes when every part made in
  the windows reached MQTT, the p99 lag from the machine's SourceTimestamp to the event's arrival at an MQTT
  subscriber is within `lag_limit_s`, and the process uses less than one core.
- CPU: utime + stime of the collector process over each window / the window's length (1.0 = one core).
- Memory: VmHWM (peak RSS) of the collector process at the end of the step; the 50-machine figure is the one the
  issue asks about.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.machines import SimulatorFleet
from bench.stack import MODBUS_REGISTERS, Stack, cpu_seconds, peak_rss_mb, stop_process, wait_until
from bench.stats import highest_passing, percentile, poll_gaps, summarize
from copeau.services import free_port
from simulators.groundtruth import read_truth, truth_path

SITE = "ecole-bench"


@dataclass(frozen=True)
class CollectorSettings:
    modbus_steps: tuple[int, ...] = (50, 200, 400)
    opcua_steps: tuple[int, ...] = (50, 100)
    windows: int = 3
    window_s: float = 10.0
    modbus_sim_processes: int = 4
    opcua_per_server: int = 25
    lag_limit_s: float = 0.5


@dataclass
class Window:
    missed: int  # Modbus: missed intervals, all machines
    machines_missing: int  # Modbus: machines with at least one missed interval
    max_gap_s: float  # Modbus: longest time between two polls of a machine
    cpu_cores: float
    events: int = 0
    lag_p50_s: float = 0.0  # OPC UA: SourceTimestamp → MQTT arrival
    lag_p99_s: float = 0.0


@dataclass
class StepResult:
    protocol: str
    machines: int
    passed: bool
    parts_made: int
    parts_missing: int
    peak_rss_mib: float
    exit_code: int
    windows: list[Window] = field(default_factory=list)
    simulator_cpu_cores: float = 0.0
    note: str = ""


class EventListener:
    """Every event the collector publishes, with the wall-clock time it arrived here (paho, in its own thread)."""

    def __init__(self, port: int) -> None:
        self.events: list[tuple[int, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-listener-{time.time_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe(f"copeau/v1/{SITE}/+/+", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the event listener could not subscribe")

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        arrived = time.time_ns()
        if msg.topic.count("/") != 4 or msg.topic.endswith(("/context", "/badge")):
            return
        with contextlib.suppress(ValueError):
            event = json.loads(msg.payload)
            with self._lock:
                self.events.append((arrived, event))

    def take(self) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            out, self.events = self.events, []
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def parts_missing(truth_dir: Path, machines: list[str], events: list[tuple[int, dict[str, Any]]],
                  start_ns: int, end_ns: int) -> tuple[int, int]:
    """(parts made between start and end by the simulators, how many no `part` event accounts for)."""
    covered: dict[str, set[int]] = {m: set() for m in machines}
    for _, e in events:
        data = e.get("data", {})
        if e.get("kind") == "part" and e.get("machine") in covered and data.get("counter") is not None:
            top = int(data["counter"])
            covered[e["machine"]].update(range(top - int(data.get("count", 0)) + 1, top + 1))
    made = missing = 0
    for m in machines:
        path = truth_path(truth_dir, m)
        if not path.exists():
            continue
        for r in read_truth(path).records:
            if r["event"] == "part" and start_ns <= r["ts"] <= end_ns:
                made += 1
                missing += r["counter"] not in covered[m]
    return made, missing


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (the kernel may hand the same free port out twice in a row)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _modbus_machine(i: int, port: int) -> dict[str, Any]:
    return {
        "id": f"mb-{i:03d}", "name": f"Modbus {i}", "kind": "mill", "protocol": "modbus",
        "endpoint": {"host": "127.0.0.1", "port": port}, "poll_interval_s": 1.0, "registers": MODBUS_REGISTERS,
        "simulation": {"seed": 1000 + i, "cycle_s": 8.0, "cycle_jitter_s": 2.0, "idle_s": 6.0},
    }


def _opcua_machine(i: int, port: int) -> dict[str, Any]:
    return {
        "id": f"ua-{i:03d}", "name": f"OPC UA {i}", "kind": "lathe", "protocol": "opcua",
        "url": f"opc.tcp://127.0.0.1:{port}", "sampling_interval_ms": 100,
        "simulation": {"seed": 2000 + i, "cycle_s": 3.0, "cycle_jitter_s": 0.5, "idle_s": 2.0, "bad_every": 4},
    }


def _sim_cpu(fleet: SimulatorFleet) -> float:
    total = 0.0
    for pid in fleet.pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def _step(stack: Stack, fleet: SimulatorFleet, listener: EventListener, protocol: str, machines: list[dict[str, Any]],
          *, settings: CollectorSettings, truth_dir: Path, log: Any) -> StepResult:
    n = len(machines)
    ids = [m["id"] for m in machines]
    config = stack.workshop_yaml(f"{protocol}{n}", database="bench", machines=machines,
                                 collector={"id": f"bench-{protocol}-{n}"})
    started = time.monotonic_ns()
    proc = stack.copeau("collector", config)
    result = StepResult(protocol, n, passed=False, parts_made=0, parts_missing=0, peak_rss_mib=0.0, exit_code=-1)
    try:
        if protocol == "modbus":
            def all_read() -> bool:
                got = fleet.reads(started)
                return all(len(got.get(m, [])) >= 2 for m in ids)

            wait_until(all_read, timeout=30 + n / 10, interval=0.5,
                       what=f"the collector to read all {n} Modbus machines")
        else:
            def all_followed() -> bool:
                seen = {e.get("machine") for _, e in listener.events}
                return set(ids) <= seen

            wait_until(all_followed, timeout=60 + n / 2, interval=0.5,
                       what=f"an event from each of the {n} OPC UA machines")
        listener.take()
        bounds: list[tuple[int, int, int, int]] = []  # (monotonic start, end, wall start, end) of each window
        cpus: list[float] = []
        sim_cpu0 = _sim_cpu(fleet)
        for _ in range(settings.windows):
            t0, w0, c0 = time.monotonic_ns(), time.time_ns(), cpu_seconds(proc.pid)
            time.sleep(settings.window_s)  # the measurement window itself: nothing to wait for
            t1, w1, c1 = time.monotonic_ns(), time.time_ns(), cpu_seconds(proc.pid)
            bounds.append((t0, t1, w0, w1))
            cpus.append((c1 - c0) / ((t1 - t0) / 1e9))
        result.simulator_cpu_cores = (_sim_cpu(fleet) - sim_cpu0) / ((bounds[-1][1] - bounds[0][0]) / 1e9)
        time.sleep(1.5)  # events of the last window still on their way (their lag is what is measured)
        events = listener.take()
        result.peak_rss_mib = peak_rss_mb(proc.pid)
        reads = fleet.reads(bounds[0][0]) if protocol == "modbus" else {}
        for window, cpu in zip(bounds, cpus, strict=True):
            result.windows.append(_window(protocol, ids, reads, events, bounds=window, cpu=cpu))
        result.parts_made, result.parts_missing = parts_missing(
            truth_dir, ids, events, bounds[0][2], bounds[-1][3] - int(settings.lag_limit_s * 1e9) * 2)
    finally:
        result.exit_code = stop_process(proc)
    ok_cpu = all(w.cpu_cores < 1.0 for w in result.windows)
    if protocol == "modbus":
        result.passed = ok_cpu and result.parts_missing == 0 and all(w.missed == 0 for w in result.windows)
    else:
        result.passed = ok_cpu and result.parts_missing == 0 and all(
            w.lag_p99_s <= settings.lag_limit_s for w in result.windows)
    w = result.windows
    log(f"    {protocol} {n:>4} machines: {'ok' if result.passed else 'NOT followed'} — "
        f"CPU {percentile([x.cpu_cores for x in w], 50):.2f} core, peak RSS {result.peak_rss_mib:.0f} MiB, "
        + (f"missed intervals {[x.missed for x in w]}, longest gap {max(x.max_gap_s for x in w):.2f} s, "
           if protocol == "modbus" else
           f"lag p99 {[round(x.lag_p99_s * 1000) for x in w]} ms, ")
        + f"parts {result.parts_made - result.parts_missing}/{result.parts_made}, "
        f"simulators {result.simulator_cpu_cores:.2f} core")
    return result


def _window(protocol: str, ids: list[str], reads: dict[str, list[int]], events: list[tuple[int, dict[str, Any]]],
            *, bounds: tuple[int, int, int, int], cpu: float) -> Window:
    t0, t1, w0, w1 = bounds
    if protocol == "modbus":
        gaps = [poll_gaps([r / 1e9 for r in reads.get(m, [])], interval_s=1.0, start=t0 / 1e9, end=t1 / 1e9)
                for m in ids]
        return Window(missed=sum(g.missed for g in gaps), machines_missing=sum(1 for g in gaps if g.missed),
                      max_gap_s=max(g.max_gap_s for g in gaps), cpu_cores=cpu,
                      events=sum(1 for a, _ in events if w0 <= a < w1))
    lags = [(arrived - int(e["ts"])) / 1e9 for arrived, e in events if w0 <= int(e.get("ts", 0)) < w1]
    return Window(missed=0, machines_missing=0, max_gap_s=0.0, cpu_cores=cpu, events=len(lags),
                  lag_p50_s=percentile(lags, 50) if lags else 0.0, lag_p99_s=percentile(lags, 99) if lags else 0.0)


def _summary(steps: list[StepResult]) -> dict[str, Any]:
    return {
        "capacity": highest_passing([(s.machines, s.passed) for s in steps]),
        "steps": [
            {
                "machines": s.machines,
                "passed": s.passed,
                "cpu_cores": summarize(w.cpu_cores for w in s.windows).as_dict() if s.windows else None,
                "missed_intervals": summarize(w.missed for w in s.windows).as_dict() if s.windows else None,
                "lag_p99_s": summarize(w.lag_p99_s for w in s.windows).as_dict() if s.windows else None,
                **{k: v for k, v in asdict(s).items() if k not in ("machines", "passed")},
            }
            for s in steps
        ],
    }


def run_modbus(stack: Stack, settings: CollectorSettings, *, log: Any = print) -> dict[str, Any]:
    total = max(settings.modbus_steps)
    machines = [_modbus_machine(i, port) for i, port in enumerate(_free_ports(total))]
    truth_dir = stack.dir / "modbus-sim"
    steps: list[StepResult] = []
    listener = EventListener(stack.mqtt_port)
    try:
        with SimulatorFleet.modbus(machines, truth_dir, settings.modbus_sim_processes) as fleet:
            fleet.wait_ready(timeout=60 + total / 10)
            for n in sorted(settings.modbus_steps):
                steps.append(_step(stack, fleet, listener, "modbus", machines[:n], settings=settings,
                                   truth_dir=truth_dir, log=log))
                if not steps[-1].passed:
                    break
    finally:
        listener.close()
    return _summary(steps)


def run_opcua(stack: Stack, settings: CollectorSettings, *, log: Any = print) -> dict[str, Any]:
    total = max(settings.opcua_steps)
    per = settings.opcua_per_server
    ports = _free_ports((total + per - 1) // per)
    machines = [_opcua_machine(i, ports[i // per]) for i in range(total)]
    servers: dict[str, list[dict[str, Any]]] = {}
    for m in machines:
        servers.setdefault(m["url"], []).append(m)
    truth_dir = stack.dir / "opcua-sim"
    steps: list[StepResult] = []
    listener = EventListener(stack.mqtt_port)
    try:
        with SimulatorFleet.opcua(servers, truth_dir) as fleet:
            fleet.wait_ready(timeout=120 + total / 2)
            for n in sorted(settings.opcua_steps):
                steps.append(_step(stack, fleet, listener, "opcua", machines[:n], settings=settings,
                                   truth_dir=truth_dir, log=log))
                if not steps[-1].passed:
                    break
    finally:
        listener.close()
    return _summary(steps)

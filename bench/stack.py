"""The servers and product processes a benchmark runs against, and what /proc says about them.

Theory of operation: `Stack` starts a real mosquitto and a real influxd with Copeau's own managed configuration
(copeau/services.py: the broker saves every second, influxd fsyncs each write) on free loopback ports in a
temporary folder, and stops them at the end. The gateway and the collector run as the product runs them:
`python -m copeau gateway|collector --config <generated workshop.yaml>` subprocesses, so that memory (VmHWM) and
CPU time (utime + stime) are those of one product process, read from /proc/<pid>/.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3
import yaml

from copeau.services import ManagedProcess, create_database, free_port, influxd_process, mosquitto_process

ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `predicate` until truthy; raise TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last value: {last!r})")


class Stack:
    """mosquitto + influxd for the duration of a `with` block, in a temporary folder."""

    def __init__(self, *, keep: bool = False) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="copeau-bench-", ignore_cleanup_errors=True)
        self.dir = Path(self._tmp.name)
        self._keep = keep
        self.mqtt_port = free_port()
        self.influx_port = free_port()
        self.broker: ManagedProcess | None = None
        self.influxd: ManagedProcess | None = None
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=60))

    @property
    def influx_url(self) -> str:
        return f"http://127.0.0.1:{self.influx_port}"

    def __enter__(self) -> Stack:
        self.broker = mosquitto_process(host="127.0.0.1", port=self.mqtt_port, state_dir=self.dir, max_queued_mb=1024)
        self.influxd = influxd_process(
            host="127.0.0.1", port=self.influx_port, rpc_port=free_port(), state_dir=self.dir
        )
        self.broker.start()
        self.influxd.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in (self.broker, self.influxd):
            if proc is not None:
                proc.stop()
        if not self._keep:
            self._tmp.cleanup()

    def pids(self) -> dict[str, int]:
        return {
            name: proc.proc.pid
            for name, proc in (("mosquitto", self.broker), ("influxd", self.influxd))
            if proc is not None and proc.proc is not None
        }

    # -- InfluxDB

    def new_database(self, name: str) -> str:
        create_database(self.influx_url, name)
        return name

    def query(self, database: str, q: str) -> list[dict[str, Any]]:
        """The series of the first statement (raises on an HTTP or InfluxQL error)."""
        body = urllib.parse.urlencode({"db": database, "q": q, "epoch": "ns"})
        resp = self._http.request(
            "POST", f"{self.influx_url}/query", body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if resp.status != 200:
            raise RuntimeError(f"InfluxDB /query HTTP {resp.status}: {resp.data[:300]!r}")
        result = resp.json()["results"][0]
        if "error" in result:
            raise RuntimeError(f"InfluxQL error {result['error']} in {q}")
        return list(result.get("series", []))

    def count(self, database: str, measurements: str = '"part","cycle","state"', where: str = "") -> int:
        """Points stored, summed over the measurements (count of the `seq` field every event carries)."""
        q = f'SELECT count("seq") FROM {measurements}' + (f" WHERE {where}" if where else "")
        return sum(int(s["values"][0][1]) for s in self.query(database, q) if s.get("values"))

    # -- product processes

    def workshop_yaml(
        self, name: str, *, database: str, machines: list[dict[str, Any]] | None = None,
        influx_port: int | None = None, **extra: Any,
    ) -> Path:
        """A workshop.yaml in external mode pointing at this stack (the bench manages the servers)."""
        state = self.dir / name
        state.mkdir(parents=True, exist_ok=True)
        doc = {
            "site": {"id": "ecole-bench", "name": "Banc d'essai"},
            "services": {"mode": "external", "state_dir": str(state)},
            "mqtt": {"host": "127.0.0.1", "port": self.mqtt_port},
            "influxdb": {"host": "127.0.0.1", "port": influx_port or self.influx_port, "database": database},
            # The gateway ignores machines, but a workshop has at least one.
            "machines": machines or [placeholder_machine()],
            **extra,
        }
        path = state / "workshop.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def copeau(self, command: str, config: Path, *, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
        """`python -m copeau <command> --config <config>`, its output in <config dir>/<command>.log.
        `prefix` runs it under another command (e.g. py-spy record ... --)."""
        log = (config.parent / f"{command}.log").open("ab")
        argv = [*(prefix or []), sys.executable, "-m", "copeau", command, "--config", str(config)]
        return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def placeholder_machine() -> dict[str, Any]:
    return {
        "id": "placeholder",
        "name": "placeholder",
        "kind": "mill",
        "protocol": "modbus",
        "endpoint": {"host": "127.0.0.1", "port": 1},
        "registers": MODBUS_REGISTERS,
    }


MODBUS_REGISTERS = {
    "cycle_running": {"table": "discrete_input", "address": 0},
    "spindle_on": {"table": "discrete_input", "address": 1},
    "alarm": {"table": "discrete_input", "address": 2},
    "parts": {"table": "holding_register", "address": 0, "type": "uint32", "count": 2, "word_order": "big"},
}


def stop_process(proc: subprocess.Popen[bytes], *, timeout_s: float = 20) -> int:
    """SIGTERM (the product's clean stop), then SIGKILL if it does not exit in time. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        stop_process(proc)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set size of a live process, in MiB (as ps and top count)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces; fields start after it
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from 1
    return (utime + stime) / _CLK_TCK


class CpuMeter:
    """CPU used by named groups of processes over a span, in cores (CPU seconds ÷ wall seconds): where a 2-core
    machine's time goes during a measurement. A process that has exited but not been reaped (a zombie) still shows
    its times in /proc; one already reaped counts for what it had used at `start()` only."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._t0 = 0.0
        self._c0: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(OSError):
                    total += cpu_seconds(pid)
            out[name] = total
        return out

    def start(self) -> None:
        self._c0 = self._read()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        c1 = self._read()
        seconds = time.monotonic() - self._t0
        return {name: round((c1[name] - self._c0[name]) / seconds, 3) for name in self.groups}


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU model and count, memory, OS, load when measured."""
    info: dict[str, Any] = {"cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    info["kernel"] = os.uname().release
    info["python"] = sys.version.split()[0]
    info["loadavg_at_start"] = os.getloadavg()
    return info

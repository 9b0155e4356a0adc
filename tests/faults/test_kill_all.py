"""(h) Every service killed with `kill -9` and restarted, as the real processes run in production: `copeau
collector`, `copeau gateway` (the command line), mosquitto and influxd (the servers, with the configuration Copeau
writes for them). The machines are played by `copeau simulate`, which is never killed: it is the workshop.

Order: the collector is killed; while it is down the broker is killed too, once it has saved its state (the
window of mosquitto's autosave is scenario (a)'s known gap, measured there); both come back. Then the gateway,
then influxd. Each service is down for about a second while production goes on. After each restart the test
measures how long InfluxDB takes to hold every part made before it; at the end, every part and every event
must be stored exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from copeau.config import Workshop, load_workshop
from copeau.influxql import InfluxQuery
from copeau.services import ManagedProcess, free_port, influxd_process, mosquitto_process
from tests.conftest import wait_until
from tests.faults.rig import Load, truth_parts_now, verdict, wait_events_stored, wait_stored, write_result

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LOAD = Load(parts=50, seed=800)  # 25 s of production: every kill lands in it
DOWN_S = 1.0  # each service stays dead this long (the outage itself)
SAVE_MARGIN_NS = 200_000_000


class Services:
    """The four services of a Copeau site, started and killed by the test."""

    def __init__(self, config: Path, workshop: Workshop, logs: Path) -> None:
        self.config = config
        self.workshop = workshop
        self.logs = logs
        self.commands: dict[str, subprocess.Popen[bytes]] = {}
        self.servers: dict[str, ManagedProcess] = {}
        self._log_files: list[IO[bytes]] = []

    def start_server(self, name: str) -> None:
        ws = self.workshop
        if name == "mosquitto":
            proc = mosquitto_process(host=ws.mqtt.host, port=ws.mqtt.port, state_dir=ws.state_dir, max_queued_mb=64)
        else:
            proc = influxd_process(host=ws.influxdb.host, port=ws.influxdb.port, rpc_port=ws.influxdb.rpc_port,
                                   state_dir=ws.state_dir)
        proc.start()
        self.servers[name] = proc

    def start_command(self, name: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self._log_files.append(log)
        self.commands[name] = subprocess.Popen(
            [sys.executable, "-m", "copeau", name, "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def start(self, name: str) -> None:
        if name in ("mosquitto", "influxd"):
            self.start_server(name)
        else:
            self.start_command(name)

    def kill(self, name: str) -> None:
        """SIGKILL, and reap it."""
        if name in self.servers:
            self.servers[name].kill()
        else:
            proc = self.commands[name]
            proc.kill()
            proc.wait(10)

    def stop_commands(self, names: tuple[str, ...] = ("collector", "simulate", "gateway")) -> dict[str, int | None]:
        """SIGTERM these commands, in order (collector first, so that it drains its outbox to a live broker)."""
        codes: dict[str, int | None] = {}
        for name in names:
            proc = self.commands.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        return codes

    def close(self) -> None:
        self.stop_commands()
        for proc in self.servers.values():
            proc.stop()
        for log in self._log_files:
            log.close()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Services]:
    config = tmp_path / "workshop.yaml"
    config.write_text(yaml.safe_dump({
        "site": {"id": "kill-test", "name": "Atelier"},
        "services": {"mode": "external", "state_dir": str(tmp_path / "var")},
        "mqtt": {"host": "127.0.0.1", "port": free_port()},
        "influxdb": {"host": "127.0.0.1", "port": free_port(), "rpc_port": free_port(), "database": "copeau"},
        "machines": LOAD.machine_configs(),
    }))
    services = Services(config, load_workshop(config), tmp_path)
    try:
        yield services
    finally:
        services.close()


def db_mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def test_every_service_killed_and_restarted_loses_no_acknowledged_event(site: Services) -> None:
    ws = site.workshop
    for name in ("mosquitto", "influxd", "gateway", "collector", "simulate"):
        site.start(name)
    kills: list[dict[str, Any]] = []

    def restarted(services: list[str], killed_at: float) -> None:
        for name in services:
            site.start(name)
        back_at = time.monotonic()
        target = truth_parts_now(ws)
        done = wait_stored(ws, target=lambda: target, timeout=90)
        kills.append({"killed": services, "down_s": round(back_at - killed_at, 2),
                      "drain_s": round(done - back_at, 3)})

    try:
        wait_stored(ws, target=lambda: 2 * LOAD.machines, timeout=60)

        # The collector, then the broker once it has saved its state with nothing new coming in.
        killed_at, dead_ns = time.monotonic(), time.time_ns()
        site.kill("collector")
        db_file = ws.state_dir / "mosquitto" / "mosquitto.db"
        wait_until(lambda: db_mtime(db_file) > dead_ns + SAVE_MARGIN_NS, timeout=10,
                   what="the broker's first save after the collector died")
        site.kill("mosquitto")
        time.sleep(DOWN_S)  # the outage itself
        restarted(["mosquitto", "collector"], killed_at)

        for name in ("gateway", "influxd"):
            killed_at = time.monotonic()
            site.kill(name)
            time.sleep(DOWN_S)  # the outage itself
            restarted([name], killed_at)

        wait_until(lambda: truth_parts_now(ws) == LOAD.machines * LOAD.parts, timeout=120,
                   what="the end of production")
        ended_at = time.monotonic()
        done = wait_stored(ws, timeout=90)
        drain_end = round(done - ended_at, 3)
    except BaseException:
        for name in ("collector", "gateway", "simulate"):
            sys.stderr.write(f"--- {name} log ---\n{site.log_tail(name)}\n")
        raise
    codes = site.stop_commands(("collector", "simulate"))
    # The collector drained its outbox to the broker on SIGTERM; its last events (a state idle or a cycle end may
    # trail the last part by a poll) must be stored before the gateway stops: it drops what is in its inbox, and
    # the verdict would count it missing. Its numbering (next_seq) is final now that it has exited.
    wait_events_stored(ws, timeout=60)
    codes |= site.stop_commands(("gateway",))
    result = verdict(ws)
    rebuilt = sum(_rebuilt_parts(ws).values())
    figures = {
        "load": LOAD.describe(),
        "kills": kills,
        "drain_after_production_s": drain_end,
        "parts_rebuilt_from_counters": rebuilt,
        "exit_codes_after_sigterm": codes,
        **result.figures(),
    }
    write_result("h_kill_all", figures)

    assert result.exact, result
    assert result.truth_parts == LOAD.machines * LOAD.parts
    logs = {name: site.log_tail(name, lines=80) for name, code in codes.items() if code != 0}
    assert codes == {"collector": 0, "simulate": 0, "gateway": 0}, (codes, logs)
    assert [k["killed"] for k in kills] == [["mosquitto", "collector"], ["gateway"], ["influxd"]]
    assert "Traceback" not in site.log_tail("collector", 10_000), site.log_tail("collector")
    assert "Traceback" not in site.log_tail("gateway", 10_000), site.log_tail("gateway")
    assert os.path.exists(ws.state_dir / "deadletter" / "gateway.jsonl") is False  # nothing was malformed


def _rebuilt_parts(ws: Workshop) -> dict[str, int]:
    """Parts the collector counted from a counter after an outage of its own (flagged `rebuilt`)."""
    q = InfluxQuery(ws.influxdb)
    return {k: int(v) for k, v in q.by_tag(
        'SELECT sum("count") FROM "part" WHERE "rebuilt" = true GROUP BY "machine"', "machine").items()}

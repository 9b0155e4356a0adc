"""`copeau demo` as a user runs it: its own mosquitto and influxd, simulated mills, a clean stop (timer or
Ctrl-C), and a final comparison with the ground truth that decides the exit code."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from copeau.services import free_port, port_is_free
from simulators.groundtruth import read_truth, truth_path
from tests.conftest import REGISTERS, wait_until

pytestmark = pytest.mark.integration

CHECK = re.compile(r"^(\S+) : (\d+) pièces dans InfluxDB, (\d+) dans la vérité terrain .* identique ✔$", re.M)


def demo_config(tmp_path: Path) -> Path:
    sim = {"cycle_s": 0.6, "cycle_jitter_s": 0.1, "idle_s": 0.3}
    config = {
        "site": {"id": "demo-test", "name": "Démo de test"},
        "services": {"mode": "managed", "state_dir": str(tmp_path / "var")},
        "mqtt": {"port": free_port()},
        "influxdb": {"port": free_port(), "rpc_port": free_port()},
        "web": {"port": free_port()},
        "machines": [
            {"id": "f1", "name": "F1", "kind": "mill", "protocol": "modbus", "poll_interval_s": 0.05,
             "endpoint": {"host": "127.0.0.1", "port": free_port()}, "registers": REGISTERS,
             "simulation": {**sim, "seed": 1, "counter_start": 2**32 - 2}},
            {"id": "f2", "name": "F2", "kind": "mill", "protocol": "modbus", "poll_interval_s": 0.05,
             "endpoint": {"host": "127.0.0.1", "port": free_port()}, "registers": REGISTERS,
             "simulation": {**sim, "seed": 2}},
        ],
    }
    path = tmp_path / "workshop.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def checked(output: str, state_dir: Path) -> dict[str, int]:
    """The demo's own verdicts, each checked again here against the truth files."""
    verdicts = {m: (int(stored), int(truth)) for m, stored, truth in CHECK.findall(output)}
    assert set(verdicts) == {"f1", "f2"}, output
    for machine, (stored, truth) in verdicts.items():
        assert stored == truth == read_truth(truth_path(state_dir, machine)).parts
    return {m: v[0] for m, v in verdicts.items()}


def test_demo_stops_by_itself_and_matches_the_ground_truth(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    run = subprocess.run([sys.executable, "-m", "copeau", "demo", "--config", str(config), "--seconds", "6"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SELECT sum(\"count\") FROM \"part\"" in run.stdout  # the query that gives the same numbers
    assert "/kiosque/f1?cle=" in run.stdout  # the kiosk addresses, with this run's keys
    parts = checked(run.stdout, tmp_path / "var")
    assert sum(parts.values()) >= 4  # ~0.9 s per part for 6 s: something was really made


def test_ctrl_c_stops_cleanly_with_the_same_check(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "copeau", "demo", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    truth = truth_path(tmp_path / "var", "f1")
    try:
        wait_until(lambda: truth.exists() and read_truth(truth).parts >= 2, timeout=60, what="two parts made")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Arrêt en cours" in out
    checked(out, tmp_path / "var")
    # The managed servers went down with it: their ports are free again.
    conf = yaml.safe_load(config.read_text())
    assert port_is_free("127.0.0.1", conf["mqtt"]["port"])
    assert port_is_free("127.0.0.1", conf["influxdb"]["port"])

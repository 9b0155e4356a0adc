"""Copeau as it runs in production: `copeau services`, `simulate`, `collector` and `gateway` as four processes
(here on one machine, in managed mode), each stopped by SIGTERM with exit code 0, with nothing lost between them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from copeau.config import load_workshop
from copeau.influxql import InfluxQuery
from copeau.services import free_port, port_is_free
from simulators.groundtruth import read_truth, truth_path
from tests.conftest import REGISTERS, wait_until

pytestmark = pytest.mark.integration


def test_four_processes_count_every_part_and_stop_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "workshop.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "site": {"id": "prod-test", "name": "Atelier"},
                "services": {"mode": "managed", "state_dir": str(tmp_path / "var")},
                "mqtt": {"port": free_port()},
                "influxdb": {"port": free_port(), "rpc_port": free_port()},
                "machines": [
                    {
                        "id": "f1",
                        "name": "F1",
                        "kind": "mill",
                        "protocol": "modbus",
                        "poll_interval_s": 0.05,
                        "endpoint": {"host": "127.0.0.1", "port": free_port()},
                        "registers": REGISTERS,
                        "simulation": {"cycle_s": 0.4, "cycle_jitter_s": 0.1, "idle_s": 0.3, "parts": 6},
                    }
                ],
            }
        )
    )
    workshop = load_workshop(config)

    def start(command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "copeau", command, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    services = start("services")
    processes = [services]
    try:
        wait_until(
            lambda: (
                not port_is_free("127.0.0.1", workshop.influxdb.port)
                and InfluxQuery(workshop.influxdb).series("SHOW DATABASES")
            ),
            timeout=30,
            what="the services",
        )
        # The collector starts before the simulated module answers: it must wait for it, not give up.
        processes += [start("gateway"), start("collector")]
        processes.append(start("simulate"))
        truth = truth_path(workshop.state_dir, "f1")
        wait_until(lambda: truth.exists() and read_truth(truth).parts == 6, timeout=60, what="6 parts made")
        q = InfluxQuery(workshop.influxdb)
        wait_until(lambda: q.scalar('SELECT sum("count") FROM "part"') == 6, timeout=30, what="6 parts in InfluxDB")
    finally:
        outputs = {}
        for proc in reversed(processes):  # simulators, collector, gateway, then the services they use
            proc.send_signal(signal.SIGTERM)
            outputs[proc.args[3]] = proc.communicate(timeout=30)[0]  # type: ignore[index]
    for proc in processes:
        assert proc.returncode == 0, (proc.args, outputs[proc.args[3]])  # type: ignore[index]
    # The managed servers are gone with `copeau services`:
    assert port_is_free("127.0.0.1", workshop.mqtt.port)
    assert port_is_free("127.0.0.1", workshop.influxdb.port)

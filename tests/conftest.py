"""Shared fixtures: real mosquitto and influxd on free loopback ports, in temporary directories."""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3

from copeau.config import Workshop
from copeau.services import ManagedProcess, create_database, free_port, influxd_process, mosquitto_process


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last value: {last!r})")


async def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """`wait_until` for async tests: yields to the event loop between polls."""
    deadline = time.monotonic() + timeout
    while not (last := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last value: {last!r})")
        await asyncio.sleep(interval)
    return last


@dataclass
class Influx:
    process: ManagedProcess
    url: str
    _ids: Iterator[int]

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database for one test."""
        name = f"{prefix}_{next(self._ids)}"
        create_database(self.url, name)
        return name

    def query(self, database: str, q: str) -> list[dict[str, Any]]:
        """Run InfluxQL; return the series of the first statement ([] when empty)."""
        http = urllib3.PoolManager()
        resp = http.request(
            "GET", f"{self.url}/query?" + urllib.parse.urlencode({"db": database, "q": q, "epoch": "ns"})
        )
        assert resp.status == 200, resp.data
        result = resp.json()["results"][0]
        assert "error" not in result, result
        return list(result.get("series", []))

    def scalar(self, database: str, q: str) -> Any:
        series = self.query(database, q)
        if not series:
            return None
        return series[0]["values"][0][1]


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influx]:
    state = tmp_path_factory.mktemp("influx")
    port, rpc = free_port(), free_port()
    proc = influxd_process(host="127.0.0.1", port=port, rpc_port=rpc, state_dir=state)
    proc.start()
    try:
        yield Influx(process=proc, url=f"http://127.0.0.1:{port}", _ids=itertools.count(1))
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL server (tests/postgres.py) for the tests that run the orders store on PostgreSQL."""
    from tests.postgres import postgres_server  # noqa: PLC0415 - psycopg is needed by these tests only

    with postgres_server() as server:
        yield server


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """Start a fresh mosquitto; returns a factory so that a test can restart one on the same port and state."""
    started: list[ManagedProcess] = []

    def start(port: int | None = None, state_dir: Path | None = None) -> ManagedProcess:
        proc = mosquitto_process(
            host="127.0.0.1", port=port or free_port(), state_dir=state_dir or tmp_path, max_queued_mb=64
        )
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., ManagedProcess]) -> ManagedProcess:
    return broker_factory()


REGISTERS = {
    "cycle_running": {"table": "discrete_input", "address": 0},
    "spindle_on": {"table": "discrete_input", "address": 1},
    "alarm": {"table": "discrete_input", "address": 2},
    "parts": {"table": "holding_register", "address": 0, "type": "uint32", "count": 2, "word_order": "big"},
}


def make_workshop(
    state_dir: Path,
    *,
    mqtt_port: int,
    influx_port: int = 18086,
    database: str = "copeau",
    machines: list[dict[str, Any]],
    **extra: Any,
) -> Workshop:
    """A validated Workshop for a test, pointing at the fixtures' servers."""
    return Workshop.model_validate(
        {
            "site": {"id": "test-site", "name": "Test"},
            "services": {"mode": "external", "state_dir": str(state_dir)},
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
            "influxdb": {"host": "127.0.0.1", "port": influx_port, "database": database},
            "machines": machines,
            **extra,
        }
    )


def modbus_machine(machine_id: str, port: int, *, poll: float = 0.05, **overrides: Any) -> dict[str, Any]:
    return {
        "id": machine_id,
        "name": machine_id,
        "kind": "mill",
        "protocol": "modbus",
        "endpoint": {"host": "127.0.0.1", "port": port},
        "poll_interval_s": poll,
        "registers": REGISTERS,
        **overrides,
    }

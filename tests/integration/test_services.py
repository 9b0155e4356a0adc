"""The managed services start on loopback, answer, and refuse a busy port with a clear message."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import urllib3

from copeau.errors import ServiceError
from copeau.services import ManagedProcess, free_port, mosquitto_process
from tests.conftest import Influx

pytestmark = pytest.mark.integration


def test_influx_answers_and_stores(influx: Influx) -> None:
    db = influx.new_database()
    resp = urllib3.PoolManager().request(
        "POST",
        f"{influx.url}/write?db={db}&precision=ns",
        body=b"m,machine=a v=1i 1700000000000000000\nm,machine=a v=1i 1700000000000000000",
    )
    assert resp.status == 204
    assert influx.scalar(db, "SELECT count(v) FROM m") == 1  # the same point twice is stored once


def test_broker_listens_on_loopback_only(broker: ManagedProcess) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=1):
        pass
    conf = (broker.log_path.parent / "mosquitto.conf").read_text()
    assert f"listener {broker.port} 127.0.0.1" in conf
    assert "autosave_interval 1" in conf
    assert "max_queued_messages 0" in conf


def test_busy_port_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(ServiceError, match=rf"port {port}.*mqtt\.port"):
            mosquitto_process(host="127.0.0.1", port=port, state_dir=tmp_path)

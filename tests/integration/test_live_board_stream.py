"""The live board's event stream (`GET /api/tableau/flux`) over real HTTP (uvicorn), fed by the real mosquitto:
a snapshot on connection, then updates well under a second after a machine event is published, pings when quiet,
malformed messages counted and survived, a machine offline when its collector's health reports stop covering it,
and the feed reported down when the broker goes away.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from copeau.contract import Event, EventKind, MachineState, StateData
from copeau.services import ManagedProcess, free_port
from tests.conftest import Influx, wait_until
from tests.integration.test_web_api import KEYS, LATHE, MILL, SITE, seed, web_workshop
from tests.unit.test_live_board import health
from web.app import create_app
from web.live import StreamingServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WAIT_S = 15.0
HEARTBEAT_S = 1.0
LATENCY_EVENTS = 30


@dataclass
class SseEvent:
    name: str
    data: Any
    at: float  # time.monotonic() when it was read


@dataclass
class SseReader:
    """Reads a text/event-stream in a thread; every event is kept with the time it arrived."""

    url: str
    events: list[SseEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(5.0, read=30.0))
        self.thread = threading.Thread(target=self._read, name="sse-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        name, data = "message", []
        try:
            with self.client.stream("GET", self.url) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        with self.lock:
                            self.events.append(SseEvent(name, json.loads("\n".join(data)), time.monotonic()))
                        name, data = "message", []
        except (httpx.HTTPError, RuntimeError):
            return  # closed by the test

    def named(self, name: str) -> list[SseEvent]:
        with self.lock:
            return [e for e in self.events if e.name == name]

    def tiles(self, machine: str) -> list[tuple[float, dict[str, Any]]]:
        """Every version of one machine's tile received, with its arrival time."""
        with self.lock:
            return [(e.at, t) for e in self.events if e.name in ("snapshot", "update")
                    for t in e.data["tiles"] if t["machine"] == machine]

    def last_view(self) -> dict[str, Any] | None:
        with self.lock:
            views = [e.data for e in self.events if e.name in ("snapshot", "update")]
        return views[-1] if views else None

    def close(self) -> None:
        self.client.close()
        self.thread.join(timeout=5)


@dataclass
class Served:
    url: str
    app: Any
    broker: ManagedProcess
    server: uvicorn.Server


@pytest.fixture
def served(tmp_path: Path, broker: ManagedProcess, influx: Influx) -> Iterator[Served]:
    database = influx.new_database("live")
    workshop = web_workshop(tmp_path, broker=broker, influx=influx, database=database)
    app = create_app(workshop, database_url=f"sqlite:///{tmp_path / 'copeau.sqlite'}", mqtt=True, progress=False,
                     kiosk_keys=KEYS, live_options={"heartbeat_s": HEARTBEAT_S, "tick_s": 0.2})
    port = free_port()
    # StreamingServer, as `copeau web`: the open streams end when it stops (the teardown checks that it does).
    server = StreamingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=WAIT_S, what="uvicorn to start")
        seed(app)
        yield Served(f"http://127.0.0.1:{port}", app, broker, server)
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT_S)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def publisher(broker: ManagedProcess) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="machines", protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def state_event(machine: str, state: MachineState, seq: int, ts: int) -> Event:
    return Event(site=SITE, machine=machine, kind=EventKind.STATE, seq=seq, ts=ts, data=StateData(state=state))


def test_snapshot_then_updates_under_a_second_pings_and_malformed_messages(
    served: Served, publisher: paho.Client
) -> None:
    reader = SseReader(f"{served.url}/api/tableau/flux")
    try:
        (snapshot,) = wait_until(lambda: reader.named("snapshot"), timeout=WAIT_S, what="the snapshot event")
        assert [t["machine"] for t in snapshot.data["tiles"]] == [MILL, LATHE]
        assert {t["state"] for t in snapshot.data["tiles"]} == {"unknown"}
        wait_until(lambda: (v := reader.last_view()) and v["feed_connected"], timeout=WAIT_S,
                   what="the board's MQTT link to be up")
        # The link subscribes right after connecting: publish until the first event is seen.
        t0 = time.time_ns()
        wait_until(lambda: publisher.publish(state_event(LATHE, MachineState.IDLE, 0, t0).topic,
                                             state_event(LATHE, MachineState.IDLE, 0, t0).encode(), qos=1)
                   and any(t["state"] == "idle" for _, t in reader.tiles(LATHE)),
                   timeout=WAIT_S, what="the lathe's first state on the board", interval=0.3)

        # Machine event → browser: each state change of the mill, timed from its publication to its update.
        latencies = []
        for i in range(LATENCY_EVENTS):
            state = MachineState.RUNNING if i % 2 == 0 else MachineState.IDLE
            ts = t0 + (i + 1) * 1000
            e = state_event(MILL, state, i + 1, ts)
            sent = time.monotonic()
            publisher.publish(e.topic, e.encode(), qos=1)
            at, tile = wait_until(lambda ts=ts: next(((a, t) for a, t in reader.tiles(MILL) if t["since_ns"] == ts),
                                                     None), timeout=WAIT_S, what=f"state event {i} on the board")
            assert tile["state"] == state.value
            latencies.append(at - sent)
            time.sleep(0.05 + (i % 5) * 0.06)  # machines do not publish in step with the stream's throttle
        p50, p99 = statistics.median(latencies), max(latencies)
        print(f"\nevent → SSE latency over {LATENCY_EVENTS} events: p50 {p50 * 1000:.0f} ms, "
              f"max {p99 * 1000:.0f} ms")
        assert p99 < 1.0, latencies

        # Malformed messages are counted and change nothing; the stream goes on.
        before = served.app.state.live.board.malformed
        publisher.publish(f"copeau/v1/{SITE}/{MILL}/part", b"not json", qos=1)
        publisher.publish(f"copeau/v1/{SITE}/{MILL}/state", b'{"v":1,"site":"test-site"}', qos=1)
        wait_until(lambda: served.app.state.live.board.malformed == before + 2, timeout=WAIT_S,
                   what="the two malformed messages counted")
        e = state_event(MILL, MachineState.ALARM, 99, t0 + 10**6)
        publisher.publish(e.topic, e.encode(), qos=1)
        wait_until(lambda: reader.tiles(MILL)[-1][1]["state"] == "alarm", timeout=WAIT_S,
                   what="the alarm after the malformed messages")

        # The collector's health reports cover the lathe, then stop: after three missed reports, the lathe is
        # offline ("no news"), idle as it is.
        topic, payload = health(time.time_ns(), readable={LATHE: True}, interval_s=0.2, site=SITE)
        publisher.publish(topic, payload, qos=1)
        wait_until(lambda: (t := reader.tiles(LATHE)[-1][1])["state"] == "offline" and t["offline_reason"] == "stale",
                   timeout=WAIT_S, what="the lathe offline after its health reports stopped")

        # Quiet: pings, about every heartbeat.
        pings = len(reader.named("ping"))
        wait_until(lambda: len(reader.named("ping")) >= pings + 2, timeout=4 * HEARTBEAT_S + 2,
                   what="two pings while nothing happens")

        # The broker goes away: the board says that its feed is down; the page shows the banner from this.
        served.broker.stop()
        wait_until(lambda: (v := reader.last_view()) and v["feed_connected"] is False, timeout=WAIT_S,
                   what="the feed reported down after the broker stopped")
        assert reader.tiles(MILL)[-1][1]["state"] == "alarm"  # what was known stays shown
    finally:
        reader.close()


def test_the_number_of_streams_is_bounded(served: Served) -> None:
    served.app.state.live.max_streams = 1
    first = SseReader(f"{served.url}/api/tableau/flux")
    try:
        wait_until(lambda: first.named("snapshot"), timeout=WAIT_S, what="the first stream's snapshot")
        refused = httpx.get(f"{served.url}/api/tableau/flux", timeout=5.0)
        assert refused.status_code == 503
        assert refused.json()["message"] == "Demande refusée (HTTP 503)."
        assert refused.headers["retry-after"] == "10"
    finally:
        first.close()
    wait_until(lambda: served.app.state.live.streams == 0, timeout=WAIT_S, what="the closed stream to be released")


def test_open_streams_end_when_the_server_stops(served: Served) -> None:
    """Else one TV on the board would hold `copeau web`'s stop (Ctrl-C, systemd) for ever."""
    readers = [SseReader(f"{served.url}/api/tableau/flux") for _ in range(2)]
    try:
        wait_until(lambda: all(r.named("snapshot") for r in readers), timeout=WAIT_S, what="both streams open")
        asked = time.monotonic()
        served.server.should_exit = True
        wait_until(lambda: not any(r.thread.is_alive() for r in readers), timeout=WAIT_S,
                   what="both streams ended by the server")
        assert time.monotonic() - asked < 3.0
        wait_until(lambda: served.app.state.live.streams == 0, timeout=WAIT_S, what="the streams released")
    finally:
        for r in readers:
            r.close()


def test_board_page_and_snapshot_in_french_and_english(served: Served) -> None:
    page = httpx.get(f"{served.url}/tableau", timeout=5.0)
    assert page.status_code == 200
    assert "Tableau de l&#39;atelier — Test" in page.text and 'id="tile-fraiseuse-1"' in page.text
    assert "Flux de données interrompu" in page.text and "/static/live.js" in page.text
    english = httpx.get(f"{served.url}/tableau?lang=en", timeout=5.0)
    assert "Workshop board — Test" in english.text and "Data feed interrupted" in english.text
    snapshot = httpx.get(f"{served.url}/api/tableau", timeout=5.0).json()
    assert [t["machine"] for t in snapshot["tiles"]] == [MILL, LATHE]
    assert "tableau" in httpx.get(f"{served.url}/", timeout=5.0).text

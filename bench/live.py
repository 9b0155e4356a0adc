"""Item 2, second half: a machine event → the live board (`/tableau`, web/live.py), p99 (target ≤ 1 s).

Theory of operation: `copeau web` runs as in production (a subprocess) with one machine on its board. The bench
subscribes to the board's stream (`GET /api/tableau/flux`, server-sent events) like the TV's browser does, then
publishes `state` events for that machine as the collector would (QoS 1 to the broker), alternating running and
idle, at random gaps of 0.3–0.9 s (so that they fall at every phase of the board's update throttle). An event
has arrived when an `update` carries the machine's tile with that event's time as `since_ns`; its latency is
that arrival minus the moment the event was written to the broker's socket (monotonic clock, one machine).
"""

from __future__ import annotations

import importlib.util
import json
import random
import threading
import time
from typing import Any

import urllib3

from bench.publisher import publish_now
from bench.stack import Stack, stop_process, wait_until
from bench.stats import percentile, summarize
from bench.workload import Message
from copeau.contract import Event, MachineState, StateData
from copeau.services import free_port

MACHINE = "live-00"


class SseReader:
    """Reads an SSE stream in a thread; notes (monotonic ns, since_ns, state) of each tile of MACHINE."""

    def __init__(self, url: str) -> None:
        self.arrivals: list[tuple[int, int | None, str]] = []
        self.snapshot = threading.Event()
        self.error: str | None = None
        self.closing = False
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))
        self._resp = self._http.request("GET", url, preload_content=False, headers={"Accept": "text/event-stream"})
        self.thread = threading.Thread(target=self._read, name="sse-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        event, data = "", ""
        try:
            buf = b""
            for chunk in self._resp.stream(1, decode_content=True):  # byte by byte: no waiting for a full chunk
                buf += chunk
                if not buf.endswith(b"\n"):
                    continue
                line, buf = buf.decode().rstrip("\r\n"), b""
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line:
                    self._dispatch(event, data)
                    event, data = "", ""
        except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError) as exc:
            if not self.closing:  # closing the response under the reader ends it with one of these
                self.error = f"{type(exc).__name__}: {exc}"

    def _dispatch(self, event: str, data: str) -> None:
        now = time.monotonic_ns()
        if event == "snapshot":
            self.snapshot.set()
        if event not in ("snapshot", "update") or not data:
            return
        for tile in json.loads(data).get("tiles", []):
            if tile.get("machine") == MACHINE:
                self.arrivals.append((now, tile.get("since_ns"), tile.get("state")))

    def close(self) -> None:
        self.closing = True
        self._resp.release_conn()
        self._resp.close()


def _state_message(seq: int, state: MachineState, previous: MachineState) -> Message:
    ts = time.time_ns()
    event = Event(site="ecole-bench", machine=MACHINE, kind="state", seq=seq, ts=ts,
                  data=StateData(state=state, previous=previous))
    return Message(event.topic, event.encode(), MACHINE, seq, ts)


def _one_run(stack: Stack, run: int, events: int, log: Any) -> list[float]:
    port = free_port()
    config = stack.workshop_yaml(
        f"live{run}", database=stack.new_database(f"live{run}"),
        machines=[{"id": MACHINE, "name": "Tour live", "kind": "lathe", "protocol": "opcua",
                   "url": "opc.tcp://127.0.0.1:4840"}],
        web={"port": port},
    )
    proc = stack.copeau("web", config)
    base = f"http://127.0.0.1:{port}"
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1, read=5))

    def connected() -> bool:
        try:
            resp = http.request("GET", f"{base}/api/tableau")
        except urllib3.exceptions.HTTPError:
            return False
        return resp.status == 200 and bool(resp.json().get("feed_connected"))

    reader = None
    try:
        wait_until(connected, timeout=60, interval=0.2, what="the web service's live board to connect to MQTT")
        reader = SseReader(f"{base}/api/tableau/flux")
        if not reader.snapshot.wait(10):
            raise TimeoutError("no snapshot on the live board's stream")
        rng = random.Random(run)
        sent: dict[int, int] = {}  # event ts → monotonic ns it was written to the broker
        states = (MachineState.RUNNING, MachineState.IDLE)
        for i in range(events):
            time.sleep(rng.uniform(0.3, 0.9))  # the gap between two machine events (the load), not a wait
            msg = _state_message(i, states[i % 2], states[(i + 1) % 2])
            result = publish_now("127.0.0.1", stack.mqtt_port, f"live-pub-{run}-{i}", [msg])
            sent[msg.ts] = result.first_send_ns
        last_ts = max(sent)
        wait_until(lambda: any(since == last_ts for _, since, _ in reader.arrivals), timeout=10,
                   what="the last event on the live board")
        seen: dict[int, int] = {}
        for arrived, since, _state in reader.arrivals:
            if since in sent and since not in seen:
                seen[since] = arrived
        latencies = [(seen[ts] - sent[ts]) / 1e6 for ts in sent if ts in seen]
        if len(latencies) != len(sent):
            log(f"    live board: {len(sent) - len(latencies)} of {len(sent)} events never shown")
        return latencies
    finally:
        if reader is not None:
            reader.close()
        stop_process(proc)


def run_live(stack: Stack, *, runs: int, quick: bool, log: Any = print) -> dict[str, Any]:
    if importlib.util.find_spec("web.live") is None:
        return {"todo": "the live board (web/live.py) is not built yet: not measured"}
    events = 10 if quick else 20
    per_run = []
    for run in range(1, runs + 1):
        lat = _one_run(stack, run, events, log)
        if not lat:
            raise RuntimeError("no event reached the live board")
        per_run.append({"events": events, "shown": len(lat), "p50_ms": percentile(lat, 50),
                        "p99_ms": percentile(lat, 99), "max_ms": max(lat)})
        log(f"  live board run {run}/{runs}: event → SSE p50 {per_run[-1]['p50_ms']:.0f} ms, "
            f"p99 {per_run[-1]['p99_ms']:.0f} ms, {len(lat)}/{events} shown")
    return {
        "p50_ms": summarize(r["p50_ms"] for r in per_run).as_dict(),
        "p99_ms": summarize(r["p99_ms"] for r in per_run).as_dict(),
        "max_ms": summarize(r["max_ms"] for r in per_run).as_dict(),
        "never_shown": sum(r["events"] - r["shown"] for r in per_run),
        "runs": per_run,
    }

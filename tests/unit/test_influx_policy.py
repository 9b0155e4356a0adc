"""The InfluxWriter retry / split / bisect policy, against a tiny scripted HTTP server on loopback.

This checks the policy, decision by decision (the integration tests check the claim against a real influxd).
The writer's sleep is injected: it records the waits and never sleeps, so these tests take milliseconds.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copeau.config import InfluxSettings, Secret
from copeau.errors import StoreError
from copeau.services import free_port
from gateway.influx import InfluxWriter, StoreConfigError, StoreStopped, StoreUnavailable

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Request:
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    lines: list[str]


@dataclass
class ScriptedInflux:
    """Answers each request with the next scripted reply; when the script runs out, acts like InfluxDB:
    lines containing "bad" are refused (400, the others stored), and batches over `max_lines` get a 413."""

    script: list[Reply | Callable[[Request], Reply]] = field(default_factory=list)
    max_lines: int | None = None
    requests: list[Request] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, *, script: list[Reply | Callable[[Request], Reply]] | None = None,
              max_lines: int | None = None) -> None:
        with self.lock:
            self.script = list(script or [])
            self.max_lines = max_lines
            self.requests.clear()
            self.stored.clear()

    def answer(self, request: Request) -> Reply:
        with self.lock:
            self.requests.append(request)
            if request.path == "/query":
                return 200, {}, b'{"results":[{"statement_id":0}]}'
            if self.script:
                step = self.script.pop(0)
                return step(request) if callable(step) else step
            if self.max_lines is not None and len(request.lines) > self.max_lines:
                return 413, {}, b'{"error":"Request Entity Too Large"}'
            bad = [line for line in request.lines if "bad" in line]
            self.stored.extend(line for line in request.lines if "bad" not in line)
            if bad:
                return 400, {}, json.dumps({"error": f"partial write: unable to parse '{bad[0]}': invalid"}).encode()
            return 204, {}, b""

    @property
    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/write"]


def _handler(scripted: ScriptedInflux) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as InfluxDB does
        # Headers and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms per answer.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            params = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/query":
                params.update(urllib.parse.parse_qsl(body))
            lines = body.split("\n") if url.path == "/write" and body else []
            status, headers, payload = scripted.answer(
                Request(url.path, params, {k.lower(): v for k, v in self.headers.items()}, lines)
            )
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ScriptedInflux, int]]:
    scripted = ScriptedInflux()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(scripted))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-influx",
                              daemon=True)
    thread.start()
    try:
        yield scripted, httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@dataclass
class Harness:
    influx: ScriptedInflux
    writer: InfluxWriter
    sleeps: list[float]
    stop: threading.Event


def _harness(server: tuple[ScriptedInflux, int], *, stop_after_sleeps: int | None = None,
             username: str | None = None, port: int | None = None, **kwargs: float) -> Harness:
    scripted, server_port = server
    scripted.reset()
    stop = threading.Event()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # records the wait instead of waiting
        sleeps.append(seconds)
        if stop_after_sleeps is not None and len(sleeps) >= stop_after_sleeps:
            stop.set()

    settings_ = InfluxSettings(host="127.0.0.1", port=port or server_port, database="atelier", username=username,
                               password=Secret(env="COPEAU_TEST_INFLUX_PASSWORD"))
    writer = InfluxWriter(settings_, stop=stop, sleep=sleep, retry_cap_s=kwargs.pop("retry_cap_s", 5.0), **kwargs)
    return Harness(scripted, writer, sleeps, stop)


@pytest.fixture
def harness(server: tuple[ScriptedInflux, int]) -> Iterator[Harness]:
    h = _harness(server)
    yield h
    h.writer.close()


LINES = [f"part,machine=m{i % 3} count={i + 1}i {1_700_000_000_000_000_000 + i}" for i in range(10)]


def test_a_204_stores_the_batch_in_one_request(harness: Harness) -> None:
    result = harness.writer.write(LINES)
    assert (result.stored, result.rejected, result.requests, result.retries) == (10, (), 1, 0)
    assert harness.influx.stored == LINES
    (request,) = harness.influx.writes
    assert request.params == {"db": "atelier", "precision": "ns"}
    assert "authorization" not in request.headers  # no user configured, no credentials sent
    assert harness.sleeps == []


def test_an_empty_batch_makes_no_request(harness: Harness) -> None:
    assert harness.writer.write([]).requests == 0
    assert harness.influx.requests == []


def test_a_413_splits_the_batch_in_halves_until_they_fit(harness: Harness) -> None:
    harness.influx.reset(max_lines=3)
    result = harness.writer.write(LINES)
    assert result.stored == 10 and result.rejected == ()
    assert sorted(harness.influx.stored) == sorted(LINES)
    # 10 → 5+5 → (2+3)+(2+3): 3 refused requests, then 4 accepted ones of at most 3 lines, in order.
    sizes = [len(r.lines) for r in harness.influx.writes]
    assert sizes == [10, 5, 2, 3, 5, 2, 3]
    assert harness.influx.stored == LINES  # halves go out first-half first
    assert harness.sleeps == [] and result.retries == 0  # splitting is not a retry: no wait


def test_a_single_line_still_too_large_is_rejected(harness: Harness) -> None:
    harness.influx.reset(max_lines=0)
    result = harness.writer.write(LINES[:2])
    assert [r.index for r in result.rejected] == [0, 1]
    assert "Too Large" in result.rejected[0].error


def test_a_429_waits_exactly_what_retry_after_says(harness: Harness) -> None:
    harness.influx.reset(script=[(429, {"Retry-After": "7"}, b'{"error":"slow down"}')])
    result = harness.writer.write(LINES)
    assert harness.sleeps == [7.0]
    assert (result.stored, result.requests, result.retries) == (10, 2, 1)
    assert harness.writer.retries == 1


def test_a_503_retry_after_as_an_http_date_and_a_cap(harness: Harness) -> None:
    harness.influx.reset(script=[
        (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b""),  # in the past: retry at once
        (503, {"Retry-After": "86400"}, b""),  # a day: capped at retry_after_max_s (60 s by default)
    ])
    result = harness.writer.write(LINES)
    assert harness.sleeps == [0.0, 60.0]
    assert result.stored == 10


def test_5xx_without_retry_after_back_off_with_jitter_under_the_cap(harness: Harness) -> None:
    harness.influx.reset(script=[(503, {}, b""), (500, {}, b'{"error":"engine: error syncing wal"}'),
                                 (502, {}, b"bad gateway"), (504, {}, b"")])
    result = harness.writer.write(LINES)
    assert (result.stored, result.requests, result.retries) == (10, 5, 4)
    assert len(harness.sleeps) == 4
    assert all(0 < s <= 5.0 for s in harness.sleeps)
    assert harness.influx.stored == LINES


def test_a_400_bisects_until_exactly_the_bad_lines_are_rejected(harness: Harness) -> None:
    lines = [f"m v={i}i {i}" if i not in {3, 17, 18, 63} else f"m bad={i} {i}" for i in range(64)]
    result = harness.writer.write(lines)
    assert [r.index for r in result.rejected] == [3, 17, 18, 63]
    assert [r.line for r in result.rejected] == [lines[i] for i in (3, 17, 18, 63)]
    assert result.rejected[0].error == "partial write: unable to parse 'm bad=3 3': invalid"  # InfluxDB's own text
    assert result.stored == 60
    assert set(harness.influx.stored) == set(lines) - {lines[i] for i in (3, 17, 18, 63)}
    assert harness.sleeps == []  # a 400 is never retried as it is
    # Each request is a distinct slice: the batch is never sent twice as it was.
    slices = [tuple(r.lines) for r in harness.influx.writes]
    assert len(slices) == len(set(slices))
    assert result.requests <= 1 + 2 * 4 * 6  # at most two halves per level (log2 64 = 6) per bad line


@pytest.fixture(scope="module")
def shared_harness(server: tuple[ScriptedInflux, int]) -> Iterator[Harness]:
    h = _harness(server)
    yield h
    h.writer.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bisection_returns_exactly_the_bad_lines_for_any_batch(shared_harness: Harness, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 80), label="lines")
    bad = data.draw(st.sets(st.integers(0, n - 1), max_size=n), label="bad indexes")
    shared_harness.influx.reset()
    lines = [f"m bad={i} {i}" if i in bad else f"m v={i}i {i}" for i in range(n)]
    result = shared_harness.writer.write(lines)
    assert [r.index for r in result.rejected] == sorted(bad)
    assert result.stored == n - len(bad)
    assert set(shared_harness.influx.stored) == {line for i, line in enumerate(lines) if i not in bad}


def test_the_stop_event_aborts_a_write_that_keeps_failing(server: tuple[ScriptedInflux, int]) -> None:
    h = _harness(server, stop_after_sleeps=3)
    h.influx.reset(script=[(503, {}, b"")] * 10)
    with pytest.raises(StoreStopped) as caught:
        h.writer.write(LINES)
    assert len(h.influx.writes) == 3 and len(h.sleeps) == 3
    assert isinstance(caught.value.__cause__, StoreUnavailable)
    assert isinstance(caught.value, StoreError)
    h.writer.close()


def test_a_write_after_stop_still_goes_through_when_influxdb_answers(server: tuple[ScriptedInflux, int]) -> None:
    # Stop aborts retries, not a healthy write: the gateway lets the batch in hand finish.
    h = _harness(server)
    h.stop.set()
    assert h.writer.write(LINES).stored == 10
    h.influx.reset(script=[(500, {}, b"")])
    with pytest.raises(StoreStopped):
        h.writer.write(LINES)
    assert h.sleeps == []  # no wait once stopped
    h.writer.close()


def test_connection_errors_are_retried_until_stop(server: tuple[ScriptedInflux, int]) -> None:
    h = _harness(server, stop_after_sleeps=4, port=free_port())  # nothing listens there
    with pytest.raises(StoreStopped) as caught:
        h.writer.write(LINES)
    assert len(h.sleeps) == 4 and h.writer.retries == 4
    assert isinstance(caught.value.__cause__, StoreUnavailable)
    assert "unreachable" in str(caught.value.__cause__)
    h.writer.close()


def test_loss_and_recovery_are_logged_once_each(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    harness.influx.reset(script=[(500, {}, b"")] * 5)
    with caplog.at_level(logging.INFO, logger="gateway.influx"):
        harness.writer.write(LINES)
        harness.writer.write(LINES)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == ["WARNING", "INFO"], messages
    assert "HTTP 500" in messages[0][1] and "accepted again" in messages[1][1]


def test_bad_credentials_are_a_clear_error_logged_once_and_retried(
    server: tuple[ScriptedInflux, int], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPEAU_TEST_INFLUX_PASSWORD", "s3cret")
    h = _harness(server, username="atelier")
    h.influx.reset(script=[(401, {}, b'{"error":"authorization failed"}')] * 3)
    with caplog.at_level(logging.INFO, logger="gateway.influx"):
        result = h.writer.write(LINES)
    assert result.stored == 10 and len(h.sleeps) == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "influxdb.username" in errors[0].getMessage() and "authorization failed" in errors[0].getMessage()
    expected = "Basic " + base64.b64encode(b"atelier:s3cret").decode()
    assert {r.headers["authorization"] for r in h.influx.writes} == {expected}
    h.writer.close()


def test_a_missing_database_is_created_once_then_retried(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    harness.influx.reset(script=[(404, {}, b'{"error":"database not found: \\"atelier\\""}')] * 2)
    with caplog.at_level(logging.ERROR, logger="gateway.influx"):
        result = harness.writer.write(LINES)
    assert result.stored == 10
    creates = [r.params["q"] for r in harness.influx.requests if r.path == "/query"]
    assert creates == ['CREATE DATABASE "atelier"']
    assert harness.writer.last_error is None
    assert len([r for r in caplog.records if "not found" in r.getMessage()]) == 1


def test_while_failing_the_last_error_says_why(server: tuple[ScriptedInflux, int]) -> None:
    h = _harness(server, stop_after_sleeps=1)
    h.influx.reset(script=[(403, {}, b'{"error":"not authorized"}')])
    with pytest.raises(StoreStopped):
        h.writer.write(LINES)
    assert isinstance(h.writer.last_error, StoreConfigError) and h.writer.last_error.status == 403
    h.writer.close()


def test_ensure_database_warns_and_carries_on_when_it_cannot(
    server: tuple[ScriptedInflux, int], caplog: pytest.LogCaptureFixture
) -> None:
    h = _harness(server, port=free_port())  # nothing listens: as when InfluxDB is down at start-up
    with caplog.at_level(logging.WARNING, logger="gateway.influx"):
        assert h.writer.ensure_database("atelier") is False
    assert "carrying on" in caplog.text
    h.writer.close()

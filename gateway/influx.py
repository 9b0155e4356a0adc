"""Writes to InfluxDB through the v1 HTTP API only (`POST /write`, `/query`), the one surface that InfluxDB
1.x, 2.x and 3.x all speak (see FIELD-NOTES: 1.6 has no /api/v2/write).

Theory of operation: `InfluxWriter.write()` returns only when every line of the batch is either stored or
known to be rejected by InfluxDB, or raises `StoreStopped` when asked to stop first. Writes are idempotent
(same point, same bytes), so re-sending lines that were already stored is harmless; that is what makes the
policy below simple (as Telegraf does it):

- 2xx: stored.
- 400 (and 422, InfluxDB 2.x's "unprocessable"): some lines are bad, and InfluxDB stored the good ones anyway.
  The same batch is never retried as it is: it is cut in halves, and each half is written again, until each
  bad line stands alone and is returned as rejected with InfluxDB's own text.
- 413: the batch is too large; the halves are sent. A single line that is still too large is rejected.
- 429 and 503: wait for `Retry-After` when the server says so, else back off.
- Other 5xx, connection errors and timeouts: back off (full jitter, capped) and retry, forever, until the
  stop event is set.
- 401/403/404: a configuration problem (credentials, database). Retried with backoff as well, because an
  administrator can fix it while we wait, but logged once, as an error that says what to check.

Loss of InfluxDB is logged once, and so is its recovery.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3

from copeau.backoff import full_jitter
from copeau.config import InfluxSettings
from copeau.errors import StoreError

log = logging.getLogger(__name__)

_REJECTS_LINES = frozenset({400, 422})  # the good lines of the batch were stored; the bad ones never will be
_TOO_LARGE = 413
_CONFIG_PROBLEMS = frozenset({401, 403, 404})
_THROTTLED = frozenset({429, 503})


class StoreUnavailable(StoreError):
    """InfluxDB cannot be reached, or answers with a server error for now. Retried."""


class StoreConfigError(StoreError):
    """InfluxDB refuses us for a reason a person must fix: credentials, permissions, database name. Retried."""


class StoreStopped(StoreError):
    """The stop event was set before the batch was stored: the caller must not acknowledge it.

    Chained (`__cause__`) to the failure that was being retried, when there was one.
    """


@dataclass(frozen=True)
class Rejected:
    """One line that InfluxDB refused on its own (a 400 for this single line), with InfluxDB's reason."""

    index: int  # position in the sequence given to write()
    line: str
    error: str


@dataclass(frozen=True)
class WriteResult:
    """What happened to a batch: every line is either stored or rejected."""

    stored: int
    rejected: tuple[Rejected, ...] = ()
    requests: int = 0  # HTTP requests made, retries and halves included
    retries: int = 0  # requests that failed and were made again after a wait


@dataclass(frozen=True)
class _Answer:
    status: int
    error: str
    attempts: int


class InfluxWriter:
    """Batch writer to one InfluxDB database over the v1 API, with the retry/split/bisect policy above.

    Meant for one writer thread (`query()` may be called from others). `sleep` waits between retries; by
    default it waits on the stop event, so that a stop interrupts the wait at once. Tests inject a recorder.
    """

    def __init__(
        self,
        settings: InfluxSettings,
        *,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        retry_base_s: float = 0.2,
        retry_cap_s: float = 10.0,
        retry_after_max_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        backoff: Callable[..., Iterator[float]] = full_jitter,
    ) -> None:
        self.settings = settings
        self.database = settings.database
        self.stop = stop or threading.Event()
        self._sleep = sleep or self.stop.wait
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s
        self._retry_after_max_s = retry_after_max_s
        self._backoff = backoff
        self.retries = 0  # since creation; read live by the gateway's stats
        self.last_error: StoreError | None = None  # the failure being retried now, None when healthy
        self._logged_failure: type[StoreError] | None = None  # log once per kind of trouble, once on recovery
        self._tried_create = False

        self._http = urllib3.PoolManager(
            retries=False,  # the policy above is ours; urllib3 must not retry behind our back
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        )
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.username:
            # 1.x: a real user; 2.x and 3.x: any user name with the token as the password.
            password = settings.password.read() or ""
            headers.update(urllib3.make_headers(basic_auth=f"{settings.username}:{password}"))
        self._headers = headers
        params = urllib.parse.urlencode({"db": settings.database, "precision": "ns"})
        self._write_url = f"{settings.url}/write?{params}"

    # -- writing

    def write(self, lines: Sequence[str]) -> WriteResult:
        """Store `lines` (line protocol, ns timestamps). Returns when each line is stored or rejected.

        Raises StoreStopped if the stop event is set while InfluxDB is failing; some lines may then be stored
        already, which is harmless since the caller will write them again.
        """
        stored = requests = retries = 0
        rejected: list[Rejected] = []
        pending = [(0, len(lines))] if lines else []  # [start, end) slices still to write, last in first out
        while pending:
            start, end = pending.pop()
            answer = self._send(lines[start:end])
            requests += answer.attempts
            retries += answer.attempts - 1
            if answer.status in _REJECTS_LINES or answer.status == _TOO_LARGE:
                if end - start == 1:
                    rejected.append(Rejected(start, lines[start], answer.error))
                else:
                    middle = (start + end) // 2
                    pending.append((middle, end))
                    pending.append((start, middle))  # first half next, so lines go out in order
            else:
                stored += end - start
        rejected.sort(key=lambda r: r.index)
        return WriteResult(stored=stored, rejected=tuple(rejected), requests=requests, retries=retries)

    def _send(self, chunk: Sequence[str]) -> _Answer:
        """POST one chunk until InfluxDB gives a final answer (2xx, 400, 413, 422). Retries everything else."""
        body = "\n".join(chunk).encode()
        delays: Iterator[float] | None = None
        attempts = 0
        while True:
            attempts += 1
            wait: float | None = None
            try:
                resp = self._http.request("POST", self._write_url, body=body, headers=self._headers)
            except urllib3.exceptions.HTTPError as exc:
                failure: StoreError = StoreUnavailable(f"InfluxDB {self.settings.url} unreachable: {exc}")
                failure.__cause__ = exc
            else:
                status = resp.status
                if 200 <= status < 300 or status in _REJECTS_LINES or status == _TOO_LARGE:
                    self._healthy()
                    return _Answer(status, _error_text(resp), attempts)
                failure, wait = self._failure(resp)
            self._unhealthy(failure)
            if delays is None:
                delays = self._backoff(base_s=self._retry_base_s, cap_s=self._retry_cap_s)
            delay = next(delays)
            if wait is not None:
                delay = wait  # the server said when: do as it asks (capped), not sooner
            self._pause(delay, failure)

    def _failure(self, resp: urllib3.BaseHTTPResponse) -> tuple[StoreError, float | None]:
        """Describe a retryable answer; the second item is the wait the server asked for, if any."""
        status, error = resp.status, _error_text(resp)
        url, db = self.settings.url, self.database
        if status in (401, 403):
            who = self.settings.username or "(no user configured)"
            return StoreConfigError(
                f"InfluxDB {url} refused user {who} on database {db!r} (HTTP {status}: {error}). Check "
                "influxdb.username and its password (on 2.x/3.x the password is the token).", status=status,
            ), None
        if status == 404:
            if "database not found" in error and not self._tried_create:
                # Created at start-up, unless InfluxDB was down then or someone dropped it since.
                self._tried_create = True
                self.ensure_database(db)
            return StoreConfigError(
                f"InfluxDB {url}: database {db!r} not found (HTTP 404: {error}). Create it, or on InfluxDB 2.x "
                "map it to a bucket (DBRP).", status=status,
            ), None
        wait = _retry_after(resp, self._retry_after_max_s) if status in _THROTTLED else None
        return StoreUnavailable(f"InfluxDB {url} answered HTTP {status}: {error}", status=status), wait

    def _pause(self, delay: float, failure: StoreError) -> None:
        if self.stop.is_set():
            raise StoreStopped("stopped while InfluxDB was failing; the batch is not stored") from failure
        self.retries += 1
        self._sleep(delay)
        if self.stop.is_set():
            raise StoreStopped("stopped while InfluxDB was failing; the batch is not stored") from failure

    def _unhealthy(self, failure: StoreError) -> None:
        self.last_error = failure
        if self._logged_failure is type(failure):
            return
        self._logged_failure = type(failure)
        if isinstance(failure, StoreConfigError):
            log.error("%s Retrying until it is fixed.", failure)
        else:
            log.warning("%s; retrying (nothing is acknowledged until it is stored)", failure)

    def _healthy(self) -> None:
        if self._logged_failure is not None:
            log.info("InfluxDB %s: writes accepted again (%d retries so far)", self.settings.url, self.retries)
        self._logged_failure = None
        self.last_error = None
        self._tried_create = False

    # -- queries

    def query(self, q: str, *, database: str | None = None) -> dict[str, Any]:
        """Run InfluxQL through `/query` (POST, so that it may also change things) and return the JSON answer.

        For tests and set-up; not retried. Raises StoreError on a refusal or when InfluxDB cannot be reached.
        """
        fields = {"q": q, "db": database or self.database, "epoch": "ns"}
        body = urllib.parse.urlencode(fields)
        headers = {**self._headers, "Content-Type": "application/x-www-form-urlencoded"}
        try:
            resp = self._http.request("POST", f"{self.settings.url}/query", body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise StoreUnavailable(f"InfluxDB {self.settings.url} unreachable: {exc}") from exc
        if resp.status != 200:
            raise StoreError(f"InfluxDB {self.settings.url} /query: HTTP {resp.status}: {_error_text(resp)}",
                             status=resp.status)
        try:
            answer: dict[str, Any] = json.loads(resp.data)
        except ValueError as exc:
            raise StoreError(f"InfluxDB {self.settings.url} /query: not JSON: {resp.data[:200]!r}") from exc
        return answer

    def ensure_database(self, name: str) -> bool:
        """CREATE DATABASE `name` (a no-op when it exists, on 1.x). Returns whether that worked.

        On failure it logs a warning and carries on: InfluxDB 3 creates a database on the first write, and 2.x
        needs a bucket mapped by an administrator; if the database really is missing, writes will say so.
        """
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        try:
            answer = self.query(f'CREATE DATABASE "{quoted}"')
        except StoreError as exc:
            if exc.status == 403 and self._database_listed(name):
                # Production profile: this account may write but not create databases (least privilege), and the
                # administrator made this one. Nothing to report.
                return True
            log.warning("could not create InfluxDB database %r (%s); carrying on", name, exc)
            return False
        errors = [r["error"] for r in answer.get("results", []) if isinstance(r, dict) and "error" in r]
        if errors:
            log.warning("could not create InfluxDB database %r (%s); carrying on", name, errors[0])
            return False
        return True

    def _database_listed(self, name: str) -> bool:
        """Whether SHOW DATABASES, as this account sees it, lists `name` (InfluxDB 1.x lists the databases the
        account has a privilege on)."""
        try:
            answer = self.query("SHOW DATABASES")
        except StoreError:
            return False
        results = answer.get("results") or [{}]
        series = results[0].get("series", []) if isinstance(results[0], dict) else []
        return any(row and row[0] == name for s in series for row in s.get("values") or [])

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.clear()


def _error_text(resp: urllib3.BaseHTTPResponse) -> str:
    """InfluxDB's reason: the JSON `error` of the body, else the X-Influxdb-Error header, else the raw body."""
    data = resp.data or b""
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("error", "message"):  # 1.x says "error"; 2.x and 3.x say "message"
            if isinstance(parsed.get(key), str):
                return str(parsed[key])
    header = resp.headers.get("X-Influxdb-Error")
    if header:
        return str(header)
    return data[:500].decode("utf-8", "replace").strip()


def _retry_after(resp: urllib3.BaseHTTPResponse, max_s: float) -> float | None:
    """Seconds asked for by `Retry-After` (delta seconds or HTTP date), capped at `max_s`; None when absent."""
    value = (resp.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), max_s)


__all__ = [
    "InfluxWriter",
    "Rejected",
    "StoreConfigError",
    "StoreStopped",
    "StoreUnavailable",
    "WriteResult",
]

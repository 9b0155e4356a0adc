"""The live board for the workshop TV (`/tableau`): one tile per machine, updated by server-sent events.

Theory of operation.

- `LiveFeed` keeps one `web.board.LiveBoard` (the pure model) up to date, behind one lock:
  - its own MQTT connection (clean start: what happened while the service was down is read from InfluxDB
    instead) subscribes to `copeau/v1/<site>/+/+` (events and job contexts),
    `copeau/v1/<site>/collectors/+/status` and `copeau/v1/<site>/health/+/+` (collectors and gateways); each
    message is applied in paho's network thread, at once, so that a machine event reaches the browsers well under
    a second later;
  - a worker thread (`copeau-live`) does the slow things: on start and every `reconcile_s` it reads the machines'
    last state and cycle and the parts of the operations on the board from InfluxDB, and the operations' quantity,
    standard cycle, due date and declared scrap from the orders database; every `tick_s` it checks the MQTT link
    and the machines that went quiet (`LiveBoard.expire`);
  - the progress tracker hands it every progress it computes (`ProgressTracker.on_progress`).
- Each change wakes the browsers' streams (`subscribe`), which run in the web server's event loop.
- `GET /api/tableau/flux` (`text/event-stream`): a `snapshot` event (every tile) on connection, then `update`
  events with the tiles that changed, at most `1 / min_interval_s` per second; a `ping` event when nothing
  happened for `heartbeat_s`, so that the page notices a dead stream (and proxies keep it open). `retry` asks
  the browser to reconnect after a second. `GET /api/tableau`: the same snapshot as plain JSON.
- No log-in: the board is read-only and shows machine states, order references and pseudonymous apprentice codes,
  never a name or a customer (docs/live-board.md). The number of streams is capped (`max_streams`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import paho.mqtt.client as paho
import uvicorn
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from copeau.config import Workshop
from copeau.contract import TOPIC_ROOT, EventContext, JobContext, MachineState
from copeau.errors import StoreError
from copeau.influxql import InfluxQuery
from copeau.mqtt import MqttLink
from orders import catalog
from orders.counts import quote
from orders.models import Operation, Order
from orders.progress import NS, Progress, due_instant
from orders.texts import texts
from web.board import DEFAULT_STALE_AFTER_S, BoardView, JobInfo, LiveBoard, MachineInfo, OpKey
from web.dependencies import RequestLang, Web

log = logging.getLogger(__name__)

RETRY_MS = 1000  # how soon a browser reconnects after losing the stream
RETRY_S = 5.0  # how soon InfluxDB and the orders database are asked again after a failure
SEED_WINDOW = "7d"  # a machine's last state and cycle are looked for this far back on start


@dataclass(eq=False)
class _Subscriber:
    """One browser's stream, woken from other threads through its event loop."""

    loop: asyncio.AbstractEventLoop
    changed: asyncio.Event


class LiveFeed:
    """Feeds a LiveBoard from MQTT, InfluxDB, the orders database and the progress tracker (module docstring)."""

    def __init__(
        self,
        workshop: Workshop,
        *,
        sessions: sessionmaker[Session],
        mqtt: bool = True,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        reconcile_s: float = 30.0,
        tick_s: float = 1.0,
        heartbeat_s: float = 5.0,
        min_interval_s: float = 0.25,
        max_streams: int = 50,
        client_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.site = workshop.site.id
        self.timezone = workshop.web.timezone
        self.board = LiveBoard([MachineInfo(m.id, m.name, m.kind.value) for m in workshop.machines],
                               site=self.site, collector=workshop.collector.id, stale_after_s=stale_after_s)
        self.reconcile_s = reconcile_s
        self.tick_s = tick_s
        self.heartbeat_s = heartbeat_s
        self.min_interval_s = min_interval_s
        self.max_streams = max_streams
        self._sessions = sessions
        self._clock = clock
        self._query = InfluxQuery(workshop.influxdb, timeout_s=5.0)
        self._lock = threading.Lock()  # around the board
        self._subscribers: set[_Subscriber] = set()
        self._subscribers_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resync = threading.Event()  # the MQTT link came back: read again what was missed
        self._closing = False  # the web server is shutting down: streams end
        self._malformed_logged_at: float | None = None
        self._failing = False
        self._thread: threading.Thread | None = None
        self.link: MqttLink | None = None
        self._link_started = False
        if mqtt:
            self.link = MqttLink(workshop.mqtt, client_id=client_id or f"copeau-web-{self.site}-tableau",
                                 clean_start=True, on_connected=self._connected, on_message=self._message)

    # -- lifecycle

    def start(self) -> None:
        if self.link is not None:
            self.link.start()
            self._link_started = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="copeau-live", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.link is not None and self._link_started:
            self.link.stop()

    # -- what the board shows

    def snapshot(self) -> BoardView:
        with self._lock:
            return self.board.snapshot()

    def changes_since(self, rev: int) -> BoardView | None:
        with self._lock:
            return self.board.changes_since(rev)

    def progress(self, progress: list[Progress]) -> None:
        """The tracker computed progress (called in its thread)."""
        with self._lock:
            changed = self.board.progress(progress)
        if changed:
            self._notify()

    # -- browsers' streams

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Event]:
        """An event set whenever the board changes (to be awaited in the running event loop)."""
        sub = _Subscriber(asyncio.get_running_loop(), asyncio.Event())
        with self._subscribers_lock:
            self._subscribers.add(sub)
        try:
            yield sub.changed
        finally:
            with self._subscribers_lock:
                self._subscribers.discard(sub)

    def close_streams(self) -> None:
        """End every stream (the web server is shutting down; the browsers will reconnect to the next one)."""
        self._closing = True
        self._notify()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def streams(self) -> int:
        with self._subscribers_lock:
            return len(self._subscribers)

    def _notify(self) -> None:
        with self._subscribers_lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            with contextlib.suppress(RuntimeError):  # its event loop is closed: the stream is gone
                sub.loop.call_soon_threadsafe(sub.changed.set)

    # -- paho's network thread

    def _connected(self, _session_present: bool) -> None:
        assert self.link is not None
        self.link.client.subscribe([(f"{TOPIC_ROOT}/{self.site}/+/+", 1),
                                    (f"{TOPIC_ROOT}/{self.site}/collectors/+/status", 1),
                                    (f"{TOPIC_ROOT}/{self.site}/health/+/+", 1)])
        with self._lock:
            changed = self.board.feed_connected(True)
        self._resync.set()
        self._wake.set()
        if changed:
            self._notify()

    def _message(self, msg: paho.MQTTMessage) -> None:
        try:
            with self._lock:
                applied = self.board.message(msg.topic, bytes(msg.payload), now=self._clock())
                lookups = bool(applied.changed) and bool(self.board.unknown_jobs() or self.board.unloaded_operations())
        except Exception:
            # LiveBoard.message turns every malformed message into a count (property-tested); anything else is a
            # bug. paho would re-raise it and end its network thread, so that the board would freeze without a
            # word: say it loudly, drop that message, and keep the board alive.
            log.exception("live board: a message on %s could not be applied (a bug); it is ignored", msg.topic)
            return
        if applied.problem is not None:
            self._malformed(applied.problem)
        if lookups:
            self._wake.set()
        if applied.changed:
            self._notify()

    def _malformed(self, problem: str) -> None:
        now = self._clock()
        if self._malformed_logged_at is None or now - self._malformed_logged_at >= 60:
            self._malformed_logged_at = now
            log.warning("live board: a message does not follow the contract and is ignored (%d so far; said at "
                        "most once a minute): %s", self.board.malformed, problem)

    # -- the worker thread

    def _run(self) -> None:
        next_reconcile = retry_at = 0.0
        while not self._stop.is_set():
            now = self._clock()
            connected = self.link is not None and self.link.connected.is_set()
            with self._lock:
                changed = bool(self.board.expire(now=now)) | self.board.feed_connected(connected)
            if changed:
                self._notify()
            if now >= retry_at:  # after a failure, InfluxDB and the database are left alone for RETRY_S
                if now >= next_reconcile or self._resync.is_set():
                    self._resync.clear()
                    ok = self._reconcile()
                    if ok:
                        next_reconcile = now + self.reconcile_s
                else:
                    ok = self._look_up()
                if not ok:
                    retry_at = now + RETRY_S
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def _reconcile(self) -> bool:
        """Everything read again: open sessions, last states and cycles, jobs and stored parts."""
        try:
            self._seed()
            with self._lock:
                shown = self.board.shown_operations()
            self._load(jobs=shown, parts=shown)
        except (StoreError, SQLAlchemyError) as exc:
            self._trouble(exc)
            return False
        self._recovered()
        return True

    def _look_up(self) -> bool:
        """Jobs and parts of the operations that came onto the board since the last look."""
        with self._lock:
            jobs, parts = self.board.unknown_jobs(), self.board.unloaded_operations()
        if not jobs and not parts:
            return True
        try:
            self._load(jobs=jobs, parts=parts)
        except (StoreError, SQLAlchemyError) as exc:
            self._trouble(exc)
            return False
        self._recovered()
        return True

    def _seed(self) -> None:
        now = self._clock()
        contexts = []
        with self._sessions() as db:
            for s in catalog.list_sessions(db, open_only=True, limit=1000):
                try:
                    contexts.append(JobContext(
                        site=self.site, machine=s.machine_id, ts=_ns(s.started_at),
                        context=EventContext(order=s.operation.order.reference, operation=s.operation.sequence,
                                             apprentice=s.apprentice.code)))
                except ValidationError:  # a machine no longer configured under that id, say: MQTT will tell
                    continue
        site = quote(self.site)
        states = self._query.series(f'SELECT last("state") FROM "state" WHERE "site" = {site} '
                                    f"AND time > now() - {SEED_WINDOW} GROUP BY \"machine\"")
        cycles = self._query.series(f'SELECT last("duration_s") FROM "cycle" WHERE "site" = {site} AND "phase" = '
                                    f"'end' AND \"outcome\" = 'completed' AND time > now() - {SEED_WINDOW} "
                                    'GROUP BY "machine"')
        changed: set[str] = set()
        with self._lock:
            for context in contexts:
                changed |= self.board.context(context)
            for series in states:
                ts, value = series["values"][0][:2]
                with contextlib.suppress(ValueError):
                    changed |= self.board.seed_state(series["tags"]["machine"], MachineState(value), int(ts), now=now)
            for series in cycles:
                ts, value = series["values"][0][:2]
                if value is not None:
                    changed |= self.board.seed_cycle(series["tags"]["machine"], float(value), int(ts))
        if changed:
            self._notify()

    def _load(self, *, jobs: set[OpKey], parts: set[OpKey]) -> None:
        for key in sorted(jobs):
            info = self._job_info(key)
            with self._lock:
                changed = self.board.job(info)
            if changed:
                self._notify()
        for key in sorted(parts):
            points = self._stored_parts(key)
            with self._lock:
                changed = self.board.stored_parts(key, points)
            if changed:
                self._notify()

    def _job_info(self, key: OpKey) -> JobInfo:
        order, sequence = key
        with self._sessions() as db:
            operation = db.scalar(select(Operation).join(Order)
                                  .where(Order.reference == order, Operation.sequence == sequence))
            if operation is None:
                return JobInfo(order=order, operation=sequence)  # not in the database: codes only
            scrap = catalog.declared_scrap(db, order_id=operation.order_id).get(sequence, 0)
            return JobInfo(order=order, operation=sequence, quantity=operation.order.quantity,
                           standard_cycle_s=operation.standard_cycle_s,
                           due_ns=due_instant(operation.order.due_date, self.timezone), scrap=scrap)

    def _stored_parts(self, key: OpKey) -> list[tuple[str, int, int]]:
        """(machine, ts, count) of every `part` point InfluxDB holds for the operation."""
        where = (f'"site" = {quote(self.site)} AND "order" = {quote(key[0])} '
                 f'AND "operation" = {quote(str(key[1]))}')
        points = []
        for series in self._query.series(f'SELECT "count" FROM "part" WHERE {where} GROUP BY "machine"'):
            machine = series.get("tags", {}).get("machine", "")
            points += [(machine, int(ts), int(count)) for ts, count in series.get("values", []) if count is not None]
        return points

    def _trouble(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("live board: cannot read InfluxDB or the orders database (%s); trying again", exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("live board: InfluxDB and the orders database answer again")
        self._failing = False


def _ns(when: datetime) -> int:
    return int(when.timestamp()) * NS + when.microsecond * 1000


class StreamingServer(uvicorn.Server):
    """uvicorn's server, ending the board's event streams when it shuts down. uvicorn waits for every response to
    end before it stops, and an event stream never ends by itself: without this, one TV on the board would hold
    Ctrl-C or a service stop for ever (or until `timeout_graceful_shutdown`, with a traceback per stream)."""

    async def shutdown(self, sockets: Any = None) -> None:
        feed = getattr(getattr(self.config.app, "state", None), "live", None)
        if isinstance(feed, LiveFeed):
            feed.close_streams()
        await super().shutdown(sockets)


# -- routes

router = APIRouter()
api = APIRouter(prefix="/api/tableau", tags=["tableau"])


def get_feed(request: Request) -> LiveFeed:
    feed: LiveFeed = request.app.state.live
    return feed


Feed = Annotated[LiveFeed, Depends(get_feed)]


def stream_slot(feed: Feed) -> LiveFeed:
    """Refuse a stream beyond `max_streams` (the board needs no log-in: bound what it may cost)."""
    if feed.streams >= feed.max_streams:
        raise HTTPException(status_code=503, headers={"Retry-After": "10"})
    return feed


@router.get("/tableau", response_class=HTMLResponse, include_in_schema=False)
def board_page(request: Request, web: Web, feed: Feed, lang: RequestLang) -> Response:
    """The board, for a TV: every text from the catalogue, every number from the stream."""
    script = {
        "texts": texts("live.", lang),
        "timezone": feed.timezone,
        "heartbeat_ms": int(feed.heartbeat_s * 1000),
        "stream": "/api/tableau/flux",
    }
    # As many columns as rows, about: a 16:9 screen holds tiles about twice as wide as tall (live.css).
    n = max(len(web.workshop.machines), 1)
    cols = math.ceil(math.sqrt(n))
    return web.pages.render(
        request, "live.html", site=web.workshop.site, machines=web.workshop.machines, cols=cols,
        rows=math.ceil(n / cols),
        # `</` would end the <script> element that holds the JSON.
        script_json=json.dumps(script, ensure_ascii=False).replace("</", "<\\/"),
    )


@api.get("", response_model=BoardView)
def board_snapshot(feed: Feed) -> BoardView:
    """Every tile now (the stream's first event, as plain JSON)."""
    return feed.snapshot()


@api.get("/flux", response_class=EventSourceResponse)
async def board_stream(feed: Annotated[LiveFeed, Depends(stream_slot)]) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: `snapshot` (every tile), then `update` (the tiles that changed), `ping` when quiet."""
    loop = asyncio.get_running_loop()
    with feed.subscribe() as changed:
        view = feed.snapshot()
        yield ServerSentEvent(event="snapshot", data=view, retry=RETRY_MS)
        sent, last = view.rev, loop.time()
        while True:
            try:
                async with asyncio.timeout(feed.heartbeat_s):
                    await changed.wait()
            except TimeoutError:
                yield ServerSentEvent(event="ping", data={"rev": sent})
                continue
            pause = feed.min_interval_s - (loop.time() - last)
            if pause > 0:  # at most one update per min_interval_s: what changed meanwhile comes with it
                await asyncio.sleep(pause)
            changed.clear()
            if feed.closing:
                return
            update = feed.changes_since(sent)
            if update is None:
                continue
            yield ServerSentEvent(event="update", data=update)
            sent, last = update.rev, loop.time()

"""The FastAPI application factory. Nothing is built at import time: the database (migrated to the newest
revision), the MQTT links, the progress tracker and the live board's feed are built by the lifespan, and stopped
by it.

    app = create_app(load_workshop("config/workshop.yaml"))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from copeau.config import Workshop
from copeau.contract import JobContext
from gateway.influx import InfluxWriter
from orders.counts import InfluxCounts
from orders.database import database_url_for, make_engine, session_factory
from orders.migrate import upgrade
from orders.station import Stations
from orders.tracking import ProgressTracker
from web import admin, kiosk, live, problems
from web.access import KioskKeys, parse_kiosk_keys
from web.badges import StationLink, reader_scans
from web.dependencies import WebContext, now
from web.pages import STATIC, Pages

log = logging.getLogger(__name__)


@dataclass
class _Running:
    """What the lifespan started and must stop."""

    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)


def create_app(
    workshop: Workshop,
    *,
    database_url: str | None = None,
    mqtt: bool = True,
    progress: bool = True,
    kiosk_keys: Mapping[str, str] | None = None,
    live_options: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The web service for `workshop`.

    - `database_url`: default `web.database_url` (environment or file), else `<state_dir>/copeau.sqlite`.
    - `mqtt`: connect to the broker (publish job contexts, listen to badge readers). Off: contexts are only logged.
    - `progress`: run the progress tracker thread (writes `order_progress` to InfluxDB).
    - `kiosk_keys`: machine → key; default `web.kiosk_keys` (environment or file). Checked like the configured ones.
    - `live_options`: keyword arguments of the live board's `web.live.LiveFeed` (e.g. `stale_after_s`).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = _Running()
        web = await asyncio.to_thread(_build, workshop, database_url, mqtt, kiosk_keys, running)
        app.state.copeau = web
        # The live board (/tableau): its own MQTT connection; the tracker hands it every progress it computes.
        app.state.live = board = live.LiveFeed(workshop, sessions=web.sessions, mqtt=mqtt,
                                                     **(live_options or {}))
        web.tracker.on_progress = board.progress
        try:
            await asyncio.to_thread(_start, web, progress, running)
            await asyncio.to_thread(board.start)
            yield
        finally:
            await asyncio.to_thread(board.stop)
            await asyncio.to_thread(_stop, web, running)

    app = FastAPIOffline(  # a FastAPI app whose Swagger UI loads its scripts from Copeau, not from a CDN
        title="Copeau",
        summary="Suivi d'atelier pour les Écoles de production : bornes, commandes, avancement.",
        version="1",
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        static_url="/api/docs/static",
    )
    problems.install(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(kiosk.router)
    app.include_router(kiosk.api)
    app.include_router(admin.pages)
    app.include_router(admin.api)
    app.include_router(live.router)
    app.include_router(live.api)
    return app


def _build(
    workshop: Workshop, database_url: str | None, mqtt: bool, kiosk_keys: Mapping[str, str] | None, running: _Running
) -> WebContext:
    machines = [m.id for m in workshop.machines]
    if kiosk_keys is None:
        keys = parse_kiosk_keys(workshop.web.kiosk_keys.read(), machines=machines)
    else:
        keys = parse_kiosk_keys("\n".join(f"{m}={k}" for m, k in kiosk_keys.items()), machines=machines)
    if not keys:
        log.warning("no kiosk key configured (web.kiosk_keys): every kiosk will be refused")
    url = database_url or database_url_for(workshop)
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    counts = InfluxCounts(workshop.influxdb, site=workshop.site.id)
    link = StationLink(workshop) if mqtt else None
    publish: Callable[[JobContext], None] = link.publish_context if link is not None else _log_context
    settings = workshop.web
    stations = Stations(machines=workshop.machines, site=workshop.site.id, sessions=sessions, counts=counts,
                        publish=publish, settings=settings)
    tracker = ProgressTracker(
        site=workshop.site.id, sessions=sessions, counts=counts,
        writer=InfluxWriter(workshop.influxdb, stop=running.stop), timezone=settings.timezone,
        rate_window_s=settings.rate_window_s, interval_s=settings.progress_interval_s,
    )
    if link is not None:
        link.on_badge = reader_scans(stations)
        link.on_reconnected = lambda: stations.republish_contexts(now=now())
    return WebContext(workshop=workshop, engine=engine, sessions=sessions, stations=stations, counts=counts,
                      tracker=tracker, kiosk_keys=KioskKeys(keys), pages=Pages(timezone=settings.timezone), link=link)


def _start(web: WebContext, progress: bool, running: _Running) -> None:
    if web.link is not None:
        web.link.start()
    # The broker may have lost retained contexts (or never had them): say again what each machine is doing.
    web.stations.republish_contexts(now=now())
    if progress:
        thread = threading.Thread(target=web.tracker.run, args=(running.stop,), name="copeau-progress", daemon=True)
        thread.start()
        running.threads.append(thread)


def _stop(web: WebContext, running: _Running) -> None:
    running.stop.set()
    web.tracker.poke()
    for thread in running.threads:
        thread.join(timeout=10)
    if web.link is not None:
        web.link.stop(timeout_s=5)
    web.tracker.writer.close()
    web.engine.dispose()


def _log_context(context: JobContext) -> None:
    log.info("MQTT off: job context of %s not published: %s", context.machine, context.context)

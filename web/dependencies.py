"""FastAPI dependencies: the service's context, the reader's language, and who is asking (kiosk or maître)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from copeau.config import Workshop
from orders.counts import PartCounts
from orders.models import MaitreSession
from orders.station import Stations
from orders.texts import Lang
from orders.tracking import ProgressTracker
from web.access import (
    SESSION_COOKIE,
    KioskForbidden,
    KioskKeyRequired,
    KioskKeys,
    LoginRequired,
    carries_kiosk_key,
    check_csrf,
    find_login,
    kiosk_csrf,
    presented_kiosk,
)
from web.badges import StationLink
from web.language import request_lang
from web.pages import Pages


@dataclass
class WebContext:
    """Everything the routes use, built by the lifespan (`web.app`)."""

    workshop: Workshop
    engine: Engine
    sessions: sessionmaker[Session]
    stations: Stations
    counts: PartCounts
    tracker: ProgressTracker
    kiosk_keys: KioskKeys
    pages: Pages
    link: StationLink | None = None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error."""
        with self.sessions.begin() as db:
            yield db


def now() -> datetime:
    return datetime.now(UTC)


def get_web(request: Request) -> WebContext:
    web: WebContext = request.app.state.copeau
    return web


Web = Annotated[WebContext, Depends(get_web)]
RequestLang = Annotated[Lang, Depends(request_lang)]


async def form_csrf(request: Request) -> str | None:
    """The `csrf` field of a submitted form (Starlette caches the parsed form for the route)."""
    if request.method in ("GET", "HEAD") or not request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        return None
    value = (await request.form()).get("csrf")
    return value if isinstance(value, str) else None


FormCsrf = Annotated[str | None, Depends(form_csrf)]


def require_maitre(request: Request, web: Web, form_token: FormCsrf) -> MaitreSession:
    """The logged-in maître. A kiosk key gets 403 here (kiosks do kiosk actions only); no log-in gets 401."""
    if carries_kiosk_key(request):
        raise KioskForbidden
    with web.transaction() as db:
        login = find_login(db, token=request.cookies.get(SESSION_COOKIE), now=now())
    if login is None:
        raise LoginRequired
    check_csrf(request, login.csrf, form_token=form_token)
    return login


Maitre = Annotated[MaitreSession, Depends(require_maitre)]


def kiosk_machine(machine: str, request: Request, web: Web) -> str:
    """The machine of a kiosk route, once the request proved it is that machine's kiosk."""
    web.stations.machine(machine)  # UnknownMachine (404) before anything is said about keys
    presented, by_header = presented_kiosk(request, web.kiosk_keys)
    if presented is None:
        raise KioskKeyRequired(machine=machine)
    if presented != machine:
        raise KioskForbidden
    if not by_header:  # a cookie is sent by the browser on its own: check that the page itself asks
        key = web.kiosk_keys.key_of(machine) or ""
        check_csrf(request, kiosk_csrf(key, machine))
    return machine


KioskMachine = Annotated[str, Depends(kiosk_machine)]

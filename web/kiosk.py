"""The kiosk at each machine: one page, driven by a USB reader that types a code and Enter, and its small JSON
API. Thin: every decision is in `orders.station`.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from orders import catalog
from orders.station import Via
from orders.texts import texts
from web.access import KIOSK_COOKIE, BadKioskKey, KioskForbidden, KioskKeyRequired, kiosk_csrf, presented_kiosk
from web.dependencies import KioskMachine, RequestLang, Web, now
from web.pages import ONE_YEAR_S, remember_lang
from web.problems import documented
from web.schemas import DeclarationIn, JobChoiceIn, KioskState, ScanIn

router = APIRouter()
api = APIRouter(prefix="/api/kiosque", tags=["kiosque"],
                responses=documented(400, 401, 403, 404, 409, 422, 429, 503))

POLL_MS = 2000


@router.get("/kiosque/{machine}", response_class=HTMLResponse, include_in_schema=False)
def kiosk_page(machine: str, request: Request, web: Web, lang: RequestLang, cle: str | None = None) -> Response:
    """The kiosk. Opened once with `?cle=<key>`: the key goes into a cookie and leaves the address bar."""
    m = web.stations.machine(machine)
    if cle is not None:
        if web.kiosk_keys.machine_for(cle) != machine:
            raise BadKioskKey(machine=machine)
        query = urlencode({"lang": request.query_params["lang"]}) if "lang" in request.query_params else ""
        response = RedirectResponse(f"/kiosque/{machine}" + (f"?{query}" if query else ""), status_code=303)
        response.set_cookie(KIOSK_COOKIE, cle, max_age=ONE_YEAR_S, httponly=True, samesite="strict",
                            secure=web.workshop.web.secure_cookies)
        remember_lang(request, response)
        return response
    presented, _ = presented_kiosk(request, web.kiosk_keys)
    if presented is None:
        raise KioskKeyRequired(machine=machine)
    if presented != machine:
        raise KioskForbidden
    with web.transaction() as db:
        reasons = [(r.code, r.label(lang)) for r in catalog.scrap_reasons(db)]
    script_texts = texts("kiosk.", lang) | {f"kind.{k}": v for k, v in texts("machine_kind.", lang).items()}
    return web.pages.render(
        request, "kiosk.html", machine=m, reasons=reasons, poll_ms=POLL_MS,
        csrf=kiosk_csrf(web.kiosk_keys.key_of(machine) or "", machine),
        # `</` would end the <script> element that holds the JSON.
        texts_json=json.dumps(script_texts, ensure_ascii=False).replace("</", "<\\/"),
    )


@api.get("/{machine}/etat", response_model=KioskState)
def state(machine: KioskMachine, web: Web) -> KioskState:
    """The station now, with live counts from InfluxDB (the kiosk polls it every 2 s)."""
    return KioskState.of(web.stations.view(machine=machine, now=now()))


@api.post("/{machine}/scan", response_model=KioskState)
def scan(machine: KioskMachine, body: ScanIn, web: Web) -> KioskState:
    """A code typed by the reader: a badge, or a job card (`<order>/<operation>`)."""
    return KioskState.of(web.stations.scan(machine=machine, code=body.code, via=Via.KIOSK, now=now()))


@api.post("/{machine}/travail", response_model=KioskState)
def choose_job(machine: KioskMachine, body: JobChoiceIn, web: Web) -> KioskState:
    """A job tapped in the list of planned jobs (after the badge)."""
    view = web.stations.choose_job(machine=machine, order=body.order, operation=body.operation, now=now())
    return KioskState.of(view)


@api.post("/{machine}/declaration", response_model=KioskState)
def declare(machine: KioskMachine, body: DeclarationIn, web: Web) -> KioskState:
    """End of job: good parts and scrap by reason. The session closes."""
    view = web.stations.declare(machine=machine, good=body.good, scrap=body.scrap, now=now())
    web.tracker.poke()
    return KioskState.of(view)


@api.post("/{machine}/annuler", response_model=KioskState)
def cancel(machine: KioskMachine, web: Web) -> KioskState:
    """Forget the badge just scanned (before a job is chosen)."""
    return KioskState.of(web.stations.cancel(machine=machine, now=now()))

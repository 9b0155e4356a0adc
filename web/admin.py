"""What the maîtres use: log-in, orders and their progress, CSV import, apprentices, sessions (corrections),
scrap reasons. Pages in French (English with `?lang=en`) and the same actions as a JSON API under `/api/`.
Thin routes: every decision is in `orders.catalog` and `orders.station`.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from orders import catalog
from orders.errors import CountsUnavailable, InvalidCredentials, InvalidValue
from orders.progress import Progress
from web.access import SESSION_COOKIE, check_origin, close_login, open_login
from web.dependencies import Maitre, RequestLang, Web, now
from web.problems import documented
from web.schemas import (
    ApprenticeCreate,
    ApprenticePublic,
    DeclarationIn,
    ImportPublic,
    LoginIn,
    LoginPublic,
    OrderPublic,
    ProgressPublic,
    ScrapReasonIn,
    ScrapReasonPublic,
    SessionPublic,
)

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api", tags=["gestion"], responses=documented(400, 401, 403, 404, 409, 422, 503))

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
NOTICES = frozenset({"imported", "apprentice_added", "session_closed", "declared", "reason_added", "reason_changed"})


async def form_fields(request: Request) -> dict[str, str]:
    """Every text field of the submitted form (for fields named after data, like `scrap_COTE`)."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


FormFields = Annotated[dict[str, str], Depends(form_fields)]
# A session id the database can hold (SQLite and PostgreSQL integers are 64-bit): a larger one is a 422, not a 500.
SessionId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _local(path: str | None) -> str:
    """Where to go after log-in: a path on this site only (never an open redirect)."""
    if not path or not path.startswith("/") or path.startswith("//") or urlsplit(path).netloc:
        return "/admin"
    return path


def _set_login_cookie(web: Web, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        secure=web.workshop.web.secure_cookies, max_age=12 * 3600)


def _count(value: str, field: str) -> int:
    text = value.strip() or "0"
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses (a 500 instead of a clear refusal).
    if not (text.isascii() and text.isdigit()):
        raise InvalidValue(field=field, problem="orders.value.not_negative")
    if len(text) > 9:  # more parts than a school makes in years (and int() refuses thousands of digits)
        raise InvalidValue(field=field, problem="orders.value.too_long", max=9)
    return int(text)


def _scrap_from_form(fields: dict[str, str]) -> dict[str, int]:
    return {key.removeprefix("scrap_"): _count(value, "scrap") for key, value in fields.items()
            if key.startswith("scrap_")}


def _progress(web: Web) -> tuple[dict[tuple[str, int], Progress], bool]:
    try:
        return {(p.order, p.operation): p for p in web.tracker.compute(now=now())}, True
    except CountsUnavailable:
        return {}, False


# -- pages


@pages.get("/", response_class=HTMLResponse)
def home(request: Request, web: Web) -> Response:
    return web.pages.render(request, "home.html", machines=web.workshop.machines, site=web.workshop.site)


@pages.get("/connexion", response_class=HTMLResponse)
def login_page(request: Request, web: Web, suite: str | None = None) -> Response:
    return web.pages.render(request, "login.html", error=None, suite=_local(suite))


@pages.post("/connexion")
def login_form(
    *, request: Request, web: Web, lang: RequestLang,
    login: Annotated[str, Form()], password: Annotated[str, Form()], suite: Annotated[str, Form()] = "/admin",
) -> Response:
    check_origin(request)
    try:
        with web.transaction() as db:
            maitre = catalog.authenticate(db, login=login, password=password)
            token, _ = open_login(db, maitre=maitre, now=now())
    except InvalidCredentials as exc:
        return web.pages.render(request, "login.html", status_code=401, error=exc.message(lang), suite=_local(suite))
    response = RedirectResponse(_local(suite), status_code=303)
    _set_login_cookie(web, response, token)
    return response


@pages.post("/deconnexion")
def logout_form(request: Request, web: Web, _maitre: Maitre) -> Response:
    with web.transaction() as db:
        close_login(db, token=request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@pages.get("/admin", response_class=HTMLResponse)
def orders_page(request: Request, web: Web, maitre: Maitre) -> Response:
    progress, counts_ok = _progress(web)
    with web.transaction() as db:
        orders = catalog.list_orders(db)
    return web.pages.render(request, "admin_orders.html", maitre=maitre, orders=orders, progress=progress,
                            counts_ok=counts_ok, notice=request.query_params.get("notice"), notices=NOTICES)


@pages.get("/admin/import", response_class=HTMLResponse)
def import_page(request: Request, web: Web, maitre: Maitre) -> Response:
    return web.pages.render(request, "admin_import.html", maitre=maitre)


@pages.post("/admin/import")
async def import_form(request: Request, web: Web, maitre: Maitre, fichier: UploadFile) -> Response:
    data = await fichier.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidValue(field="file", problem="orders.value.file_too_large", max_mb=MAX_UPLOAD_BYTES // 2**20)

    def run() -> int:
        with web.transaction() as db:
            return len(catalog.import_orders(db, data=data, now=now()))

    count = await run_in_threadpool(run)
    web.tracker.poke()
    return RedirectResponse(f"/admin?notice=imported&n={count}", status_code=303)


@pages.get("/admin/apprentis", response_class=HTMLResponse)
def apprentices_page(request: Request, web: Web, maitre: Maitre) -> Response:
    with web.transaction() as db:
        apprentices = catalog.list_apprentices(db)
    return web.pages.render(request, "admin_apprentices.html", maitre=maitre, apprentices=apprentices,
                            notice=request.query_params.get("notice"), notices=NOTICES)


@pages.post("/admin/apprentis")
def apprentices_form(
    web: Web, _maitre: Maitre,
    first_name: Annotated[str, Form()], last_name: Annotated[str, Form()], badge: Annotated[str, Form()],
) -> Response:
    with web.transaction() as db:
        catalog.create_apprentice(db, first_name=first_name, last_name=last_name, badge=badge, now=now())
    return RedirectResponse("/admin/apprentis?notice=apprentice_added", status_code=303)


@pages.get("/admin/sessions", response_class=HTMLResponse)
def sessions_page(request: Request, web: Web, maitre: Maitre, lang: RequestLang) -> Response:
    with web.transaction() as db:
        sessions = catalog.list_sessions(db)
        reasons = [(r.code, r.label(lang)) for r in catalog.scrap_reasons(db)]
    return web.pages.render(request, "admin_sessions.html", maitre=maitre, sessions=sessions, reasons=reasons,
                            notice=request.query_params.get("notice"), notices=NOTICES)


@pages.post("/admin/sessions/{session_id}/cloture")
def close_session_form(session_id: SessionId, web: Web, _maitre: Maitre) -> Response:
    web.stations.close_session(session_id=session_id, now=now())
    return RedirectResponse("/admin/sessions?notice=session_closed", status_code=303)


@pages.post("/admin/sessions/{session_id}/declaration")
def declare_session_form(session_id: SessionId, web: Web, _maitre: Maitre, fields: FormFields) -> Response:
    web.stations.declare_for_session(session_id=session_id, good=_count(fields.get("good", ""), "good"),
                                     scrap=_scrap_from_form(fields), now=now())
    web.tracker.poke()
    return RedirectResponse("/admin/sessions?notice=declared", status_code=303)


@pages.get("/admin/motifs", response_class=HTMLResponse)
def reasons_page(request: Request, web: Web, maitre: Maitre) -> Response:
    with web.transaction() as db:
        reasons = catalog.scrap_reasons(db, active_only=False)
    return web.pages.render(request, "admin_reasons.html", maitre=maitre, reasons=reasons,
                            notice=request.query_params.get("notice"), notices=NOTICES)


@pages.post("/admin/motifs")
def reasons_form(
    web: Web, _maitre: Maitre,
    code: Annotated[str, Form()], label_fr: Annotated[str, Form()], label_en: Annotated[str, Form()] = "",
) -> Response:
    with web.transaction() as db:
        catalog.add_scrap_reason(db, code=code, label_fr=label_fr, label_en=label_en)
    return RedirectResponse("/admin/motifs?notice=reason_added", status_code=303)


@pages.post("/admin/motifs/{code}/actif")
def reason_active_form(code: str, web: Web, _maitre: Maitre, active: Annotated[bool, Form()]) -> Response:
    with web.transaction() as db:
        catalog.set_scrap_reason_active(db, code=code, active=active)
    return RedirectResponse("/admin/motifs?notice=reason_changed", status_code=303)


# -- JSON API


@api.post("/connexion", response_model=LoginPublic)
def login_api(request: Request, body: LoginIn, web: Web) -> Response:
    """Log in; the session cookie is set, and the CSRF token to send back in `X-CSRF-Token` is returned."""
    check_origin(request)
    with web.transaction() as db:
        maitre = catalog.authenticate(db, login=body.login, password=body.password)
        token, login = open_login(db, maitre=maitre, now=now())
        public = LoginPublic(login=maitre.login, display_name=maitre.display_name, csrf=login.csrf)
    response = JSONResponse(public.model_dump())
    _set_login_cookie(web, response, token)
    return response


@api.post("/deconnexion", status_code=204)
def logout_api(request: Request, web: Web, _maitre: Maitre) -> Response:
    with web.transaction() as db:
        close_login(db, token=request.cookies.get(SESSION_COOKIE))
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE)
    return response


@api.get("/commandes", response_model=list[OrderPublic])
def orders_api(web: Web, _maitre: Maitre, closed: bool = False) -> list[OrderPublic]:
    """Orders by due date, with their operations (`closed=true` to include closed orders)."""
    with web.transaction() as db:
        return [OrderPublic.of(o) for o in catalog.list_orders(db, include_closed=closed)]


@api.post("/commandes/import", response_model=ImportPublic, status_code=201)
async def import_api(web: Web, _maitre: Maitre, fichier: UploadFile) -> ImportPublic:
    """Import an order file (CSV, see docs/orders-and-kiosk.md). All or nothing: a 422 lists every bad line."""
    data = await fichier.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidValue(field="file", problem="orders.value.file_too_large", max_mb=MAX_UPLOAD_BYTES // 2**20)

    def run() -> ImportPublic:
        with web.transaction() as db:
            return ImportPublic(imported=[OrderPublic.of(o) for o in catalog.import_orders(db, data=data, now=now())])

    result = await run_in_threadpool(run)
    web.tracker.poke()
    return result


@api.post("/commandes/{reference:path}/cloture", response_model=OrderPublic)
def close_order_api(reference: str, web: Web, _maitre: Maitre) -> OrderPublic:
    with web.transaction() as db:
        return OrderPublic.of(catalog.close_order(db, reference=reference, now=now()))


@api.get("/avancement", response_model=list[ProgressPublic])
def progress_api(web: Web, _maitre: Maitre) -> list[ProgressPublic]:
    """Progress of every operation of the open orders, computed now (the same numbers as `order_progress`)."""
    return [ProgressPublic.of(p) for p in web.tracker.compute(now=now())]


@api.get("/apprentis", response_model=list[ApprenticePublic])
def apprentices_api(web: Web, _maitre: Maitre) -> list[ApprenticePublic]:
    with web.transaction() as db:
        return [ApprenticePublic.of(a) for a in catalog.list_apprentices(db)]


@api.post("/apprentis", response_model=ApprenticePublic, status_code=201)
def add_apprentice_api(body: ApprenticeCreate, web: Web, _maitre: Maitre) -> ApprenticePublic:
    """Register an apprentice; the pseudonymous code is drawn at random."""
    with web.transaction() as db:
        return ApprenticePublic.of(catalog.create_apprentice(
            db, first_name=body.first_name, last_name=body.last_name, badge=body.badge, now=now()))


@api.get("/sessions", response_model=list[SessionPublic])
def sessions_api(
    web: Web, _maitre: Maitre, open_only: bool = False, limit: Annotated[int, Query(ge=1)] = 100,
) -> list[SessionPublic]:
    """Recent sessions, open ones first (`limit`: at most 1000)."""
    with web.transaction() as db:
        return [SessionPublic.of(s) for s in catalog.list_sessions(db, open_only=open_only, limit=min(limit, 1000))]


@api.post("/sessions/{session_id}/cloture", response_model=SessionPublic)
def close_session_api(session_id: SessionId, web: Web, _maitre: Maitre) -> SessionPublic:
    """Close a session left open (no declaration; add one afterwards)."""
    web.stations.close_session(session_id=session_id, now=now())
    with web.transaction() as db:
        return SessionPublic.of(catalog.get_session(db, session_id=session_id))


@api.post("/sessions/{session_id}/declaration", response_model=SessionPublic)
def declare_session_api(session_id: SessionId, body: DeclarationIn, web: Web, _maitre: Maitre) -> SessionPublic:
    """Declare good and scrap parts for a closed session that has no declaration yet."""
    web.stations.declare_for_session(session_id=session_id, good=body.good, scrap=body.scrap, now=now())
    web.tracker.poke()
    with web.transaction() as db:
        return SessionPublic.of(catalog.get_session(db, session_id=session_id))


@api.get("/motifs", response_model=list[ScrapReasonPublic])
def reasons_api(web: Web, lang: RequestLang, _maitre: Maitre) -> list[ScrapReasonPublic]:
    with web.transaction() as db:
        return [ScrapReasonPublic.of(r, lang) for r in catalog.scrap_reasons(db, active_only=False)]


@api.post("/motifs", response_model=ScrapReasonPublic, status_code=201)
def add_reason_api(body: ScrapReasonIn, web: Web, lang: RequestLang, _maitre: Maitre) -> ScrapReasonPublic:
    with web.transaction() as db:
        reason = catalog.add_scrap_reason(db, code=body.code, label_fr=body.label_fr, label_en=body.label_en)
        return ScrapReasonPublic.of(reason, lang)

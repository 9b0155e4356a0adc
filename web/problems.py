"""Domain errors → HTTP, in one place. API routes (`/api/…`) answer JSON (`Problem`); pages answer a French
(or English) page. The status says the kind of refusal; the message says, in plain words, what to do.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from orders import errors as e
from orders.texts import translate
from web import access as a
from web.language import request_lang
from web.pages import Pages
from web.schemas import Problem

STATUS: dict[type[e.OrdersError], int] = {
    e.UnknownMachine: 404,
    e.UnknownBadge: 404,
    e.UnknownJob: 404,
    e.UnknownOrder: 404,
    e.SessionNotFound: 404,
    e.TooManyAttempts: 429,
    e.OrderClosed: 409,
    e.NotIdentified: 409,
    e.WrongMachine: 409,
    e.MachineBusy: 409,
    e.NoOpenSession: 409,
    e.SessionStillOpen: 409,
    e.AlreadyDeclared: 409,
    e.DuplicateBadge: 409,
    e.DuplicateLogin: 409,
    e.DuplicateScrapReason: 409,
    e.DeclarationTooLarge: 422,
    e.UnknownScrapReason: 422,
    e.InvalidValue: 422,
    e.ImportRejected: 422,
    e.InvalidCredentials: 401,
    e.CountsUnavailable: 503,
    a.LoginRequired: 401,
    a.KioskKeyRequired: 401,
    a.KioskForbidden: 403,
    a.BadKioskKey: 403,
    a.CsrfRejected: 403,
}


# What each refusal status means, for the OpenAPI document (every refusal of the API is a `Problem`).
_MEANING = {
    400: "The body cannot be read (not UTF-8 JSON, or a broken form) (Problem)",
    401: "Not logged in, or no kiosk key (Problem)",
    403: "Not allowed: a kiosk on a maître's route or on another machine, or a CSRF/Origin refusal (Problem)",
    404: "Unknown machine, badge, job, order or session (Problem)",
    409: "Not possible in the current state, or already exists (Problem)",
    422: "The request does not fit (wrong shape, value out of range, rejected import) (Problem)",
    429: "Too many unknown badges: the kiosk waits (Retry-After) (Problem)",
    503: "InfluxDB cannot give the part counts right now (Problem)",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router: the refusals its routes can answer, each documented as a `Problem`. Also
    replaces FastAPI's own 422 shape, since `invalid_request` answers a `Problem` too."""
    return {status: {"model": Problem, "description": _MEANING[status]} for status in statuses}


def status_for(error: e.OrdersError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def domain_error(request: Request, exc: Exception) -> Response:
    """The one handler for domain (and access) errors."""
    assert isinstance(exc, e.OrdersError)
    lang = request_lang(request)
    status = status_for(exc)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, e.TooManyAttempts) else None
    details = exc.messages(lang) if isinstance(exc, e.ImportRejected) else []
    if is_api(request):
        body = Problem(error=exc.code, message=exc.message(lang), errors=details)
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)
    if isinstance(exc, a.LoginRequired):
        return RedirectResponse(f"/connexion?suite={quote(request.url.path)}", status_code=303)
    pages: Pages = request.app.state.copeau.pages
    response = pages.render(request, "error.html", status_code=status, message=exc.message(lang), errors=details)
    if headers:
        response.headers.update(headers)
    return response


async def invalid_request(request: Request, exc: Exception) -> Response:
    """A request that does not fit the API's shapes (FastAPI's own validation), in the reader's language."""
    assert isinstance(exc, RequestValidationError)
    lang = request_lang(request)
    where = [".".join(str(p) for p in err.get("loc", ()) if p != "body") for err in exc.errors()]
    message = translate("web.invalid_request", lang, fields=", ".join(w for w in where if w) or "?")
    if is_api(request):
        return JSONResponse(Problem(error="invalid_request", message=message).model_dump(), status_code=422)
    pages: Pages = request.app.state.copeau.pages
    return pages.render(request, "error.html", status_code=422, message=message, errors=[])


async def http_error(request: Request, exc: Exception) -> Response:
    """404s and 405s of the framework, in words."""
    assert isinstance(exc, StarletteHTTPException)
    lang = request_lang(request)
    key = "web.not_found" if exc.status_code == 404 else "web.http_error"
    message = translate(key, lang, status=exc.status_code)
    if is_api(request) or not hasattr(request.app.state, "copeau"):
        return JSONResponse(Problem(error=f"http_{exc.status_code}", message=message).model_dump(),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))
    pages: Pages = request.app.state.copeau.pages
    return pages.render(request, "error.html", status_code=exc.status_code, message=message, errors=[])


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.OrdersError, domain_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)

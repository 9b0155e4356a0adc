"""Server-rendered pages: Jinja templates in `web/templates/`, every text from the catalogue (`t('key')`),
autoescaped. The language comes with each request; choosing one (`?lang=en`) is remembered in a cookie.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from orders.texts import Lang, translate
from web.language import LANG_COOKIE, chosen_lang, request_lang

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
ONE_YEAR_S = 365 * 86400


class Pages:
    """The template environment (built by the app's lifespan, not at import)."""

    def __init__(self, *, timezone: str = "Europe/Paris") -> None:
        zone = ZoneInfo(timezone)
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,  # a typo in a template fails the tests instead of showing nothing
            trim_blocks=True,
            lstrip_blocks=True,
        )

        def local(when: datetime) -> str:
            """A stored (UTC) time in the school's time zone, as people read it."""
            return when.astimezone(zone).strftime("%d/%m/%Y %H:%M")

        self.env.filters["local"] = local

    def render(self, request: Request, name: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
        """Render `name` in the request's language. Templates get `t`, `lang`, `other_lang`, `path`."""
        lang = request_lang(request)

        def t(key: str, **values: object) -> str:
            return translate(key, lang, **values)

        html = self.env.get_template(name).render(
            t=t, lang=lang, other_lang=_other(lang), path=request.url.path, **context
        )
        response = HTMLResponse(html, status_code=status_code)
        remember_lang(request, response)
        return response


def remember_lang(request: Request, response: Any) -> None:
    """Keep a language chosen with `?lang=` for the next pages."""
    chosen = chosen_lang(request)
    if chosen is not None:
        response.set_cookie(LANG_COOKIE, chosen, max_age=ONE_YEAR_S, samesite="lax", httponly=True)


def _other(lang: Lang) -> Lang:
    return "en" if lang == "fr" else "fr"

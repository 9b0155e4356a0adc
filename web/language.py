"""The reader's language: French unless they chose English (`?lang=en`, remembered in a cookie)."""

from __future__ import annotations

from fastapi import Request

from orders.texts import Lang, as_lang

LANG_COOKIE = "copeau_lang"


def request_lang(request: Request) -> Lang:
    """`?lang=` first, then the cookie, else French."""
    return as_lang(request.query_params.get("lang")) or as_lang(request.cookies.get(LANG_COOKIE)) or "fr"


def chosen_lang(request: Request) -> Lang | None:
    """The language asked for in this request's query string, to remember in the cookie."""
    return as_lang(request.query_params.get("lang"))

"""Texts in a language chosen per call (a kiosk in French next to a maître reading English), from the one
catalogue in `copeau.i18n`. `copeau.i18n.t` follows COPEAU_LANG for the whole process; the web service needs
the language of each request instead.
"""

from __future__ import annotations

from typing import Literal

from copeau.i18n import CATALOGUE

Lang = Literal["fr", "en"]
LANGUAGES: tuple[Lang, ...] = ("fr", "en")


def as_lang(value: str | None) -> Lang | None:
    """`value` as a supported language ("fr", "en"; also "fr-FR", "EN"), or None."""
    short = (value or "").strip().lower()[:2]
    return "en" if short == "en" else "fr" if short == "fr" else None


def translate(key: str, lang: Lang, /, **values: object) -> str:
    """The catalogue's text for `key` in `lang` (French when missing), formatted with `values`."""
    entry = CATALOGUE[key]
    return entry.get(lang, entry["fr"]).format(**values)


def texts(prefix: str, lang: Lang) -> dict[str, str]:
    """Every unformatted text whose key starts with `prefix`, keyed by the rest (for the kiosk's script)."""
    return {key.removeprefix(prefix): entry.get(lang, entry["fr"])
            for key, entry in CATALOGUE.items() if key.startswith(prefix)}

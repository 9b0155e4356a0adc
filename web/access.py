"""Who may do what: kiosks (one key per machine) and maîtres (log-in with a password).

- A kiosk proves itself with its machine's key: the `X-Kiosk-Key` header (hardware, scripts), or the cookie set
  when the kiosk browser first opens `/kiosque/<machine>?cle=<key>`. It may do that machine's kiosk actions
  only; on any management route it gets a 403, even if a maître is logged in on the same browser.
- A maître logs in with a password (scrypt hash); the session cookie holds a random token whose SHA-256 is in
  the database, with the session's CSRF token.
- Requests that change something and are authenticated by a cookie must carry the CSRF token (form field
  `csrf` or header `X-CSRF-Token`), and an `Origin` header, when the browser sends one, must be this site.
  A kiosk's CSRF token is derived from its key (HMAC), so it needs no storage.

Kiosk keys come from `web.kiosk_keys` (an environment variable or a file: `machine-id=key`, one per line or
comma-separated), never from the YAML. A key shorter than 16 characters, or a known placeholder, is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from fastapi import Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from copeau.errors import ServiceError
from orders.errors import OrdersError
from orders.models import Maitre, MaitreSession

KIOSK_HEADER = "X-Kiosk-Key"
CSRF_HEADER = "X-CSRF-Token"
KIOSK_COOKIE = "copeau_kiosque"
SESSION_COOKIE = "copeau_session"
LOGIN_TTL = timedelta(hours=12)
MIN_KEY_LENGTH = 16
_PLACEHOLDERS = ("changeme", "change-me", "change_me", "secret", "password", "motdepasse", "xxxxxxxx", "kiosque")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AccessError(OrdersError):
    """The request is not allowed. Mapped to 401/403 like the domain errors, with a text from the catalogue."""


class LoginRequired(AccessError):
    key = "web.login_required"


class KioskForbidden(AccessError):
    """A kiosk (by its key) on a route for maîtres, or on another machine's kiosk routes."""

    key = "web.kiosk_forbidden"


class BadKioskKey(AccessError):
    """`/kiosque/<machine>?cle=…` with a key that is not this machine's."""

    key = "web.bad_kiosk_key"

    def __init__(self, *, machine: str) -> None:
        super().__init__(machine=machine)


class KioskKeyRequired(AccessError):
    key = "web.kiosk_key_required"

    def __init__(self, *, machine: str) -> None:
        super().__init__(machine=machine)


class CsrfRejected(AccessError):
    key = "web.csrf_rejected"


class KioskKeyError(ServiceError):
    """The kiosk keys cannot be used (malformed, too short, a placeholder, unknown machine). For the operator."""


def parse_kiosk_keys(text: str | None, *, machines: Iterable[str]) -> dict[str, str]:
    """`machine=key` pairs, one per line or comma-separated ('#' starts a comment). Raises KioskKeyError."""
    known = set(machines)
    keys: dict[str, str] = {}
    problems: list[str] = []
    for raw in (text or "").replace(",", "\n").splitlines():
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        machine, eq, key = (part.strip() for part in item.partition("="))
        if not eq or not machine or not key:
            problems.append(f"« {item[:20]}… » : il faut machine=clé")
        elif machine not in known:
            problems.append(f"{machine} : machine inconnue dans workshop.yaml")
        elif len(key) < MIN_KEY_LENGTH or key.lower() in _PLACEHOLDERS:
            problems.append(f"{machine} : clé trop courte ou d'exemple ({MIN_KEY_LENGTH} caractères au moins)")
        else:
            keys[machine] = key
    if problems:
        raise KioskKeyError("Clés de borne (web.kiosk_keys) inutilisables : " + " ; ".join(problems))
    return keys


def new_kiosk_key() -> str:
    """A fresh random kiosk key (for the demo, or to paste into the keys file)."""
    return secrets.token_urlsafe(24)


def kiosk_csrf(key: str, machine: str) -> str:
    """The CSRF token of a kiosk page: derived from its key, so it needs no storage."""
    return hmac.new(key.encode(), f"csrf:{machine}".encode(), hashlib.sha256).hexdigest()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KioskKeys:
    """The kiosks' keys, compared in constant time."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = dict(keys)

    def machine_for(self, key: str | None) -> str | None:
        """The machine whose key this is, if any."""
        if not key:
            return None
        found = None
        for machine, expected in self._keys.items():  # every key is compared: no early exit to time
            if hmac.compare_digest(key.encode(), expected.encode()):
                found = machine
        return found

    def key_of(self, machine: str) -> str | None:
        return self._keys.get(machine)

    def __contains__(self, machine: str) -> bool:
        return machine in self._keys


def presented_kiosk(request: Request, keys: KioskKeys) -> tuple[str | None, bool]:
    """(machine of the kiosk key the request carries, whether it came in the header rather than a cookie)."""
    header = request.headers.get(KIOSK_HEADER)
    if header:
        return keys.machine_for(header), True
    return keys.machine_for(request.cookies.get(KIOSK_COOKIE)), False


def carries_kiosk_key(request: Request) -> bool:
    """Whether the request presents any kiosk key at all (valid or not)."""
    return bool(request.headers.get(KIOSK_HEADER) or request.cookies.get(KIOSK_COOKIE))


def check_origin(request: Request) -> None:
    """Refuse a state-changing request whose Origin is another site (a browser always sends Origin on POST)."""
    origin = request.headers.get("origin")
    if origin is None or request.method in _SAFE_METHODS:
        return
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # e.g. "http://[": not an origin at all (it was a 500)
        raise CsrfRejected from None
    if origin == "null" or netloc != request.headers.get("host", ""):
        raise CsrfRejected


def check_csrf(request: Request, expected: str, *, form_token: str | None = None) -> None:
    """Origin check, then the CSRF token (from the form or the `X-CSRF-Token` header) for unsafe methods."""
    check_origin(request)
    if request.method in _SAFE_METHODS:
        return
    token = form_token or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise CsrfRejected


# -- maîtres' log-in sessions


def open_login(db: Session, *, maitre: Maitre, now: datetime) -> tuple[str, MaitreSession]:
    """Start a log-in session. Returns the cookie's token (only its hash is stored) and the session."""
    token = secrets.token_urlsafe(32)
    login = MaitreSession(token_hash=token_hash(token), maitre=maitre, csrf=secrets.token_urlsafe(32),
                          created_at=now, expires_at=now + LOGIN_TTL)
    db.add(login)
    db.execute(delete(MaitreSession).where(MaitreSession.expires_at < now))  # housekeeping, cheap
    db.flush()
    return token, login


def find_login(db: Session, *, token: str | None, now: datetime) -> MaitreSession | None:
    """The live log-in session for this cookie token, with its maître; None when absent or expired."""
    if not token:
        return None
    login = db.scalar(select(MaitreSession).where(MaitreSession.token_hash == token_hash(token))
                      .options(selectinload(MaitreSession.maitre)))
    if login is None or login.expires_at <= now or not login.maitre.active:
        return None
    return login


def close_login(db: Session, *, token: str | None) -> None:
    if token:
        db.execute(delete(MaitreSession).where(MaitreSession.token_hash == token_hash(token)))

"""Running the web service: `copeau web` (uvicorn, one process) and adding a maître from the command line.

One process on purpose: the kiosks' "badge scanned, waiting for the job card" state and the unknown-badge
counters live in its memory (see orders.station). Put a reverse proxy with HTTPS in front of it for a real
school network, and set `web.secure_cookies: true`.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import uvicorn

from copeau.config import Workshop
from orders import catalog
from orders.database import database_url_for, make_engine, session_factory
from orders.migrate import upgrade
from web.access import parse_kiosk_keys
from web.app import create_app
from web.live import StreamingServer

_KIOSK_KEY_IN_URL = re.compile(r"([?&]cle=)[^&\s\"]*")


class RedactKioskKeys(logging.Filter):
    """Hides the kiosk key of `/kiosque/<machine>?cle=<key>` (a kiosk's first visit) in uvicorn's access log:
    secrets never appear in logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_KIOSK_KEY_IN_URL.sub(r"\1…", a) if isinstance(a, str) else a for a in record.args)
        record.msg = _KIOSK_KEY_IN_URL.sub(r"\1…", str(record.msg))
        return True


def serve(workshop: Workshop, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Serve the kiosks, pages and API until Ctrl-C / SIGTERM (uvicorn handles both).

    Raises KioskKeyError before anything starts when the kiosk keys cannot be used.
    """
    parse_kiosk_keys(workshop.web.kiosk_keys.read(), machines=[m.id for m in workshop.machines])
    app = create_app(workshop)
    logging.getLogger("uvicorn.access").addFilter(RedactKioskKeys())
    # StreamingServer: uvicorn's, ending the live board's event streams on shutdown (they would hold it).
    StreamingServer(uvicorn.Config(app, host=host or workshop.web.host, port=port or workshop.web.port,
                                   log_level=log_level, access_log=log_level == "debug",
                                   timeout_graceful_shutdown=10)).run()


def add_maitre(workshop: Workshop, *, login: str, display_name: str, password: str) -> None:
    """Create a maître in the workshop's database (migrated first). Raises OrdersError if refused."""
    url = database_url_for(workshop)
    upgrade(url)
    engine = make_engine(url)
    try:
        with session_factory(engine).begin() as db:
            catalog.create_maitre(db, login=login, display_name=display_name, password=password, now=datetime.now(UTC))
    finally:
        engine.dispose()

"""Secrets never appear in logs: the kiosk key of a kiosk's first visit (`/kiosque/<machine>?cle=<key>`) is hidden
in uvicorn's access log (web/server.py)."""

from __future__ import annotations

import logging

import pytest

from web.server import RedactKioskKeys


@pytest.mark.parametrize("path", ["/kiosque/fraiseuse-1?cle=CLE-SECRETE-123",
                                  "/kiosque/tour-1?lang=en&cle=CLE-SECRETE-123&x=1"])
def test_the_kiosk_key_is_hidden_in_the_access_log(path: str) -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", path, "1.1", 303), None)
    assert RedactKioskKeys().filter(record)
    line = record.getMessage()
    assert "CLE-SECRETE-123" not in line
    assert "cle=…" in line and path.split("?", maxsplit=1)[0] in line

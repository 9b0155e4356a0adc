"""Read side of the InfluxDB v1 HTTP API (`/query`, InfluxQL): the surface InfluxDB 1.x, 2.x and 3.x all serve.

Used by the demo summary, the tests and (later) the dashboard checks. Writing lives in gateway/influx.py.
"""

from __future__ import annotations

from typing import Any

import urllib3

from copeau.config import InfluxSettings
from copeau.errors import StoreError


class InfluxQuery:
    """Runs InfluxQL against one database. Raises StoreError on HTTP or query errors."""

    def __init__(self, settings: InfluxSettings, *, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2.0, read=timeout_s))
        self._headers: dict[str, str] = {}
        if settings.username:
            self._headers = urllib3.make_headers(basic_auth=f"{settings.username}:{settings.password.read() or ''}")

    def series(self, q: str) -> list[dict[str, Any]]:
        """The series of the first statement's result ([] when nothing matched)."""
        try:
            resp = self._http.request(
                "POST",
                f"{self.settings.url}/query",
                fields={"db": self.settings.database, "q": q, "epoch": "ns"},
                encode_multipart=False,
                headers=self._headers,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"InfluxDB {self.settings.url} unreachable: {exc}") from exc
        if resp.status != 200:
            raise StoreError(f"InfluxDB query failed: HTTP {resp.status} {resp.data[:300]!r}", status=resp.status)
        result = resp.json()["results"][0]
        if "error" in result:
            raise StoreError(f"InfluxQL error: {result['error']} in {q}")
        return list(result.get("series", []))

    def by_tag(self, q: str, tag: str) -> dict[str, Any]:
        """For `SELECT <one aggregate> ... GROUP BY <tag>`: {tag value: aggregate value}."""
        return {s["tags"][tag]: s["values"][0][1] for s in self.series(q) if s.get("values")}

    def scalar(self, q: str) -> Any:
        rows = self.series(q)
        return rows[0]["values"][0][1] if rows else None

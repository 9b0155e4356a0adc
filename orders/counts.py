"""Parts and cycles as InfluxDB holds them, for one site: what the kiosk shows and what declarations and
progress are checked against. The gateway tags every `part` and `cycle` point with the job context (`order`,
`operation`, `apprentice`), so a job's parts are found by tag; a session's by machine, tags and time.

`PartCounts` is the small interface the service needs; `InfluxCounts` reads InfluxDB through the v1 `/query`
API (InfluxQL), which InfluxDB 1.x, 2.x and 3.x all serve. Tests may give the service a fake.
"""

from __future__ import annotations

from typing import Any, Protocol

from copeau.config import InfluxSettings
from copeau.errors import StoreError
from copeau.influxql import InfluxQuery
from orders.errors import CountsUnavailable


class PartCounts(Protocol):
    def session_parts(self, *, machine: str, order: str, operation: int, since_ns: int) -> int:
        """Parts counted on `machine` for this job since `since_ns`."""
        ...

    def last_cycle_s(self, *, machine: str, since_ns: int) -> float | None:
        """Duration of the last completed cycle on `machine` since `since_ns`, if any."""
        ...

    def made_by_operation(self, *, order: str) -> dict[int, int]:
        """Parts counted for each operation of `order`, on every machine, ever."""
        ...

    def recent_parts(self, *, order: str, operation: int, since_ns: int) -> list[tuple[int, int]]:
        """`(ts_ns, count)` of the part points of one operation since `since_ns`, in time order."""
        ...


def quote(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxCounts:
    """`PartCounts` over InfluxDB. Raises CountsUnavailable (with InfluxDB's reason) when it cannot answer."""

    def __init__(self, settings: InfluxSettings, *, site: str, timeout_s: float = 5.0) -> None:
        self._query = InfluxQuery(settings, timeout_s=timeout_s)
        self._site = site

    def _where(self, **tags: str) -> str:
        return " AND ".join(f'"{tag}" = {quote(value)}' for tag, value in {"site": self._site, **tags}.items())

    def _series(self, q: str) -> list[dict[str, Any]]:
        try:
            return self._query.series(q)
        except StoreError as exc:
            raise CountsUnavailable(detail=str(exc)) from exc

    def session_parts(self, *, machine: str, order: str, operation: int, since_ns: int) -> int:
        where = self._where(machine=machine, order=order, operation=str(operation))
        rows = self._series(f'SELECT sum("count") FROM "part" WHERE {where} AND time >= {since_ns}')
        return int(rows[0]["values"][0][1] or 0) if rows else 0

    def last_cycle_s(self, *, machine: str, since_ns: int) -> float | None:
        where = self._where(machine=machine, phase="end", outcome="completed")
        rows = self._series(f'SELECT last("duration_s") FROM "cycle" WHERE {where} AND time >= {since_ns}')
        return float(rows[0]["values"][0][1]) if rows else None

    def made_by_operation(self, *, order: str) -> dict[int, int]:
        where = self._where(order=order)
        out: dict[int, int] = {}
        for series in self._series(f'SELECT sum("count") FROM "part" WHERE {where} GROUP BY "operation"'):
            tag = series.get("tags", {}).get("operation", "")
            if tag.isdigit() and series.get("values"):
                out[int(tag)] = int(series["values"][0][1] or 0)
        return out

    def recent_parts(self, *, order: str, operation: int, since_ns: int) -> list[tuple[int, int]]:
        where = self._where(order=order, operation=str(operation))
        rows = self._series(f'SELECT "count" FROM "part" WHERE {where} AND time >= {since_ns} ORDER BY time')
        return [(int(ts), int(count)) for ts, count in rows[0]["values"]] if rows else []

"""An InfluxQL query target for grafana-foundation-sdk, which ships no InfluxDB query type.

Grafana's InfluxDB data source stores a raw InfluxQL target as `{"query": ..., "rawQuery": true,
"resultFormat": "time_series" | "table"}`. Only raw queries are written here: the query text is the one the
integration tests run against a real InfluxDB, so there is no query-builder model in between to drift.
"""

from __future__ import annotations

import typing
from enum import StrEnum

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

DATASOURCE_TYPE = "influxdb"


class ResultFormat(StrEnum):
    """How Grafana shapes the answer: one frame per series, or one table."""

    TIME_SERIES = "time_series"
    TABLE = "table"


class InfluxQLQuery(cogvariants.Dataquery):
    """One raw InfluxQL target of a panel."""

    def __init__(
        self,
        *,
        query: str = "",
        ref_id: str = "A",
        result_format: ResultFormat = ResultFormat.TIME_SERIES,
        alias: str | None = None,
        hide: bool | None = None,
        datasource: dashboard.DataSourceRef | None = None,
    ) -> None:
        self.query = query
        self.ref_id = ref_id
        self.result_format = result_format
        self.alias = alias
        self.hide = hide
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        """The target as Grafana's InfluxDB data source saves it."""
        payload: dict[str, object] = {
            "query": self.query,
            "rawQuery": True,
            "refId": self.ref_id,
            "resultFormat": self.result_format.value,
        }
        if self.alias is not None:
            payload["alias"] = self.alias
        if self.hide is not None:
            payload["hide"] = self.hide
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        return payload

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> InfluxQLQuery:
        """Read a target back (for tests and for anyone loading the generated JSON)."""
        return cls(
            query=str(data.get("query", "")),
            ref_id=str(data.get("refId", "A")),
            result_format=ResultFormat(data.get("resultFormat", ResultFormat.TIME_SERIES.value)),
            alias=data.get("alias"),
            hide=data.get("hide"),
            datasource=dashboard.DataSourceRef.from_json(data["datasource"]) if "datasource" in data else None,
        )


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    """Builder in the SDK's style: `InfluxQL("SELECT ...").ref_id("B").table()`."""

    def __init__(self, query: str) -> None:
        self._internal = InfluxQLQuery(query=query)

    def build(self) -> InfluxQLQuery:
        """Builds the object."""
        return self._internal

    def ref_id(self, ref_id: str) -> typing.Self:
        """The target's letter within its panel (A, B, ...)."""
        self._internal.ref_id = ref_id
        return self

    def table(self) -> typing.Self:
        """Ask Grafana for one table rather than a frame per series."""
        self._internal.result_format = ResultFormat.TABLE
        return self

    def alias(self, alias: str) -> typing.Self:
        """Series name pattern (`$tag_machine`)."""
        self._internal.alias = alias
        return self

    def hide(self) -> typing.Self:
        """Run the target but do not draw it (an input of an expression)."""
        self._internal.hide = True
        return self

    def datasource(self, datasource: dashboard.DataSourceRef) -> typing.Self:
        """The data source of this target."""
        self._internal.datasource = datasource
        return self

"""The five Copeau boards, built with grafana-foundation-sdk. Every query is raw InfluxQL (1.x, 2.x and 3.x).

Theory of operation: a board is a function of the language only (`Texts`), so the same code gives the French and
the English JSON, and generating twice gives the same bytes. Panel ids, uids and ref ids are fixed here, never
drawn at random, so that a push replaces a board instead of adding one.

What each board reads (docs/data-contract.md):

- Atelier en direct: `state`, `cycle`, `part` per machine; `order_progress` (written by `orders/tracking.py`) for
  parts done against the order quantity, the ETA, and the standard cycle time the last cycle is set against.
- Commandes: `order_progress` for progress, ETA, due date and delay (nothing else knows the due date);
  `part` grouped by `order` for parts counted and scrap measured by the machines.
- Qualité: `part` (scrap = sum(count) − sum(good), on points that carry `good`: only machines that report
  quality have it). Scrap reasons are declared at the kiosk and kept in the orders database, not in InfluxDB:
  the board says so instead of drawing a Pareto.
- Apprentis: `cycle` and `part` grouped by the pseudonymous `apprentice` tag (never a name: InfluxDB holds none);
  `order_progress` for the standard cycle time of each operation.
- Machines: `state` (timeline), `cycle` (running time), `alarm`, `part` (quality).

Two numbers are proxies, and the boards say so: *utilisation* is the time spent in cycles ending in the range
over the length of the range (the `running` state is a cycle running), and OEE's *performance* takes the
fastest completed cycle of the range as the ideal cycle time: the standard is on `order_progress` per operation,
and a Grafana math expression per machine cannot join it to the cycles. Tables can: the panels that set cycle
times against the standard merge the rows of two queries on (order, operation) in Grafana (`_against_standard`).
"""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.builders import barchart, bargauge, stat, statetimeline, table, text, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import expr as sse
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard
from grafana_foundation_sdk.models import text as text_model

from dashboards.catalogue import Texts
from dashboards.influxql import DATASOURCE_TYPE, InfluxQL

DATASOURCE_UID = "copeau-influxdb"
DATASOURCE_NAME = "Copeau InfluxDB"
DATASOURCE = dashboard.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)
EXPRESSION = dashboard.DataSourceRef(type_val="__expr__", uid="__expr__")

# An order whose ETA leaves less than this margin before its due instant is "at risk" (half a school day).
AT_RISK_MARGIN_S = 4 * 3600

# Grafana's InfluxQL rule for a multi-value variable is `=~ /^(a|b)$/`; with "All" it uses the custom all value.
# `.*` (rather than the list of every value) also matches points that have no such tag: parts made without a
# job context must count under "All".
ALL_VALUE = ".*"
SITE = '"site" =~ /^$site$/'
MACHINE = '"machine" =~ /^$machine$/'
ORDER = '"order" =~ /^$order$/'
APPRENTICE = '"apprentice" =~ /^$apprentice$/'
CYCLE_END = "\"phase\" = 'end'"
HAS_GOOD = '"good" >= 0'  # only points of machines that report quality carry `good`
COMPLETED = "\"outcome\" = 'completed'"
ALARM_RAISED = '"active" = true'

STATE_COLOURS = {"running": "green", "idle": "yellow", "alarm": "red", "offline": "#8e8e8e"}


def where(*conditions: str) -> str:
    """A WHERE clause that always ends with Grafana's time filter."""
    return " AND ".join((*conditions, "$timeFilter"))


# --- the queries, named so that the integration tests run exactly these ------------------------------------------

Q_LIVE_STATE = f'SELECT last("state") AS "state" FROM "state" WHERE {where(SITE, MACHINE)} GROUP BY "machine"'
# A selector may be paired with tags: the tags come from the same (last) point, which is the job on the machine.
Q_LIVE_JOB = (
    'SELECT last("seq") AS "seq", "order", "operation", "apprentice" FROM "cycle" '
    f'WHERE {where(SITE, MACHINE)} GROUP BY "machine"'
)
Q_LIVE_PARTS = f'SELECT sum("count") AS "parts" FROM "part" WHERE {where(SITE, MACHINE)} GROUP BY "machine"'
Q_LIVE_LAST_CYCLE = (
    f'SELECT last("duration_s") AS "last_cycle_s" FROM "cycle" WHERE {where(CYCLE_END, SITE, MACHINE)} '
    'GROUP BY "machine"'
)
# Cycle time against the standard. The standard lives per operation on `order_progress`; InfluxQL cannot join
# two measurements, so a panel runs both queries and Grafana merges their rows on (order, operation)
# (`_against_standard`). Only completed cycles are set against the standard: an aborted one says nothing.
Q_LIVE_LAST_COMPLETED = (
    'SELECT last("duration_s") AS "last_cycle_s", "order", "operation" FROM "cycle" '
    f'WHERE {where(CYCLE_END, COMPLETED, SITE, MACHINE)} GROUP BY "machine"'
)
Q_STANDARD = (
    'SELECT last("standard_cycle_s") AS "standard_cycle_s" FROM "order_progress" '
    f'WHERE {where(SITE, ORDER)} GROUP BY "order", "operation"'
)
Q_CYCLE_TIME_BY_MACHINE = (
    f'SELECT mean("duration_s") AS "cycle_s" FROM "cycle" WHERE {where(CYCLE_END, SITE, MACHINE)} '
    'GROUP BY time($__interval), "machine" fill(none)'
)
Q_PROGRESS = (
    'SELECT last("made") AS "made", last("good") AS "good", last("scrap") AS "scrap", '
    'last("quantity") AS "quantity", last("remaining") AS "remaining", '
    'last("good") / last("quantity") * 100 AS "progress_pct", '
    'last("eta_ts") / 1000000 AS "eta", last("due_ts") / 1000000 AS "due", last("delay_s") AS "delay_s" '
    f'FROM "order_progress" WHERE {where(SITE, ORDER)} GROUP BY "order", "operation"'
)
Q_PROGRESS_PCT = (
    'SELECT last("good") / last("quantity") * 100 AS "progress_pct" '
    f'FROM "order_progress" WHERE {where(SITE, ORDER)} GROUP BY "order", "operation"'
)
Q_DELAY = (
    'SELECT last("delay_s") AS "delay_s", last("eta_ts") / 1000000 AS "eta", last("due_ts") / 1000000 AS "due" '
    f'FROM "order_progress" WHERE {where(SITE, ORDER)} GROUP BY "order", "operation"'
)
Q_PARTS_BY_ORDER = (
    f'SELECT sum("count") AS "parts" FROM "part" WHERE {where(SITE, MACHINE, ORDER, APPRENTICE)} GROUP BY "order"'
)
Q_SCRAP_BY_ORDER = (
    'SELECT sum("count") AS "parts", sum("count") - sum("good") AS "scrap" FROM "part" '
    f'WHERE {where(HAS_GOOD, SITE, MACHINE, ORDER, APPRENTICE)} GROUP BY "order"'
)


def scrap_rate(group_by: str) -> str:
    """Scrap rate (%) over the points that carry `good`, grouped by one tag (or by time and a tag)."""
    return (
        'SELECT (sum("count") - sum("good")) / sum("count") * 100 AS "scrap_pct" FROM "part" '
        f"WHERE {where(HAS_GOOD, SITE, MACHINE, ORDER, APPRENTICE)} GROUP BY {group_by}"
    )


Q_SCRAP_RATE_BY_ORDER = scrap_rate('"order"')
Q_SCRAP_RATE_BY_MACHINE = scrap_rate('"machine"')
Q_SCRAP_RATE_BY_APPRENTICE = scrap_rate('"apprentice"')
Q_SCRAP_TREND_BY_APPRENTICE = scrap_rate('time($__interval), "apprentice" fill(none)')
Q_FIRST_PASS_YIELD = (
    'SELECT sum("good") / sum("count") * 100 AS "fpy_pct" FROM "part" '
    f"WHERE {where(HAS_GOOD, SITE, MACHINE, ORDER, APPRENTICE)}"
)
Q_FPY_BY_MACHINE = (
    'SELECT sum("good") / sum("count") * 100 AS "fpy_pct" FROM "part" '
    f'WHERE {where(HAS_GOOD, SITE, MACHINE, ORDER, APPRENTICE)} GROUP BY time($__interval), "machine" fill(none)'
)
Q_APPRENTICE_CYCLE_TREND = (
    'SELECT mean("duration_s") AS "cycle_s" FROM "cycle" '
    f"WHERE {where(CYCLE_END, COMPLETED, SITE, MACHINE, ORDER, APPRENTICE)} "
    'GROUP BY time($__interval), "apprentice" fill(none)'
)
Q_APPRENTICE_CYCLE_TABLE = (
    'SELECT mean("duration_s") AS "mean_s", min("duration_s") AS "best_s", count("duration_s") AS "cycles" '
    f"FROM \"cycle\" WHERE {where(CYCLE_END, COMPLETED, SITE, MACHINE, ORDER, APPRENTICE)} "
    'GROUP BY "apprentice", "order", "operation"'
)
# The learning curve against the standard: one line per apprentice and operation, and the operation's standard.
Q_APPRENTICE_CYCLE_BY_OPERATION = (
    'SELECT mean("duration_s") AS "cycle_s" FROM "cycle" '
    f"WHERE {where(CYCLE_END, COMPLETED, SITE, MACHINE, ORDER, APPRENTICE)} "
    'GROUP BY time($__interval), "apprentice", "order", "operation" fill(none)'
)
Q_STANDARD_TREND = (
    'SELECT last("standard_cycle_s") AS "standard_s" FROM "order_progress" '
    f'WHERE {where(SITE, ORDER)} GROUP BY time($__interval), "order", "operation" fill(none)'
)
Q_PARTS_BY_APPRENTICE = (
    f'SELECT sum("count") AS "parts" FROM "part" WHERE {where(SITE, MACHINE, ORDER, APPRENTICE)} '
    'GROUP BY "apprentice"'
)
Q_STATE_TIMELINE = f'SELECT "state" FROM "state" WHERE {where(SITE, MACHINE)} GROUP BY "machine"'
# Running time = the cycles that ended in the range; `$__range_s` is the length of the range in seconds.
Q_UTILISATION = (
    f'SELECT sum("duration_s") / $__range_s * 100 AS "utilisation_pct" FROM "cycle" '
    f'WHERE {where(CYCLE_END, SITE, MACHINE)} GROUP BY "machine"'
)
Q_UTILISATION_TREND = (
    f'SELECT sum("duration_s") * 100000 / $__interval_ms AS "utilisation_pct" FROM "cycle" '
    f'WHERE {where(CYCLE_END, SITE, MACHINE)} GROUP BY time($__interval), "machine" fill(0)'
)
Q_ALARMS_RAISED = (
    f'SELECT count("active") AS "alarms" FROM "alarm" WHERE {where(ALARM_RAISED, SITE, MACHINE)} '
    'GROUP BY "machine"'
)
Q_ALARM_LOG = (
    'SELECT "active", "code", "text" FROM "alarm" '
    f'WHERE {where(SITE, MACHINE)} GROUP BY "machine" ORDER BY time DESC LIMIT 100'
)
# OEE factors, each a percentage per machine; Grafana multiplies them (server-side expression).
Q_OEE_AVAILABILITY = Q_UTILISATION.replace('"utilisation_pct"', '"availability_pct"')
Q_OEE_PERFORMANCE = (
    'SELECT count("duration_s") * min("duration_s") / sum("duration_s") * 100 AS "performance_pct" FROM "cycle" '
    f"WHERE {where(CYCLE_END, COMPLETED, SITE, MACHINE)} GROUP BY \"machine\""
)
Q_OEE_QUALITY = (
    'SELECT sum("good") / sum("count") * 100 AS "quality_pct" FROM "part" '
    f'WHERE {where(HAS_GOOD, SITE, MACHINE)} GROUP BY "machine"'
)


# --- building blocks ---------------------------------------------------------------------------------------------

PanelBuilder = cogbuilder.Builder[dashboard.Panel]


def variables(
    t: Texts, *, order: bool = True, apprentice: bool = True,
) -> list[cogbuilder.Builder[dashboard.VariableModel]]:
    """Site, machine, and (when the board uses them) order and apprentice, from InfluxQL `SHOW TAG VALUES`."""

    def variable(name: str, query: str) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(t(f"var.{name}"))
            .datasource(DATASOURCE)
            .query(query)
            .multi(True)
            .include_all(True)
            .all_value(ALL_VALUE)
            .current(dashboard.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        )

    out: list[cogbuilder.Builder[dashboard.VariableModel]] = [
        variable("site", 'SHOW TAG VALUES FROM "state" WITH KEY = "site"'),
        variable("machine", f'SHOW TAG VALUES FROM "state" WITH KEY = "machine" WHERE {SITE}'),
    ]
    if order:
        out.append(variable("order", f'SHOW TAG VALUES FROM "part" WITH KEY = "order" WHERE {SITE}'))
    if apprentice:
        out.append(variable("apprentice", f'SHOW TAG VALUES FROM "part" WITH KEY = "apprentice" WHERE {SITE}'))
    return out


def _targets(panel: PanelBuilder, queries: list[InfluxQL]) -> None:
    for letter, query in zip("ABCDEFGH", queries, strict=False):
        panel.with_target(query.ref_id(letter).datasource(DATASOURCE))  # type: ignore[attr-defined]


def _common(panel: PanelBuilder, t: Texts, key: str, *, w: int, h: int) -> PanelBuilder:
    panel.title(t(key)).description(t(f"{key}.help")).span(w).height(h)  # type: ignore[attr-defined]
    panel.datasource(DATASOURCE)  # type: ignore[attr-defined]
    return panel


def _transform(id_val: str, options: dict[str, object]) -> dashboard.DataTransformerConfig:
    return dashboard.DataTransformerConfig(id_val=id_val, options=options)


def _columns(
    t: Texts, names: list[str], *, hide: tuple[str, ...] = (), keep_time: bool = False,
) -> dashboard.DataTransformerConfig:
    """Give the columns the language's names, in this order; hide the Time columns (aggregates carry the start
    of the range there, which means nothing to a reader) unless `keep_time`."""
    exclude = dict.fromkeys(hide, True)
    if not keep_time:
        exclude.update({"Time": True, **{f"Time {i}": True for i in range(1, 9)}})
    columns = ["Time", *names] if keep_time else names
    rename = {name: t(f"col.{name}") for name in names}
    if keep_time:
        rename["Time"] = t("col.time")
    return _transform("organize", {
        "excludeByName": exclude,
        "indexByName": {name: i for i, name in enumerate(columns)},
        "renameByName": rename,
    })


def _against_standard(measured: str, *, keep: str) -> list[dashboard.DataTransformerConfig]:
    """Set a measured cycle time (`measured`, from query A) against the standard (`standard_cycle_s`, query B).

    InfluxQL cannot join `cycle` to `order_progress`, so Grafana does: drop each frame's Time (selectors carry
    the point's own time, which would split the rows), then `merge`, which keys rows on the fields both frames
    share (order, operation) and copies the standard into every row of A with that key (A comes first, so two
    machines or apprentices on one operation both get it); drop the standards of operations A has no row for
    (`keep` is null there); add `<measured>_vs_standard` = measured / standard (1 = on the standard).
    """
    by_name = "byName"
    return [
        _transform("organize", {"excludeByName": {"Time": True}}),
        _transform("merge", {}),
        _transform("filterByValue", {"type": "exclude", "match": "any", "filters": [
            {"fieldName": keep, "config": {"id": "isNull", "options": {}}},
        ]}),
        _transform("calculateField", {
            "mode": "binary",
            "binary": {
                "left": {"matcher": {"id": by_name, "options": measured}},
                "operator": "/",
                "right": {"matcher": {"id": by_name, "options": "standard_cycle_s"}},
            },
            "alias": f"{measured}_vs_standard",
            "timeSeries": False,  # a table: do not join the frames on time first
        }),
    ]


def _vs_standard_cells(panel: table.Panel, column: str, *, seconds: tuple[str, ...]) -> None:
    """A ratio to the standard as a percentage, green up to 110 %, red beyond (as on the live board,
    docs/live-board.md); `seconds` are the columns that hold durations."""
    panel.override_by_name(column, [
        dashboard.DynamicConfigValue(id_val="unit", value="percentunit"),
        dashboard.DynamicConfigValue(id_val="decimals", value=0),
        dashboard.DynamicConfigValue(id_val="thresholds", value={"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": 1.1},
        ]}),
        dashboard.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
        # no standard (a cycle made without an order): the division gives NaN; show a dash
        dashboard.DynamicConfigValue(id_val="mappings", value=[
            {"type": "special", "options": {"match": "nan", "result": {"text": "—", "index": 0}}},
        ]),
    ])
    for name in seconds:
        panel.override_by_name(name, [dashboard.DynamicConfigValue(id_val="unit", value="s")])


def _state_mappings(t: Texts) -> list[dashboard.ValueMapping]:
    return [dashboard.ValueMap(options={
        state: dashboard.ValueMappingResult(text=t(f"state.{state}"), color=colour, index=i)
        for i, (state, colour) in enumerate(STATE_COLOURS.items())
    })]


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dashboard.ThresholdsMode.ABSOLUTE).steps(
        [dashboard.Threshold(value=value, color=colour) for value, colour in steps]
    )


def _text(t: Texts, key: str, *, w: int = 24, h: int = 6) -> text.Panel:
    return text.Panel().title(t(key)).mode(text_model.TextMode.MARKDOWN).content(t(f"{key}.body")).span(w).height(h)


def _table(t: Texts, key: str, queries: list[InfluxQL], *, w: int = 24, h: int = 8) -> table.Panel:
    panel = table.Panel()
    _common(panel, t, key, w=w, h=h)
    _targets(panel, [q.table() for q in queries])
    return panel


def _series(t: Texts, key: str, queries: list[InfluxQL], *, unit: str, w: int = 12, h: int = 8) -> timeseries.Panel:
    panel = timeseries.Panel().unit(unit)
    _common(panel, t, key, w=w, h=h)
    _targets(panel, queries)
    return panel


def _bars(t: Texts, key: str, query: InfluxQL, *, unit: str, w: int = 12, h: int = 8) -> bargauge.Panel:
    panel = bargauge.Panel().unit(unit).min(0)
    _common(panel, t, key, w=w, h=h)
    _targets(panel, [query])
    return panel


def _board(t: Texts, key: str, uid: str, *, refresh: str, since: str, tags: list[str]) -> db.Dashboard:
    suffix = "" if t.lang == "fr" else f"-{t.lang}"
    return (
        db.Dashboard(t(f"board.{key}"))
        .uid(f"{uid}{suffix}")
        .description(t("board.generated"))
        .tags(["copeau", *tags])
        .time(since, "now")
        .refresh(refresh)
        .timezone("browser")
        .readonly()
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .link(db.DashboardLink(t("board.links")).type(dashboard.DashboardLinkType.DASHBOARDS).tags(["copeau"]).as_dropdown(True))
    )


# --- the boards ----------------------------------------------------------------------------------------------------


def live(t: Texts) -> db.Dashboard:
    """1. Atelier en direct: one row per machine, refreshed every 5 s."""
    board = _board(t, "live", "copeau-atelier", refresh="5s", since="now-12h", tags=["atelier"])
    board.variables(variables(t))
    machines = _table(t, "live.machines", [
        InfluxQL(Q_LIVE_STATE), InfluxQL(Q_LIVE_JOB), InfluxQL(Q_LIVE_PARTS), InfluxQL(Q_LIVE_LAST_CYCLE),
    ], h=9)
    machines.mappings(_state_mappings(t)).unit("none")
    machines.transformations([
        _transform("joinByField", {"byField": "machine", "mode": "outer"}),
        _columns(t, ["machine", "state", "order", "operation", "apprentice", "parts", "last_cycle_s"], hide=("seq",)),
    ])
    machines.override_by_name("last_cycle_s", [dashboard.DynamicConfigValue(id_val="unit", value="s")])
    board.with_panel(machines)

    standard = _table(t, "live.vs_standard", [InfluxQL(Q_LIVE_LAST_COMPLETED), InfluxQL(Q_STANDARD)], h=7)
    standard.transformations([
        *_against_standard("last_cycle_s", keep="machine"),
        _columns(t, ["machine", "order", "operation", "last_cycle_s", "standard_cycle_s",
                     "last_cycle_s_vs_standard"]),
    ])
    _vs_standard_cells(standard, "last_cycle_s_vs_standard", seconds=("last_cycle_s", "standard_cycle_s"))
    board.with_panel(standard)

    progress = _table(t, "live.progress", [InfluxQL(Q_PROGRESS)], h=8)
    progress.transformations([_columns(t, [
        "order", "operation", "good", "quantity", "progress_pct", "remaining", "eta", "due", "delay_s",
    ], hide=("made", "scrap"))])
    _progress_units(progress)
    board.with_panel(progress)
    board.with_panel(_series(t, "live.cycle_time", [InfluxQL(Q_CYCLE_TIME_BY_MACHINE).alias("$tag_machine")],
                             unit="s", w=24))
    return board


def _progress_units(panel: table.Panel) -> None:
    panel.override_by_name("eta", [dashboard.DynamicConfigValue(id_val="unit", value="dateTimeAsLocal")])
    panel.override_by_name("due", [dashboard.DynamicConfigValue(id_val="unit", value="dateTimeAsLocal")])
    panel.override_by_name("delay_s", [dashboard.DynamicConfigValue(id_val="unit", value="s")])
    panel.override_by_name("progress_pct", [dashboard.DynamicConfigValue(id_val="unit", value="percent")])


def orders(t: Texts) -> db.Dashboard:
    """2. Commandes: progress, ETA against due date, late and at-risk orders, scrap per order."""
    board = _board(t, "orders", "copeau-commandes", refresh="1m", since="now-72h", tags=["commandes"])
    board.variables(variables(t))
    board.with_panel(_bars(t, "orders.progress", InfluxQL(Q_PROGRESS_PCT).alias("$tag_order / $tag_operation"),
                           unit="percent", w=12).max(100))
    late = _table(t, "orders.late", [InfluxQL(Q_DELAY)], w=12)
    late.transformations([
        _transform("filterByValue", {"type": "include", "match": "any", "filters": [{
            "fieldName": "delay_s", "config": {"id": "greater", "options": {"value": -AT_RISK_MARGIN_S}},
        }]}),
        _columns(t, ["order", "operation", "delay_s", "eta", "due"]),
    ])
    late.thresholds(_thresholds((None, "orange"), (0, "red")))
    _progress_units(late)
    board.with_panel(late)
    eta = _table(t, "orders.eta", [InfluxQL(Q_PROGRESS)])
    eta.transformations([_columns(t, [
        "order", "operation", "quantity", "made", "good", "scrap", "remaining", "progress_pct", "eta", "due",
        "delay_s",
    ])])
    eta.thresholds(_thresholds((None, "green"), (-AT_RISK_MARGIN_S, "orange"), (0, "red")))
    _progress_units(eta)
    board.with_panel(eta)
    parts = _table(t, "orders.parts", [InfluxQL(Q_PARTS_BY_ORDER)], w=12)
    parts.transformations([_columns(t, ["order", "parts"])])
    board.with_panel(parts)
    scrap = _table(t, "orders.scrap", [InfluxQL(Q_SCRAP_BY_ORDER)], w=12)
    scrap.transformations([_columns(t, ["order", "parts", "scrap"])])
    board.with_panel(scrap)
    return board


def quality(t: Texts) -> db.Dashboard:
    """3. Qualité: scrap rate by order, machine and apprentice; first-pass yield; why there is no Pareto."""
    board = _board(t, "quality", "copeau-qualite", refresh="1m", since="now-72h", tags=["qualite"])
    board.variables(variables(t))
    fpy = stat.Panel().unit("percent").min(0).max(100)
    _common(fpy, t, "quality.fpy", w=6, h=8)
    _targets(fpy, [InfluxQL(Q_FIRST_PASS_YIELD)])
    fpy.thresholds(_thresholds((None, "red"), (90, "orange"), (98, "green")))
    board.with_panel(fpy)
    board.with_panel(_series(t, "quality.fpy_trend", [InfluxQL(Q_FPY_BY_MACHINE).alias("$tag_machine")],
                             unit="percent", w=18))
    for key, query, tag in (
        ("quality.by_order", Q_SCRAP_RATE_BY_ORDER, "order"),
        ("quality.by_machine", Q_SCRAP_RATE_BY_MACHINE, "machine"),
        ("quality.by_apprentice", Q_SCRAP_RATE_BY_APPRENTICE, "apprentice"),
    ):
        board.with_panel(_bars(t, key, InfluxQL(query).alias(f"$tag_{tag}"), unit="percent", w=8))
    board.with_panel(_text(t, "quality.pareto", h=4))
    return board


def apprentices(t: Texts) -> db.Dashboard:
    """4. Apprentis: learning curve, parts made, scrap trend. Pseudonymous codes only."""
    board = _board(t, "apprentices", "copeau-apprentis", refresh="5m", since="now-72h", tags=["apprentis"])
    board.variables(variables(t))
    board.with_panel(_text(t, "apprentices.about", h=4))
    trend = _series(t, "apprentices.cycle_trend", [InfluxQL(Q_APPRENTICE_CYCLE_TREND).alias("$tag_apprentice")],
                    unit="s", w=24)
    trend.interval("1h")  # a learning curve is read over days and weeks: at least one point per hour
    board.with_panel(trend)
    against = _series(t, "apprentices.vs_standard", [
        InfluxQL(Q_APPRENTICE_CYCLE_BY_OPERATION).alias("$tag_apprentice · $tag_order/$tag_operation"),
        InfluxQL(Q_STANDARD_TREND).alias(f"{t('legend.standard')} · $tag_order/$tag_operation"),
    ], unit="s", w=24)
    against.interval("1h")
    against.override_by_query("B", [
        dashboard.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
        dashboard.DynamicConfigValue(id_val="custom.lineWidth", value=2),
        dashboard.DynamicConfigValue(id_val="custom.showPoints", value="never"),
    ])
    board.with_panel(against)
    cycles = _table(t, "apprentices.cycle_table", [InfluxQL(Q_APPRENTICE_CYCLE_TABLE), InfluxQL(Q_STANDARD)], w=14)
    cycles.transformations([
        *_against_standard("mean_s", keep="apprentice"),
        _columns(t, ["apprentice", "order", "operation", "cycles", "mean_s", "best_s", "standard_cycle_s",
                     "mean_s_vs_standard"]),
    ])
    _vs_standard_cells(cycles, "mean_s_vs_standard", seconds=("mean_s", "best_s", "standard_cycle_s"))
    board.with_panel(cycles)
    board.with_panel(_bars(t, "apprentices.parts", InfluxQL(Q_PARTS_BY_APPRENTICE).alias("$tag_apprentice"),
                           unit="none", w=10))
    scrap = _series(t, "apprentices.scrap_trend", [InfluxQL(Q_SCRAP_TREND_BY_APPRENTICE).alias("$tag_apprentice")],
                    unit="percent", w=24)
    scrap.interval("1h")
    board.with_panel(scrap)
    return board


def machines(t: Texts) -> db.Dashboard:
    """5. Machines: state timeline, utilisation, alarms, OEE with its definitions."""
    board = _board(t, "machines", "copeau-machines", refresh="30s", since="now-24h", tags=["machines"])
    board.variables(variables(t, order=False, apprentice=False))
    timeline = statetimeline.Panel().mappings(_state_mappings(t))
    _common(timeline, t, "machines.timeline", w=24, h=8)
    _targets(timeline, [InfluxQL(Q_STATE_TIMELINE).alias("$tag_machine")])
    board.with_panel(timeline)
    board.with_panel(_bars(t, "machines.utilisation", InfluxQL(Q_UTILISATION).alias("$tag_machine"),
                           unit="percent", w=8).max(100))
    board.with_panel(_series(t, "machines.utilisation_trend",
                             [InfluxQL(Q_UTILISATION_TREND).alias("$tag_machine")], unit="percent", w=16))
    oee = bargauge.Panel().unit("percent").min(0).max(100)
    _common(oee, t, "machines.oee", w=12, h=8)
    _targets(oee, [InfluxQL(Q_OEE_AVAILABILITY).hide(), InfluxQL(Q_OEE_PERFORMANCE).hide(),
                   InfluxQL(Q_OEE_QUALITY).hide()])
    oee.with_target(sse.TypeMath().ref_id("OEE").datasource(EXPRESSION).expression("$A * $B * $C / 10000"))
    board.with_panel(oee)
    board.with_panel(_text(t, "machines.definitions", w=12, h=8))
    alarms = barchart.Panel().unit("none")
    _common(alarms, t, "machines.alarms", w=8, h=8)
    _targets(alarms, [InfluxQL(Q_ALARMS_RAISED).table()])
    board.with_panel(alarms)
    log = _table(t, "machines.alarm_log", [InfluxQL(Q_ALARM_LOG)], w=16)
    log.transformations([_columns(t, ["machine", "active", "code", "text"], keep_time=True)])
    board.with_panel(log)
    return board


BOARDS: dict[str, Callable[[Texts], db.Dashboard]] = {
    "atelier": live,
    "commandes": orders,
    "qualite": quality,
    "apprentis": apprentices,
    "machines": machines,
}

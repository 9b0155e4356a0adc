"""Push the data source and the boards to a running Grafana through grafana-client (Grafana's HTTP API).

Idempotent by construction: the data source, the folder and every board have fixed uids; the data source is
updated in place when one with that uid (or that name) exists, the folder is created only when missing, and
boards are saved with `overwrite=True`. Pushing twice therefore updates and duplicates nothing.

grafana-client is imported here only, when a push runs: it pulls in niquests, which the rest of Copeau does not
need.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from copeau.errors import CopeauError
from dashboards.boards import BOARDS, DATASOURCE_NAME, DATASOURCE_UID
from dashboards.catalogue import LANGUAGES
from dashboards.generate import DEFAULT_DATABASE, DEFAULT_INFLUX_URL, board_json
from dashboards.influxql import DATASOURCE_TYPE

FOLDER_UID = "copeau"
FOLDER_TITLE = "Copeau"
PASSWORD_ENV = "COPEAU_INFLUXDB_PASSWORD"
T = TypeVar("T")


class PushError(CopeauError):
    """Grafana refused a push or could not be reached. Carries the Grafana URL and the step that failed."""

    def __init__(self, message: str, *, url: str, step: str) -> None:
        super().__init__(message)
        self.url = url
        self.step = step


@dataclass
class PushReport:
    """What a push did: `datasource` is "created" or "updated"; `dashboards` lists the uids saved."""

    datasource: str = ""
    folder_created: bool = False
    dashboards: list[str] = field(default_factory=list)


def datasource_payload(
    *, influx_url: str = DEFAULT_INFLUX_URL, database: str = DEFAULT_DATABASE, user: str | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    """The data source as Grafana's API takes it (same settings as provisioning/datasources/copeau.yaml)."""
    payload: dict[str, Any] = {
        "name": DATASOURCE_NAME,
        "uid": DATASOURCE_UID,
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "url": influx_url,
        "user": user or "",
        "jsonData": {"dbName": database, "httpMode": "POST", "version": "InfluxQL"},
    }
    if password:
        payload["secureJsonData"] = {"password": password}
    return payload


def push(
    url: str,
    token: str,
    *,
    languages: tuple[str, ...] = ("fr",),
    influx_url: str = DEFAULT_INFLUX_URL,
    database: str = DEFAULT_DATABASE,
    influx_user: str | None = None,
    timeout_s: float = 10.0,
) -> PushReport:
    """Push the data source and the boards of `languages` to the Grafana at `url` (token: a service account's).

    The InfluxDB password, if any, is read from $COPEAU_INFLUXDB_PASSWORD. Raises PushError.
    """
    from grafana_client.api import GrafanaApi  # noqa: PLC0415  # see the module docstring
    from grafana_client.client import GrafanaClientError, GrafanaException  # noqa: PLC0415
    from niquests.exceptions import RequestException  # noqa: PLC0415

    for lang in languages:
        if lang not in LANGUAGES:
            raise PushError(f"unknown language {lang!r} (choose among {', '.join(LANGUAGES)})", url=url, step="args")
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)

    def call(step: str, action: Callable[[], T]) -> T:
        # Translate at the boundary: one error type, with the step, the URL and Grafana's own words.
        try:
            return action()
        except GrafanaException as exc:
            hint = " (check the token: a service account token with the Editor or Admin role)" \
                if exc.status_code in (401, 403) else ""
            raise PushError(f"Grafana {url}: {step} failed: HTTP {exc.status_code} {exc.message}{hint}",
                            url=url, step=step) from exc
        except RequestException as exc:
            raise PushError(f"Grafana {url} unreachable during {step}: {exc}", url=url, step=step) from exc

    def missing(step: str, action: Callable[[], Any]) -> Any | None:
        """The answer, or None when Grafana says 404 (not there yet)."""
        try:
            return call(step, action)
        except PushError as exc:
            if isinstance(exc.__cause__, GrafanaClientError) and exc.__cause__.status_code == 404:
                return None
            raise

    report = PushReport()
    payload = datasource_payload(influx_url=influx_url, database=database, user=influx_user,
                                 password=os.environ.get(PASSWORD_ENV) or None)
    if missing("data source lookup", lambda: api.datasource.get_datasource_by_uid(DATASOURCE_UID)) is not None:
        call("data source update", lambda: api.datasource.update_datasource_by_uid(DATASOURCE_UID, payload))
        report.datasource = "updated"
    else:
        same_name = missing("data source lookup", lambda: api.datasource.get_datasource_by_name(DATASOURCE_NAME))
        if same_name is not None:
            # Made by hand before Copeau pushed: take it over (and give it our uid) rather than add a twin.
            call("data source update", lambda: api.datasource.update_datasource(same_name["id"], payload))
            report.datasource = "updated"
        else:
            call("data source creation", lambda: api.datasource.create_datasource(payload))
            report.datasource = "created"

    if missing("folder lookup", lambda: api.folder.get_folder(FOLDER_UID)) is None:
        call("folder creation", lambda: api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID))
        report.folder_created = True

    for lang in languages:
        for name in BOARDS:
            board = board_json(name, lang)
            body = {"dashboard": board, "folderUid": FOLDER_UID, "overwrite": True,
                    "message": "copeau dashboards push"}
            call(f"saving board {board['uid']}", partial(api.dashboard.update_dashboard, body))
            report.dashboards.append(board["uid"])
    return report

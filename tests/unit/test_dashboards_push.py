"""`copeau dashboards push` against a small local HTTP server that plays Grafana's API and records every request.

No Grafana server can be installed here (Debian has no `grafana` package), so this checks the calls, not a real
Grafana: fixed uids, `overwrite=True`, the data source updated in place, nothing created twice.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from copeau.cli import app
from dashboards.boards import BOARDS, DATASOURCE_NAME, DATASOURCE_UID
from dashboards.push import FOLDER_UID, PushError, push

TOKEN = "glsa_test_token"


@dataclass
class FakeGrafana:
    """Just enough of Grafana's HTTP API, with state, to see what a push does."""

    datasources: dict[int, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    refuse_with: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if self.refuse_with:
            return self.refuse_with, {"message": "invalid API key"}
        parts = [urllib.parse.unquote(p) for p in path.split("?", 1)[0].strip("/").split("/")]
        match method, parts:
            case "GET", ["api", "datasources", "uid", uid]:
                found = [ds for ds in self.datasources.values() if ds["uid"] == uid]
                return (200, found[0]) if found else (404, {"message": "Data source not found"})
            case "GET", ["api", "datasources", "name", name]:
                found = [ds for ds in self.datasources.values() if ds["name"] == name]
                return (200, found[0]) if found else (404, {"message": "Data source not found"})
            case "POST", ["api", "datasources"]:
                if any(ds["name"] == body["name"] or ds["uid"] == body["uid"] for ds in self.datasources.values()):
                    return 409, {"message": "data source with the same name or uid already exists"}
                new_id = len(self.datasources) + 1
                self.datasources[new_id] = {**body, "id": new_id}
                return 200, {"id": new_id, "message": "Datasource added"}
            case "PUT", ["api", "datasources", "uid", uid]:
                found = [i for i, ds in self.datasources.items() if ds["uid"] == uid]
                if not found:
                    return 404, {"message": "Data source not found"}
                self.datasources[found[0]] = {**body, "id": found[0]}
                return 200, {"message": "Datasource updated"}
            case "PUT", ["api", "datasources", ds_id]:
                self.datasources[int(ds_id)] = {**body, "id": int(ds_id)}
                return 200, {"message": "Datasource updated"}
            case "GET", ["api", "folders", uid]:
                return (200, self.folders[uid]) if uid in self.folders else (404, {"message": "folder not found"})
            case "POST", ["api", "folders"]:
                if body["uid"] in self.folders:
                    return 409, {"message": "a folder with the same uid already exists"}
                self.folders[body["uid"]] = body
                return 200, body
            case "POST", ["api", "dashboards", "db"]:
                uid = body["dashboard"]["uid"]
                if uid in self.dashboards and not body.get("overwrite"):
                    return 412, {"message": "A dashboard with the same uid already exists"}
                version = self.dashboards.get(uid, {}).get("version", 0) + 1
                self.dashboards[uid] = {**body, "version": version}
                return 200, {"status": "success", "uid": uid, "version": version}
        return 404, {"message": f"no route {method} {path}"}


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with fake.lock:
                fake.requests.append((self.command, self.path, body))
                fake.auth.append(self.headers.get("Authorization"))
                status, answer = fake.handle(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve  # noqa: N815  # http.server's naming

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-grafana",
                              daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_pushing_twice_updates_and_duplicates_nothing(grafana: tuple[FakeGrafana, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = grafana
    monkeypatch.delenv("COPEAU_INFLUXDB_PASSWORD", raising=False)
    first = push(url, TOKEN)
    assert (first.datasource, first.folder_created) == ("created", True)
    second = push(url, TOKEN)
    assert (second.datasource, second.folder_created) == ("updated", False)
    assert first.dashboards == second.dashboards == [f"copeau-{n}" for n in
                                                     ("atelier", "commandes", "qualite", "apprentis", "machines")]

    assert [ds["uid"] for ds in fake.datasources.values()] == [DATASOURCE_UID]
    assert list(fake.folders) == [FOLDER_UID]
    assert sorted(fake.dashboards) == sorted(first.dashboards)
    assert all(d["version"] == 2 for d in fake.dashboards.values())  # replaced once, never added twice
    saves = [body for method, path, body in fake.requests if (method, path) == ("POST", "/api/dashboards/db")]
    assert len(saves) == 2 * len(BOARDS)
    assert all(s["overwrite"] is True and s["folderUid"] == FOLDER_UID and "id" not in s["dashboard"]
               for s in saves)
    creates = [(m, p) for m, p, _ in fake.requests if m == "POST" and p in ("/api/datasources", "/api/folders")]
    assert creates == [("POST", "/api/datasources"), ("POST", "/api/folders")]  # first push only
    assert set(fake.auth) == {f"Bearer {TOKEN}"}
    ds = fake.datasources[1]
    assert ds["jsonData"] == {"dbName": "copeau", "httpMode": "POST", "version": "InfluxQL"}
    assert ds["url"] == "http://127.0.0.1:18086"
    assert "secureJsonData" not in ds  # no password in the environment: none sent


def test_a_data_source_made_by_hand_with_our_name_is_taken_over(grafana: tuple[FakeGrafana, str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = grafana
    fake.datasources[7] = {"id": 7, "uid": "abc123", "name": DATASOURCE_NAME, "type": "influxdb"}
    monkeypatch.setenv("COPEAU_INFLUXDB_PASSWORD", "s3cret")
    report = push(url, TOKEN, languages=("en",), influx_url="http://influx.ecole:8086")
    assert report.datasource == "updated"
    assert list(fake.datasources) == [7]
    assert fake.datasources[7]["uid"] == DATASOURCE_UID
    assert fake.datasources[7]["secureJsonData"] == {"password": "s3cret"}
    assert fake.datasources[7]["url"] == "http://influx.ecole:8086"
    assert all(uid.endswith("-en") for uid in fake.dashboards)


def test_a_refused_token_is_a_clear_error_and_a_non_zero_exit(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    fake.refuse_with = 401
    with pytest.raises(PushError, match=r"401.*check the token") as caught:
        push(url, TOKEN)
    assert caught.value.url == url
    result = CliRunner().invoke(app, ["dashboards", "push", "--url", url, "--token", TOKEN])
    assert result.exit_code == 1
    assert "401" in result.output
    assert fake.dashboards == {}


def test_an_unreachable_grafana_is_a_clear_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(PushError, match="unreachable"):
        push(closed, TOKEN, timeout_s=2)

"""Fuzz of the JSON API from its own OpenAPI document (schemathesis), as a kiosk, as a maître and anonymously.

Theory of operation: the service runs for real (uvicorn on a free loopback port, SQLite in a temporary folder, the
real influxd of the `influx` fixture for the live counts, MQTT off), seeded with the demo's apprentices, orders
and maître (`orders.seed`) and one job already running on the mill with parts in InfluxDB. schemathesis reads
`/api/openapi.json`; for each role:

1. every operation on its own: requests that fit the document (positive) and that do not (negative), drawn by
   Hypothesis, plus the boundary values generators rarely draw (integers beyond 32 and 64 bits, empty and very
   long texts) for every integer or text parameter the document declares, and odd `Origin` headers;
2. walks of `STEPS` requests over all operations, mixing generated requests with requests built from the
   seeded data (real badges, job cards, session ids), so that the kiosk's badge → job → declaration flow and the
   maîtres' corrections happen in many orders; a kiosk polls its state after every step.

Each response must pass these schemathesis checks:

- `not_a_server_error`: no 5xx (InfluxDB is up, so not even the documented 503);
- `status_code_conformance`: the status is one the document lists for the operation;
- `content_type_conformance`, `response_headers_conformance`: the response is what the document says;
- `response_schema_conformance`: the body fits the documented schema (every refusal is a `Problem`);
- `negative_data_rejection`: a request that does not fit the document is refused with a 4xx.

Not used: `positive_data_acceptance` (a request that fits the document may rightly be refused by the domain: an
unknown badge is a 404, a busy machine a 409); the stateful checks (`use_after_free`, …: the API has no links);
`ignored_auth` (the document declares no security scheme: keys and log-in are checked by the routes). And the
service must log nothing at ERROR level (an unhandled error that did not become a 500). The live board's event
stream is left out: it never ends, and it takes no input to fuzz.

Reproducible: Hypothesis is derandomized (the same requests on every run, given the same document) and keeps no
example database; a failure comes with a curl line that replays it. The budget is small (`EXAMPLES`, `WALKS`) so
that the whole fuzz fits in `make test`.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from copeau.config import InfluxSettings
from copeau.contract import CycleData, CycleOutcome, CyclePhase, Event, EventContext, EventKind, PartData
from copeau.services import free_port
from gateway.influx import InfluxWriter
from gateway.lineprotocol import event_line
from gateway.service import context_tags
from orders.seed import DEMO_LOGIN, DEMO_PASSWORD, seed_demo
from orders.station import Via
from tests.conftest import Influx, make_workshop, modbus_machine, wait_until
from web.app import create_app

pytestmark = pytest.mark.integration

MILL, LATHE = "fraiseuse-1", "tour-1"
KEYS = {MILL: "cle-de-la-fraiseuse-1-pour-le-fuzz", LATHE: "cle-du-tour-1-pour-le-fuzz-xxxxxx"}
# The budget, per role: EXAMPLES per operation and kind of request, then WALKS of STEPS requests.
EXAMPLES, WALKS, STEPS = 8, 15, 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
INT_EDGES = (0, -1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30)
ORIGIN_EDGES = ("http://[", "null", "http://127.0.0.1:1", "", "x" * 3000)
TEXT_EDGES = (" ", "x" * 5000, "é" * 300, "null", "0", "-1", "a%00b", "<script>")
NEW_ORDER = ("commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)\n"
             "CMD-FUZZ-001;Client du fuzz;PIECE-1;10;2030-01-15;10;fraiseuse;12;60\n").encode()


@dataclass
class Service:
    base_url: str
    badges: list[str]
    orders: list[str]


@pytest.fixture
def service(tmp_path: Path, influx: Influx) -> Iterator[Service]:
    database = influx.new_database("fuzz")
    port = int(influx.url.rsplit(":", 1)[1])
    workshop = make_workshop(
        tmp_path, mqtt_port=free_port(), influx_port=port, database=database,
        machines=[modbus_machine(MILL, free_port()), {**modbus_machine(LATHE, free_port()), "kind": "lathe"}],
        # The fuzz scans many unknown codes: without this the kiosk would refuse every scan after the fifth.
        web={"unknown_badge_limit": 1000},
    )
    app = create_app(workshop, database_url=f"sqlite:///{tmp_path / 'copeau.sqlite'}", mqtt=False, progress=False,
                     kiosk_keys=KEYS)
    # log_config=None: uvicorn leaves logging alone, so that pytest's caplog sees the service's errors.
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fuzz-uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=30, what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        web = app.state.copeau
        now = datetime.now(UTC)
        with web.transaction() as db:
            demo = seed_demo(db, now=now)
        badges = list(demo.apprentices)
        # One job running on the mill, with parts in InfluxDB written exactly as the gateway writes them.
        web.stations.scan(machine=MILL, code=badges[0], via=Via.KIOSK, now=now)
        web.stations.choose_job(machine=MILL, order=demo.orders[0], operation=10, now=now)
        write_parts(influx_port=port, database=database, machine=MILL, order=demo.orders[0],
                    apprentice=demo.apprentices[badges[0]], start=now)
        yield Service(f"http://127.0.0.1:{config.port}", badges, demo.orders)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def write_parts(*, influx_port: int, database: str, machine: str, order: str, apprentice: str,
                start: datetime) -> None:
    """Five parts and their cycles, stamped with the job's context, as the gateway writes them."""
    ctx = EventContext(order=order, operation=10, apprentice=apprentice)
    lines = []
    for i in range(5):
        ts = int((start + timedelta(seconds=i + 1)).timestamp() * 1e9)
        part = Event(site="test-site", machine=machine, kind=EventKind.PART, seq=2 * i, ts=ts,
                     data=PartData(count=1), ctx=ctx)
        cycle = Event(site="test-site", machine=machine, kind=EventKind.CYCLE, seq=2 * i + 1, ts=ts,
                      data=CycleData(phase=CyclePhase.END, started_ts=ts - 10**9, duration_s=1.0,
                                     outcome=CycleOutcome.COMPLETED), ctx=ctx)
        lines += [event_line(e, context_tags=context_tags(e)) for e in (part, cycle)]
    writer = InfluxWriter(InfluxSettings(host="127.0.0.1", port=influx_port, database=database))
    try:
        assert not writer.write(lines).rejected
    finally:
        writer.close()


def known_cases(operation: Any, service: Service, *, machine: str | None) -> list[dict[str, Any]]:
    """Requests built from the seeded data, so that the walks get past "unknown" into the real work."""
    path, method = operation.path, operation.method.upper()
    with_body: Callable[[list[Any]], list[dict[str, Any]]] = lambda bodies: [  # noqa: E731
        {"body": b} if b is not None else {} for b in bodies]
    if path.startswith("/api/kiosque/") and machine is not None:
        bodies: list[Any] = [None]
        if path.endswith("/scan"):
            jobs = [f"{order}/{op}" for order in service.orders for op in (10, 20)]
            bodies = [{"code": code} for code in [*service.badges, *jobs, f" {service.badges[1]} "]]
        elif path.endswith("/travail"):
            bodies = [{"order": order, "operation": op} for order in service.orders for op in (10, 20)]
        elif path.endswith("/declaration"):
            bodies = [{"good": 0, "scrap": {}}, {"good": 2, "scrap": {"COTE": 1}}, {"good": 1, "scrap": {"cote": 1}},
                      {"good": 1, "scrap": {"COTE": 2**63}}, {"good": 0, "scrap": {"COTE": 2**64}},
                      {"good": 1, "scrap": {"COTE": -1}}, {"good": 0, "scrap": {"INCONNU": 1}}]
        other = LATHE if machine == MILL else MILL
        return [{"path_parameters": {"machine": m}, **b} for m in (machine, machine, other) for b in with_body(bodies)]
    if "{session_id}" in path:
        bodies = [None]
        if path.endswith("/declaration"):
            bodies = [{"good": 0, "scrap": {}}, {"good": 2, "scrap": {"COTE": 1}}]
        return [{"path_parameters": {"session_id": sid}, **b} for sid in (1, 2, 3, 4) for b in with_body(bodies)]
    if "{reference}" in path:
        return [{"path_parameters": {"reference": ref}} for ref in service.orders[-1:]]
    if path == "/api/commandes/import" and method == "POST":
        return [{"body": {"fichier": NEW_ORDER}, "media_type": "multipart/form-data"}]
    if path == "/api/apprentis" and method == "POST":
        return with_body([{"first_name": "Inès", "last_name": "Roux", "badge": badge}
                          for badge in ("0009990001", service.badges[0])])
    if path == "/api/motifs" and method == "POST":
        return with_body([{"code": code, "label_fr": "Bavure", "label_en": "Burr"} for code in ("BAVURE", "cote")])
    if path == "/api/connexion":
        return with_body([{"login": DEMO_LOGIN, "password": DEMO_PASSWORD}, {"login": DEMO_LOGIN, "password": "x"}])
    return []


def edge_cases(method: str, definition: dict[str, Any]) -> list[dict[str, Any]]:
    """Boundary values for every integer or text parameter (path or query) the document declares, and odd
    `Origin` headers on requests that change something (the routes read that header themselves)."""
    parameters = definition.get("parameters", [])
    cases: list[dict[str, Any]] = []
    if method.upper() == "POST":
        cases += [{"headers": {"Origin": origin}} for origin in ORIGIN_EDGES]
    for parameter in parameters:
        where = {"path": "path_parameters", "query": "query"}.get(parameter["in"])
        kind = parameter.get("schema", {}).get("type")
        edges = INT_EDGES if kind == "integer" else TEXT_EDGES if kind == "string" else ()
        if where is not None:
            cases += [{where: {parameter["name"]: value}} for value in edges]
    # Every case names every path parameter (an ordinary value where the case is about something else).
    ordinary = {p["name"]: 1 if p.get("schema", {}).get("type") == "integer" else MILL
                for p in parameters if p["in"] == "path"}
    return [{**case, "path_parameters": {**ordinary, **case.get("path_parameters", {})}} for case in cases]


@dataclass
class Role:
    name: str
    session: requests.Session
    machine: str | None = None  # a kiosk's own machine
    login: Callable[[], None] | None = None  # a maître logs in again after logging out


class Fuzz:
    """One role's fuzz. Failures are collected (the first per operation and kind, with a curl line to replay it)
    rather than raised, so that one run reports every broken operation and the walks go on."""

    def __init__(self, schema: Any, service: Service, role: Role) -> None:
        self.service = service
        self.role = role
        self.operations = [op for op in (result.ok() for result in schema.get_all_operations())
                           if not _is_event_stream(schema.raw_schema["paths"][op.path][op.method])]
        self.definitions = {op.label: schema.raw_schema["paths"][op.path][op.method] for op in self.operations}
        self.state = schema["/api/kiosque/{machine}/etat"]["GET"]
        self.failures: dict[tuple[str, str, str], str] = {}
        self.sent = 0

    def send(self, case: Any) -> None:
        """Send one request, check its response, and keep the role's log-in consistent."""
        response = case.call(base_url=self.service.base_url, session=self.role.session, timeout=30)
        self.sent += 1
        name = case.operation.label
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            kinds = ",".join(sorted(type(f).__name__ for f in exc.exceptions))
            self.failures.setdefault((self.role.name, name, kinds), f"[{self.role.name}] {name}: {exc}")
        ok = response.status_code < 400
        if case.operation.path == "/api/deconnexion" and ok and self.role.login is not None:
            self.role.login()
        elif case.operation.path == "/api/connexion" and ok:  # a new log-in session comes with its own CSRF token
            self.role.session.headers["X-CSRF-Token"] = response.json()["csrf"]

    def generated(self, operation: Any) -> list[SearchStrategy[Any]]:
        """Requests generated from the document: fitting it (positive) and not (negative). A kiosk also aims at
        its own machine, or nearly every request would stop at "unknown machine"."""
        fixed: list[dict[str, Any]] = [{}]
        if self.role.machine is not None and "{machine}" in operation.path:
            fixed.append({"path_parameters": {"machine": self.role.machine}})
        definition = self.definitions[operation.label]
        # Nothing to get wrong in a request without parameters or body: a negative one can never be drawn.
        modes = list(GenerationMode) if definition.get("parameters") or "requestBody" in definition else [
            GenerationMode.POSITIVE]
        return [operation.as_strategy(mode, **kwargs) for mode in modes for kwargs in fixed]

    def each_operation(self) -> None:
        """Every operation on its own: boundary values, then generated requests, to find what breaks one route."""
        for operation in self.operations:
            for kwargs in edge_cases(operation.method, self.definitions[operation.label]):
                self.send(operation.Case(**kwargs))
            strategies = self.generated(operation)

            @settings(max_examples=EXAMPLES * len(strategies), deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=st.one_of(strategies))
            def run(case: Any) -> None:
                self.send(case)

            run()

    def walks(self) -> None:
        """Walks over all operations, generated and known requests mixed; a kiosk polls its state at each step.
        The order of the operations comes from a seeded generator (Hypothesis draws the seed): lists drawn by
        Hypothesis itself would be short and much alike."""
        per_operation = {}
        for op in self.operations:
            strategy = st.one_of(self.generated(op))
            if cases := known_cases(op, self.service, machine=self.role.machine):  # half the time, a known one
                strategy = strategy | st.sampled_from(cases).map(lambda kwargs, op=op: op.Case(**kwargs))
            per_operation[op.label] = strategy

        @settings(max_examples=WALKS, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(data=st.data(), seed=st.integers(0, 2**32 - 1))
        def run(data: st.DataObject, seed: int) -> None:
            order = random.Random(seed)
            # Every request is drawn before the first is sent: a draw Hypothesis rejects halfway would otherwise
            # leave a walk half sent, and the rejected walk would not count towards WALKS.
            walk = [data.draw(per_operation[order.choice(self.operations).label]) for _ in range(STEPS)]
            for case in walk:
                self.send(case)
                if self.role.machine is not None:
                    self.send(self.state.Case(path_parameters={"machine": self.role.machine}))

        run()


def _is_event_stream(definition: dict[str, Any]) -> bool:
    return any("text/event-stream" in response.get("content", {}) for response in definition["responses"].values())


def test_api_fuzz_as_kiosk_maitre_and_anonymous(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    schema = schemathesis.openapi.from_url(f"{service.base_url}/api/openapi.json")
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert {"POST /api/kiosque/{machine}/scan", "POST /api/sessions/{session_id}/declaration"} <= labels, labels

    kiosk = requests.Session()
    kiosk.headers["X-Kiosk-Key"] = KEYS[MILL]
    maitre = requests.Session()

    def login() -> None:
        maitre.cookies.clear()
        answer = maitre.post(f"{service.base_url}/api/connexion", json={"login": DEMO_LOGIN, "password": DEMO_PASSWORD},
                             timeout=30)
        assert answer.status_code == 200, answer.text
        maitre.headers["X-CSRF-Token"] = answer.json()["csrf"]

    login()
    failures: dict[tuple[str, str, str], str] = {}
    sent: dict[str, int] = {}
    with caplog.at_level(logging.ERROR):
        # The anonymous role starts without any key or log-in (its walks may log in, as a browser would).
        for role in (Role("kiosque", kiosk, machine=MILL), Role("maître", maitre, login=login),
                     Role("anonyme", requests.Session())):
            fuzz = Fuzz(schema, service, role)
            fuzz.each_operation()
            fuzz.walks()
            failures |= fuzz.failures
            sent[role.name] = fuzz.sent
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert not failures, "\n\n".join(failures.values())
    assert not errors, errors
    assert min(sent.values()) > 500, sent  # the fuzz really ran


@pytest.mark.parametrize("good", ["²", "1" * 5000, "-1", "1e3"])
def test_the_declaration_form_refuses_odd_numbers_with_a_422(service: Service, good: str) -> None:
    """Found next to the fuzz (the pages are not in the OpenAPI document): `"²".isdigit()` is true, `int("²")`
    fails, and `int()` refuses thousands of digits. Each was a 500; each must be a clear refusal."""
    browser = requests.Session()
    answer = browser.post(f"{service.base_url}/api/connexion", json={"login": DEMO_LOGIN, "password": DEMO_PASSWORD},
                          timeout=30)
    assert answer.status_code == 200, answer.text
    page = browser.post(f"{service.base_url}/admin/sessions/1/declaration",
                        data={"csrf": answer.json()["csrf"], "good": good}, timeout=30)
    assert page.status_code == 422, page.text
    assert "text/html" in page.headers["content-type"]

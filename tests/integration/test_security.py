"""The production profile, on real servers: mosquitto with a password file and the generated ACL, influxd with
authentication and least-privilege accounts, both started by copeau.services from a production workshop file.

- an anonymous MQTT client, or one with a wrong password, is refused;
- a collector that publishes a machine that is not its own is refused by the broker, and the real gateway
  receives nothing of it, while the same collector's own machine is stored exactly as the simulator made it;
- InfluxDB answers 401 without credentials; each account can do what its role needs and nothing more;
- no secret reaches a log, a URL or a server's log, even when a password is wrong; an example secret is refused
  by the configuration loader, with file, line and field.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as paho
import pytest
import urllib3
from cryptography import x509  # asyncua's dependency: the OPC UA side uses it too
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from collectors.outbox import Outbox
from collectors.runner import Collector, outbox_path
from copeau import security
from copeau.config import ConfigError, ModbusMachine, Secret, Workshop, load_workshop
from copeau.contract import Event, EventKind, MachineState, PartData, StateData
from copeau.influxql import InfluxQuery
from copeau.mqtt import MqttLink
from copeau.mqttfast import FastClient
from copeau.security import Role, for_role
from copeau.services import ManagedProcess, free_port, managed_services, mosquitto_process, port_is_free
from gateway.influx import InfluxWriter, StoreStopped
from gateway.service import Gateway
from simulators.groundtruth import read_truth, truth_path
from simulators.modbus import ModbusMachineSimulator
from tests.conftest import REGISTERS, wait_for, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET_NAMES = ("mqtt-gateway", "mqtt-web", "mqtt-atelier-a", "mqtt-atelier-b", "mqtt-reader",
                "influx-admin", "influx-gateway", "influx-web", "influx-grafana")


def workshop_yaml(*, secrets: Path, state: Path, mqtt_port: int, influx_port: int, rpc_port: int,
                  modbus_ports: tuple[int, int]) -> str:
    machines = ""
    for i, port in enumerate(modbus_ports, start=1):
        machines += textwrap.dedent(f"""\
          - id: fraiseuse-{i}
            name: Fraiseuse {i}
            kind: mill
            protocol: modbus
            endpoint: {{host: 127.0.0.1, port: {port}}}
            poll_interval_s: 0.05
            registers: {REGISTERS}
            simulation: {{seed: {i}, cycle_s: 0.4, cycle_jitter_s: 0.1, idle_s: 0.2, parts: 5}}
        """)
    return textwrap.dedent(f"""\
        site: {{id: ecole-test, name: "École (test du profil production)"}}
        services: {{mode: managed, profile: production, state_dir: {state}}}
        mqtt:
          host: 127.0.0.1
          port: {mqtt_port}
          accounts:
            gateway: {{username: copeau-gateway, password: {{file: {secrets}/mqtt-gateway}}}}
            web: {{username: copeau-web, password: {{file: {secrets}/mqtt-web}}}}
            collectors:
              - {{id: atelier-a, machines: [fraiseuse-1], password: {{file: {secrets}/mqtt-atelier-a}}}}
              - {{id: atelier-b, machines: [fraiseuse-2], password: {{file: {secrets}/mqtt-atelier-b}}}}
            badge_readers:
              - {{machine: fraiseuse-1, password: {{file: {secrets}/mqtt-reader}}}}
        influxdb:
          host: 127.0.0.1
          port: {influx_port}
          rpc_port: {rpc_port}
          database: copeau
          accounts:
            admin: {{username: admin, password: {{file: {secrets}/influx-admin}}}}
            gateway: {{username: copeau-gateway, password: {{file: {secrets}/influx-gateway}}}}
            web: {{username: copeau-web, password: {{file: {secrets}/influx-web}}}}
            grafana: {{username: grafana, password: {{file: {secrets}/influx-grafana}}}}
        machines:
        """) + machines


@dataclass
class Site:
    workshop: Workshop
    config: Path
    broker: ManagedProcess
    influxd: ManagedProcess
    secrets: dict[str, str]  # name → value, to look for in logs

    @property
    def mqtt_port(self) -> int:
        return self.workshop.mqtt.port

    @property
    def influx_url(self) -> str:
        return self.workshop.influxdb.url

    def secret(self, name: str) -> str:
        return self.secrets[name]

    def reader(self) -> InfluxQuery:
        """Queries as Grafana's read-only account."""
        accounts = self.workshop.influxdb.accounts
        assert accounts is not None
        assert accounts.grafana is not None
        return InfluxQuery(self.workshop.influxdb.model_copy(
            update={"username": accounts.grafana.username, "password": accounts.grafana.password}))

    def server_logs(self) -> str:
        state = self.workshop.state_dir
        return "".join(p.read_text(errors="replace") for p in (
            state / "mosquitto" / "mosquitto.log", state / "mosquitto" / "mosquitto.stdout.log",
            state / "influxdb" / "influxd.log") if p.exists())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("production")
    secrets_dir = root / "secrets"
    security.create_secret_files(secrets_dir / name for name in SECRET_NAMES)
    config = root / "workshop.yaml"
    config.write_text(workshop_yaml(secrets=secrets_dir, state=root / "var", mqtt_port=free_port(),
                                    influx_port=free_port(), rpc_port=free_port(),
                                    modbus_ports=(free_port(), free_port())))
    workshop = load_workshop(config)
    services = for_role(workshop, Role.SERVICES)
    with managed_services(
        mqtt_host=services.mqtt.host,
        mqtt_port=services.mqtt.port,
        influx_host=services.influxdb.host,
        influx_port=services.influxdb.port,
        influx_rpc_port=services.influxdb.rpc_port,
        database=services.influxdb.database,
        state_dir=services.state_dir,
        config_name=str(config),
        broker_security=security.broker_security(services, source=str(config)),
        influx_security=security.influx_security(services),
    ) as (broker, influxd):
        yield Site(workshop, config, broker, influxd,
                   {name: (secrets_dir / name).read_text().strip() for name in SECRET_NAMES})


def assert_no_secret(site: Site, text: str) -> None:
    for name, value in site.secrets.items():
        assert value not in text, f"the secret {name} appears in a log"


# --- MQTT -----------------------------------------------------------------------------------------------------------


class Client:
    """A raw MQTT 5 client, to see the broker's own answers (CONNACK and PUBACK reason codes)."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None, *,
                 tls_ca: Path | None = None) -> None:
        self.connack: str | None = None
        self.pubacks: dict[int, str] = {}
        self.messages: list[str] = []
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{username}-{time.monotonic_ns()}",
                                   protocol=MQTTProtocolVersion.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls_ca is not None:
            self._client.tls_set(ca_certs=str(tls_ca))
        self._client.on_connect = lambda _c, _u, _f, reason, _p: setattr(self, "connack", str(reason))
        self._client.on_publish = lambda _c, _u, mid, reason, _p: self.pubacks.__setitem__(mid, str(reason))
        self._client.on_message = lambda _c, _u, msg: self.messages.append(msg.topic)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        wait_until(lambda: self.connack, timeout=10, what=f"the broker's CONNACK to {username}")

    def connected(self) -> bool:
        return self._client.is_connected()

    def publish(self, topic: str, payload: bytes) -> str:
        """Publish at QoS 1 and return the broker's PUBACK reason."""
        mid = self._client.publish(topic, payload, qos=1).mid
        return str(wait_until(lambda: self.pubacks.get(mid), timeout=10, what=f"PUBACK for {topic}"))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def test_anonymous_and_wrong_password_mqtt_connections_are_refused(site: Site) -> None:
    anonymous = Client(site.mqtt_port)
    wrong = Client(site.mqtt_port, "copeau-gateway", "not-the-password-Zq81")
    right = Client(site.mqtt_port, "copeau-gateway", site.secret("mqtt-gateway"))
    try:
        assert anonymous.connack == "Not authorized"
        assert wrong.connack == "Not authorized"
        assert right.connack == "Success"
    finally:
        for client in (anonymous, wrong, right):
            client.close()
    passwd = site.workshop.state_dir / "mosquitto" / "passwd"
    assert oct(passwd.stat().st_mode & 0o777) == "0o600"
    assert_no_secret(site, passwd.read_text())


def state_event(machine: str) -> Event:
    # A state event: if a gateway ever received it, it would not change the part counts the other tests check.
    return Event(site="ecole-test", machine=machine, kind=EventKind.STATE, seq=10_000, ts=time.time_ns(),
                 data=StateData(state=MachineState.IDLE))


def test_each_account_may_publish_only_its_own_topics(site: Site) -> None:
    """The broker's answers to one collector, one badge reader and the web service, topic by topic."""
    a = Client(site.mqtt_port, "atelier-a", site.secret("mqtt-atelier-a"))
    reader = Client(site.mqtt_port, "fraiseuse-1", site.secret("mqtt-reader"))
    web = Client(site.mqtt_port, "copeau-web", site.secret("mqtt-web"))
    root = "copeau/v1/ecole-test"
    try:
        mine, other = state_event("fraiseuse-1"), state_event("fraiseuse-2")
        assert a.publish(mine.topic, mine.encode()) in ("Success", "No matching subscribers")
        assert a.publish(other.topic, other.encode()) == "Not authorized"
        assert a.publish(f"{root}/fraiseuse-1/context", b"{}") == "Not authorized"  # the web service's
        assert a.publish(f"{root}/fraiseuse-1/badge", b"{}") == "Not authorized"  # the reader's
        assert a.publish(f"{root}/collectors/atelier-b/status", b"{}") == "Not authorized"  # another collector's
        assert a.publish(f"{root}/collectors/atelier-a/status", b"{}") != "Not authorized"
        assert a.publish("copeau/v1/other-site/fraiseuse-1/state", mine.encode()) == "Not authorized"
        assert reader.publish(f"{root}/fraiseuse-1/badge", b"{}") != "Not authorized"
        assert reader.publish(f"{root}/fraiseuse-2/badge", b"{}") == "Not authorized"
        assert reader.publish(mine.topic, mine.encode()) == "Not authorized"
        assert web.publish(f"{root}/fraiseuse-2/context", b"{}") != "Not authorized"
        assert web.publish(other.topic, other.encode()) == "Not authorized"
    finally:
        for client in (a, reader, web):
            client.close()


def test_a_collector_cannot_publish_another_machine_and_the_gateway_receives_nothing_of_it(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """Collector atelier-a serves fraiseuse-1, which makes 5 parts, and is also (wrongly) told to read fraiseuse-2:
    its copy of the workshop file drifted from the broker's. The broker refuses what it publishes for fraiseuse-2,
    and so does it for a client logged in as atelier-a that publishes fraiseuse-2's parts by hand. The real gateway
    receives none of it and InfluxDB holds nothing of fraiseuse-2, while fraiseuse-1's 5 parts are all stored;
    the refused event stays in the collector's outbox (nothing is lost, nothing is faked)."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="urllib3")  # its DEBUG lines show every URL requested
    w = site.workshop
    own = for_role(w, Role.COLLECTOR, collector_id="atelier-a")
    assert [m.id for m in own.machines] == ["fraiseuse-1"]
    drifted = own.model_copy(update={"machines": w.machines})

    gateway = Gateway(for_role(w, Role.GATEWAY))
    seen: list[str] = []
    deliver = gateway.link.client.on_message
    assert deliver is not None

    def spy(client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        seen.append(msg.topic)
        deliver(client, userdata, msg)

    gateway.link.client.on_message = spy
    client = cast(FastClient, gateway.link.client)
    deliver_raw = client.on_message_raw  # the common messages come this way (copeau/mqttfast.py)
    assert deliver_raw is not None

    def spy_raw(topic: bytes, *rest: Any) -> None:
        seen.append(topic.decode())
        deliver_raw(topic, *rest)

    client.on_message_raw = spy_raw
    gateway.start()
    try:
        assert gateway.wait_ready(15), "the gateway's subscription"
        by_hand = Client(site.mqtt_port, "atelier-a", site.secret("mqtt-atelier-a"))
        try:
            for seq in range(5):  # each refusal costs this client its connection (mosquitto 2.0): reconnect
                wait_until(by_hand.connected, timeout=10, what="the hand client connected")
                event = Event(site="ecole-test", machine="fraiseuse-2", kind=EventKind.PART, seq=seq,
                              ts=time.time_ns(), data=PartData(count=1))
                assert by_hand.publish(event.topic, event.encode()) == "Not authorized"
        finally:
            by_hand.close()
        left = asyncio.run(run_collector(drifted))
        assert left and all("/fraiseuse-2/" in topic for topic in left)
        q = site.reader()
        assert read_truth(truth_path(w.state_dir, "fraiseuse-1")).parts == 5

        def stored() -> dict[str, int]:
            return {k: int(v) for k, v in
                    q.by_tag('SELECT sum("count") FROM "part" GROUP BY "machine"', "machine").items()}

        wait_until(lambda: stored() == {"fraiseuse-1": 5}, timeout=20,
                   what="InfluxDB to hold the 5 parts of fraiseuse-1 and none of fraiseuse-2")
        for kind in EventKind:
            assert q.series(f"SELECT count(\"seq\") FROM \"{kind.value}\" WHERE \"machine\" = 'fraiseuse-2'") == []
        assert [t for t in seen if "/fraiseuse-2/" in t] == []
        assert len([t for t in seen if "/fraiseuse-1/part" in t]) >= 5
        assert gateway.stats.dead_letters == 0
    finally:
        gateway.stop()
    assert "the broker refused a publication on copeau/v1/ecole-test/fraiseuse-2/state" in caplog.text
    assert_no_secret(site, caplog.text)
    assert_no_secret(site, site.server_logs())


async def run_collector(workshop: Workshop) -> list[str]:
    """fraiseuse-1's simulator plays 5 parts; fraiseuse-2 has no module on the network (the collector publishes it
    `offline`). Returns the topics left in the outbox, read again after the collector stopped."""
    machine = workshop.machine("fraiseuse-1")
    assert isinstance(machine, ModbusMachine)
    sim = ModbusMachineSimulator(machine, truth_path=truth_path(workshop.state_dir, machine.id))
    collector = Collector(workshop)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        sim_task = tg.create_task(sim.run(), name="sim:fraiseuse-1")
        await wait_for(lambda: not port_is_free("127.0.0.1", machine.endpoint.port), timeout=10,
                       what="the simulated module listening")
        run = tg.create_task(collector.run(stop, drain_timeout_s=0.5), name="collector")
        await wait_for(sim.finished.is_set, timeout=60, what="the scenario to finish")
        await wait_for(lambda: collector.stats.views["fraiseuse-1"].counter == sim.counter, timeout=10,
                       what="the collector reading the final counter")
        await wait_for(lambda: (left := _left(collector.outbox)) and all("/fraiseuse-2/" in t for t in left),
                       timeout=30, what="every event of fraiseuse-1 acknowledged; fraiseuse-2's refused")
        assert collector.link.refused >= len(_left(collector.outbox))
        stop.set()
        await run
        sim_task.cancel()
    reopened = Outbox(outbox_path(workshop))  # still there after the collector stopped: nothing was lost
    try:
        return _left(reopened)
    finally:
        reopened.close()


def _left(outbox: Outbox) -> list[str]:
    return [row.topic for row in outbox.pending(after_id=0, limit=10_000)]


# --- InfluxDB -------------------------------------------------------------------------------------------------------


def influx_request(url: str, method: str, path: str, *, auth: tuple[str, str] | None = None,
                   body: bytes | None = None, query: dict[str, str] | None = None) -> tuple[int, str]:
    headers = urllib3.make_headers(basic_auth=f"{auth[0]}:{auth[1]}") if auth else {}
    target = f"{url}{path}?{urllib.parse.urlencode(query or {})}"
    resp = urllib3.PoolManager().request(method, target, body=body, headers=headers)
    return resp.status, resp.data.decode()


def test_influxdb_requires_credentials_and_grants_each_account_the_least_it_needs(site: Site) -> None:
    url = site.influx_url
    line = f"probe,machine=m v=1i {time.time_ns()}".encode()
    write = {"db": "copeau", "precision": "ns"}
    select = {"db": "copeau", "q": 'SELECT count("v") FROM "probe"'}
    assert influx_request(url, "GET", "/ping")[0] == 204  # the health check needs no credentials
    assert influx_request(url, "POST", "/query", query={"q": "SHOW DATABASES"})[0] == 401
    assert influx_request(url, "POST", "/write", query=write, body=line)[0] == 401
    assert influx_request(url, "POST", "/write", query=write, body=line,
                          auth=("copeau-gateway", "not-the-password"))[0] == 401
    gateway = ("copeau-gateway", site.secret("influx-gateway"))
    web = ("copeau-web", site.secret("influx-web"))
    grafana = ("grafana", site.secret("influx-grafana"))
    assert influx_request(url, "POST", "/write", query=write, body=line, auth=gateway)[0] == 204
    assert influx_request(url, "POST", "/query", query=select, auth=gateway)[0] == 403  # WRITE only
    assert influx_request(url, "POST", "/query", query={"q": "DROP DATABASE copeau"}, auth=web)[0] == 403
    assert influx_request(url, "POST", "/write", query=write, body=line, auth=grafana)[0] == 403  # READ only
    status, answer = influx_request(url, "POST", "/query", query=select, auth=grafana)
    assert status == 200
    assert json.loads(answer)["results"][0]["series"][0]["values"][0][1] == 1
    assert influx_request(url, "POST", "/write", query=write, body=line.replace(b"v=1i", b"v=2i"), auth=web)[0] == 204


def test_secrets_never_reach_the_logs_even_with_wrong_passwords(site: Site, caplog: pytest.LogCaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose MQTT and InfluxDB passwords are wrong: it says so, and neither the wrong password nor any real
    secret appears in Copeau's log (urllib3's DEBUG lines show every URL), mosquitto's or influxd's."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="urllib3")  # its DEBUG lines show every URL requested
    wrong = f"wrong-password-{time.monotonic_ns()}"
    monkeypatch.setenv("COPEAU_TEST_WRONG_PASSWORD", wrong)
    bad = Secret(env="COPEAU_TEST_WRONG_PASSWORD")
    w = for_role(site.workshop, Role.GATEWAY)
    w = w.model_copy(update={"mqtt": w.mqtt.model_copy(update={"password": bad}),
                             "influxdb": w.influxdb.model_copy(update={"password": bad}),
                             "gateway": w.gateway.model_copy(update={"client_id": "copeau-gateway-wrong"})})
    gateway = Gateway(w)
    gateway.start()
    try:
        wait_until(lambda: "refused copeau-gateway-wrong: Not authorized" in caplog.text, timeout=15,
                   what="the gateway to log the broker's refusal")
        assert not gateway.wait_ready(0.5)
    finally:
        gateway.stop()
    stop = threading.Event()
    writer = InfluxWriter(w.influxdb, stop=stop, sleep=lambda _s: stop.set())
    with pytest.raises(StoreStopped):
        writer.write([f"probe v=1i {time.time_ns()}"])
    assert "refused user copeau-gateway" in caplog.text  # the writer said what to check
    assert '"POST /write?db=copeau&precision=ns' in caplog.text  # the URLs are in the log, and hold no secret
    for text in (caplog.text, site.server_logs()):
        assert wrong not in text
        assert_no_secret(site, text)


def test_a_placeholder_secret_is_refused_by_the_config_loader(site: Site, tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name in SECRET_NAMES:
        (secrets_dir / name).write_text(site.secret(name))
    (secrets_dir / "influx-gateway").write_text("changeme\n")
    text = site.config.read_text().replace(str(site.config.parent / "secrets"), str(secrets_dir))
    config = tmp_path / "workshop.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_workshop(config)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if "gateway: {username: copeau-gateway" in row
                and "influx-gateway" in row)
    assert [str(p) for p in info.value.problems] == [
        f"{config}:{line}: influxdb.accounts.gateway.password: le secret est une valeur d'exemple, pas un vrai secret "
        f"(`copeau security secrets` en génère) (fichier {secrets_dir / 'influx-gateway'})"
    ]


# --- TLS (optional in production) -----------------------------------------------------------------------------------


def test_mqtt_over_tls_with_the_sites_ca(tmp_path: Path) -> None:
    """The managed broker presents its certificate; a client that trusts the site's CA connects, one that speaks
    plain MQTT does not."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: Any, issuer: x509.Name | None, issuer_key: Any, *, ca: bool) -> Any:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, broker_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("Copeau test CA", ca_key, None, ca_key, ca=True)
    broker_cert = certificate("127.0.0.1", broker_key, ca_cert.subject, ca_key, ca=False)
    files = {"ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
             "broker.crt": broker_cert.public_bytes(serialization.Encoding.PEM),
             "broker.key": broker_key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "pw").write_text("tls-test-password-Zq81")
    pw = {"file": str(tmp_path / "pw")}
    port = free_port()
    w = Workshop.model_validate({
        "site": {"id": "tls", "name": "TLS"},
        "services": {"mode": "managed", "profile": "production", "state_dir": str(tmp_path / "var")},
        "mqtt": {"port": port, "tls": {"ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "broker.crt"),
                                       "key_file": str(tmp_path / "broker.key")},
                 "accounts": {"gateway": {"username": "gw", "password": pw},
                              "collectors": [{"id": "c", "machines": ["m"], "password": pw}]}},
        "influxdb": {"accounts": {"admin": {"username": "a", "password": pw},
                                  "gateway": {"username": "g", "password": pw}}},
        "machines": [{"id": "m", "name": "M", "kind": "mill", "protocol": "modbus",
                      "endpoint": {"host": "127.0.0.1", "port": 1}, "registers": REGISTERS}],
    })
    broker = mosquitto_process(host="127.0.0.1", port=port, state_dir=w.state_dir,
                               security=security.broker_security(w))
    broker.start()
    try:
        link = MqttLink(for_role(w, Role.GATEWAY).mqtt, client_id="tls-client", clean_start=True)
        link.start()
        try:
            assert link.wait_connected(10), "a TLS connection checked against the site's CA"
        finally:
            link.stop()
        assert Client(port, "gw", "tls-test-password-Zq81", tls_ca=tmp_path / "ca.crt").connack == "Success"
        # Plain MQTT on the TLS listener: no CONNACK ever comes back.
        raw = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        raw.username_pw_set("gw", "tls-test-password-Zq81")
        answers: list[str] = []
        raw.on_connect = lambda _c, _u, _f, reason, _p: answers.append(str(reason))
        raw.connect("127.0.0.1", port)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and raw.loop(timeout=0.2) == paho.MQTT_ERR_SUCCESS:
            pass
        assert answers == []
    finally:
        broker.stop()

"""Configuration errors name the file, the line and the field, and the command exits non-zero."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from copeau.config import ConfigError, load_workshop, secret_problem
from copeau.security import Role, for_role, mosquitto_acl, mosquitto_hash, mosquitto_password_file

GOOD = textwrap.dedent(
    """\
    site:
      id: ecole
      name: "École"
    machines:
      - id: fraiseuse-1
        name: F1
        kind: mill
        protocol: modbus
        endpoint: {host: 127.0.0.1, port: 15021}
        registers:
          cycle_running: {table: discrete_input, address: 0}
          parts: {table: holding_register, address: 0, type: uint32, count: 2}
    """
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workshop.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_workshop(path)
    return [str(p) for p in info.value.problems]


def test_the_shipped_demo_config_is_valid() -> None:
    workshop = load_workshop(Path(__file__).parents[2] / "config" / "workshop.yaml")
    assert [(m.id, m.protocol) for m in workshop.machines] == [
        ("fraiseuse-1", "modbus"), ("fraiseuse-2", "modbus"), ("tour-1", "opcua"), ("tour-2", "opcua"),
        ("fraiseuse-3", "opcua"),
    ]


def test_good_file_loads(tmp_path: Path) -> None:
    w = load_workshop(write(tmp_path, GOOD))
    assert w.machines[0].registers.parts.modulus == 2**32


def test_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    kind: mill\n", "    kind: mill\n    colour: red\n"))
    assert problems(path) == [f"{path}:8: machines[0].colour: champ inconnu (vérifiez l'orthographe ; "
                              "voir docs/configuration.md)"]


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port: 15021", "port: quinze"))
    assert problems(path) == [f"{path}:9: machines[0].endpoint.port: doit être un nombre entier"]


def test_register_count_too_small_for_uint32(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("type: uint32, count: 2", "type: uint32, count: 1"))
    assert problems(path) == [
        f"{path}:12: machines[0].registers.parts: count 1 est trop petit pour uint32 (il faut 2 registres)"
    ]


def test_english_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPEAU_LANG", "en")
    path = write(tmp_path, GOOD.replace("type: uint32, count: 2", "type: uint32, count: 1"))
    assert problems(path) == [
        f"{path}:12: machines[0].registers.parts: count 1 is too small for uint32 (needs 2 registers)"
    ]


def test_duplicate_key_and_duplicate_machine(tmp_path: Path) -> None:
    dup_key = write(tmp_path, GOOD.replace("    kind: mill\n", "    kind: mill\n    kind: lathe\n"))
    assert problems(dup_key) == [f"{dup_key}:8: YAML invalide : clé « kind » en double (déjà à la ligne 7)"]
    machine = GOOD.split("machines:\n", 1)[1]
    dup_id = write(tmp_path, GOOD + machine.replace("port: 15021", "port: 15022"))
    assert problems(dup_id) == [f"{dup_id}:13: machines[1].id: « fraiseuse-1 » est déjà utilisé par machines[0]"]


def test_managed_services_must_listen_on_loopback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "mqtt: {host: 10.0.0.5}\n")
    assert problems(path) == [
        f"{path}:13: mqtt.host: en mode managed avec le profil demo, les services écoutent en local seulement "
        "(127.0.0.1) ; passez services.profile à production pour les ouvrir au réseau"
    ]


def test_check_config_command_exits_non_zero_and_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    kind: mill\n", "    kind: mill\n    colour: red\n"))
    run = subprocess.run([sys.executable, "-m", "copeau", "check-config", str(path)], capture_output=True,
                         text=True, check=False)
    assert run.returncode == 2
    assert f"{path}:8: machines[0].colour: champ inconnu" in run.stderr
    ok = subprocess.run([sys.executable, "-m", "copeau", "check-config", str(write(tmp_path, GOOD))],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "Configuration valide" in ok.stdout


def test_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: fichier introuvable"]


# --- production profile (issue #6) --------------------------------------------------------------------------------

PRODUCTION = GOOD + textwrap.dedent(
    """\
      - id: tour-1
        name: T1
        kind: lathe
        protocol: opcua
        url: opc.tcp://127.0.0.1:4840
    services:
      mode: external
      profile: production
    mqtt:
      accounts:
        gateway: {username: copeau-gateway, password: {file: SECRETS/mqtt-gateway}}
        web: {username: copeau-web, password: {env: TEST_MQTT_WEB}}
        collectors:
          - {id: atelier-a, machines: [fraiseuse-1], password: {file: SECRETS/mqtt-a}}
          - {id: atelier-b, machines: [tour-1], password: {credential: mqtt-collector, file: SECRETS/mqtt-b}}
        badge_readers:
          - {machine: fraiseuse-1, password: {file: SECRETS/reader-1}}
    influxdb:
      accounts:
        admin: {username: admin, password: {file: SECRETS/influx-admin}}
        gateway: {username: copeau-gateway, password: {file: SECRETS/influx-gateway}}
        web: {username: copeau-web, password: {file: SECRETS/influx-web}}
    """
)


def production(tmp_path: Path, text: str = PRODUCTION, *, secrets: dict[str, str] | None = None) -> Path:
    """A production workshop file; its secret files hold real-looking passwords unless `secrets` says otherwise."""
    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    values = {name: f"{name}-Kq8vZ2pL7xWm" for name in
              ("mqtt-gateway", "mqtt-a", "mqtt-b", "reader-1", "influx-admin", "influx-gateway", "influx-web")}
    values.update(secrets or {})
    for name, value in values.items():
        (folder / name).write_text(value + "\n")
    return write(tmp_path, text.replace("SECRETS", str(folder)))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_the_shipped_production_example_is_valid() -> None:
    workshop = load_workshop(Path(__file__).parents[2] / "config" / "production.example.yaml")
    assert workshop.production
    assert workshop.mqtt.accounts is not None
    assert [c.id for c in workshop.mqtt.accounts.collectors] == ["atelier-a"]


def test_production_file_loads_and_gives_each_role_its_own_account(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MQTT_WEB", "web-Kq8vZ2pL7xWm-secret")
    w = load_workshop(production(tmp_path))
    a = for_role(w, Role.COLLECTOR, collector_id="atelier-a")
    assert (a.collector.id, [m.id for m in a.machines]) == ("atelier-a", ["fraiseuse-1"])
    assert (a.mqtt.username, a.mqtt.password.read()) == ("atelier-a", "mqtt-a-Kq8vZ2pL7xWm")
    gw = for_role(w, Role.GATEWAY)
    assert (gw.mqtt.username, gw.influxdb.username) == ("copeau-gateway", "copeau-gateway")
    assert gw.influxdb.password.read() == "influx-gateway-Kq8vZ2pL7xWm"
    assert [m.id for m in gw.machines] == ["fraiseuse-1", "tour-1"]
    web = for_role(w, Role.WEB)
    assert (web.mqtt.username, web.mqtt.password.read()) == ("copeau-web", "web-Kq8vZ2pL7xWm-secret")


def test_a_systemd_credential_comes_before_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-collector").write_text("from-systemd-Kq8vZ2pL7xWm\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    w = for_role(load_workshop(production(tmp_path)), Role.COLLECTOR, collector_id="atelier-b")
    assert w.mqtt.password.read() == "from-systemd-Kq8vZ2pL7xWm"


@pytest.mark.parametrize("value", ["changeme", "CHANGEME-please", "<mot de passe>", "xxxxxxxxxxxxxx", "password",
                                   "", "   "])
def test_placeholder_or_empty_secret_is_refused_with_file_line_and_field(tmp_path: Path, value: str) -> None:
    path = production(tmp_path, secrets={"mqtt-a": value})
    line = line_of(path, "id: atelier-a")
    message = "le secret est vide" if not value.strip() else "le secret est une valeur d'exemple"
    [problem] = problems(path)
    assert problem.startswith(f"{path}:{line}: mqtt.accounts.collectors[0].password: {message}")
    assert f"fichier {tmp_path / 'secrets' / 'mqtt-a'}" in problem
    if value.strip():
        assert value not in problem.split(": ", 2)[2].split("(")[0]  # the message never quotes the value


def test_short_account_password_is_refused(tmp_path: Path) -> None:
    path = production(tmp_path, secrets={"influx-web": "Zq9-short"})
    assert problems(path) == [
        f"{path}:{line_of(path, 'web: {username: copeau-web, password: {file:')}: influxdb.accounts.web.password: "
        "le secret est trop court (au moins 12 caractères ; `copeau security secrets` en génère) "
        f"(fichier {tmp_path / 'secrets' / 'influx-web'})"
    ]


def test_a_role_without_its_secret_cannot_start(tmp_path: Path) -> None:
    path = production(tmp_path)
    (tmp_path / "secrets" / "mqtt-gateway").unlink()
    w = load_workshop(path)  # the collectors do not need the gateway's password: the file loads
    for_role(w, Role.COLLECTOR, collector_id="atelier-a")
    with pytest.raises(ConfigError) as info:
        for_role(w, Role.GATEWAY)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:{line_of(path, 'gateway: {username: copeau-gateway')}: mqtt.accounts.gateway.password: "
        f"secret introuvable (fichier {tmp_path / 'secrets' / 'mqtt-gateway'})"
    ]
    with pytest.raises(ConfigError, match=r"mqtt.accounts.collectors: aucun collecteur « atelier-z »"):
        for_role(w, Role.COLLECTOR, collector_id="atelier-z")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("machines: [tour-1]", "machines: [fraiseuse-1]"),
         "mqtt.accounts.collectors[1].machines[0]: « fraiseuse-1 » est déjà lue par le collecteur « atelier-a »"),
        (("machines: [tour-1]", "machines: [tour-9]"),
         "mqtt.accounts.collectors[1].machines[0]: machine « tour-9 » inconnue"),
        (("id: atelier-b", "id: tour-1"),
         "mqtt.accounts.collectors[1].id: « tour-1 » est l'id d'une machine, réservé à son lecteur de badges"),
        (("username: copeau-web, password: {env", "username: copeau-gateway, password: {env"),
         "mqtt.accounts.web.username: le nom d'utilisateur « copeau-gateway » est déjà celui de "
         "mqtt.accounts.gateway.username"),
        (("mqtt:\n", "mqtt:\n  username: everybody\n"),
         "mqtt.username: en profil production, chaque rôle a son compte"),
        (("{machine: fraiseuse-1, password", "{machine: tour-9, password"),
         "mqtt.accounts.badge_readers[0].machine: machine « tour-9 » inconnue"),
    ],
)
def test_production_cross_checks(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    text = PRODUCTION.replace(*change)
    assert text != PRODUCTION
    [problem] = problems(production(tmp_path, text))
    assert expected in problem


def test_production_needs_accounts_and_a_managed_admin(tmp_path: Path) -> None:
    no_accounts = GOOD + "services: {profile: production, mode: external}\n"
    assert problems(write(tmp_path, no_accounts)) == [
        f"{tmp_path / 'workshop.yaml'}:13: services.profile: le profil production demande mqtt.accounts (un compte "
        "MQTT par rôle : gateway, web, collectors, badge_readers ; voir docs/configuration.md)"
    ]
    managed = PRODUCTION.replace("mode: external", "mode: managed").replace(
        "    admin: {username: admin, password: {file: SECRETS/influx-admin}}\n", "")
    [problem] = problems(production(tmp_path, managed))
    assert "influxdb.accounts.admin: en mode managed, Copeau crée la base et les comptes InfluxDB" in problem


def test_a_secret_must_say_where_it_comes_from(tmp_path: Path) -> None:
    path = production(tmp_path, PRODUCTION.replace("password: {env: TEST_MQTT_WEB}", "password: {}"))
    assert problems(path) == [
        f"{path}:{line_of(path, 'web: {username: copeau-web, password: {}')}: mqtt.accounts.web.password: indiquez "
        "d'où vient le secret : env, credential ou file (jamais la valeur elle-même)"
    ]


def test_managed_production_may_listen_on_the_network(tmp_path: Path) -> None:
    text = PRODUCTION.replace("mode: external", "mode: managed") + "  host: 10.0.0.5\n"
    w = load_workshop(production(tmp_path, text))
    assert w.influxdb.host == "10.0.0.5"


def test_mosquitto_acl_least_privilege(tmp_path: Path) -> None:
    w = load_workshop(production(tmp_path))
    acl = mosquitto_acl(w, source="workshop.yaml").splitlines()
    rules = [line for line in acl if line and not line.startswith("#")]
    root = "copeau/v1/ecole"
    assert rules == [
        f"pattern write {root}/collectors/%u/status",
        f"pattern write {root}/health/collector/%u",
        f"pattern write {root}/%u/badge",
        "user atelier-a",
        *(f"topic write {root}/fraiseuse-1/{kind}" for kind in ("state", "cycle", "part", "alarm")),
        f"topic read {root}/fraiseuse-1/context",
        "user atelier-b",
        *(f"topic write {root}/tour-1/{kind}" for kind in ("state", "cycle", "part", "alarm")),
        f"topic read {root}/tour-1/context",
        "user copeau-gateway",
        *(f"topic read {root}/+/{kind}" for kind in ("state", "cycle", "part", "alarm")),
        f"topic read {root}/health/+/+",
        f"topic write {root}/health/gateway/copeau-gateway",
        "user copeau-web",
        f"topic write {root}/fraiseuse-1/context",
        f"topic write {root}/tour-1/context",
        f"topic read {root}/+/+",
        f"topic read {root}/collectors/+/status",
        f"topic read {root}/health/+/+",
    ]
    assert not any("%c" in line for line in rules)


def test_mosquitto_password_file_is_hashed_like_mosquitto_passwd(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # mosquitto_passwd 2.0.11 wrote this line for alice / secretpassword123 (salt and hash checked by hand).
    line = ("$7$101$ruH4Y6IVgUutZpj/$kJMMHKwVKDUCVR61izSmqoF//4vvzbYqk59sVpC0OA+R7yTFTn30ffil/zFDE+BY4NXb6Cv78X+6pL0h"
            "mDACVQ==")
    salt = base64.b64decode(line.split("$")[3])
    assert mosquitto_hash("secretpassword123", salt=salt) == line
    monkeypatch.setenv("TEST_MQTT_WEB", "web-Kq8vZ2pL7xWm-secret")
    text = mosquitto_password_file(load_workshop(production(tmp_path)))
    users = [row.split(":", 1)[0] for row in text.splitlines()]
    assert users == ["copeau-gateway", "copeau-web", "atelier-a", "atelier-b", "fraiseuse-1"]
    assert "Kq8vZ2pL7xWm" not in text
    assert all(row.split(":", 1)[1].startswith("$7$101$") for row in text.splitlines())


def test_mosquitto_password_file_needs_every_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_MQTT_WEB", raising=False)
    w = load_workshop(production(tmp_path))
    with pytest.raises(ConfigError, match=r"mqtt.accounts.web.password: secret introuvable \(variable TEST_MQTT_WEB\)"):
        mosquitto_password_file(w)


def test_security_secrets_command_creates_missing_files_only(tmp_path: Path) -> None:
    path = production(tmp_path)
    (tmp_path / "secrets" / "influx-admin").unlink()
    before = (tmp_path / "secrets" / "mqtt-a").read_text()
    run = subprocess.run([sys.executable, "-m", "copeau", "security", "secrets", "--config", str(path)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    created = tmp_path / "secrets" / "influx-admin"
    assert oct(created.stat().st_mode & 0o777) == "0o600"
    value = created.read_text().strip()
    assert len(value) == 32
    assert secret_problem(value, min_length=12) is None
    assert value not in run.stdout
    assert str(created) in run.stdout
    assert (tmp_path / "secrets" / "mqtt-a").read_text() == before


def test_the_web_service_needs_the_kiosk_keys_the_file_points_to(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MQTT_WEB", "web-Kq8vZ2pL7xWm-secret")
    path = production(tmp_path, PRODUCTION + "web:\n  kiosk_keys: {file: SECRETS/kiosk-keys}\n")
    w = load_workshop(path)
    with pytest.raises(ConfigError) as info:
        for_role(w, Role.WEB)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:{line_of(path, 'kiosk_keys:')}: web.kiosk_keys: secret introuvable "
        f"(fichier {tmp_path / 'secrets' / 'kiosk-keys'})"
    ]
    (tmp_path / "secrets" / "kiosk-keys").write_text("fraiseuse-1=4f9c2a7e1b3d5f60\n")
    assert for_role(w, Role.WEB).web.kiosk_keys.read() == "fraiseuse-1=4f9c2a7e1b3d5f60"


def test_a_secret_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = production(tmp_path)
    secret = tmp_path / "secrets" / "mqtt-gateway"
    secret.write_bytes("mot-de-passe-é".encode("latin-1"))
    w = load_workshop(path)
    with pytest.raises(ConfigError) as info:
        for_role(w, Role.GATEWAY)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:{line_of(path, 'gateway: {username: copeau-gateway')}: mqtt.accounts.gateway.password: "
        f"secret illisible (fichier {secret}) : pas du texte UTF-8 (octet 14)"
    ]

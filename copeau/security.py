"""The production profile: who may do what on the broker and in InfluxDB, and which secrets each process needs.

Theory of operation:

- Every process of a production site has a *role*: a collector (one per collector id), the gateway, the web
  service, or the managed services (mosquitto and influxd). `for_role()` gives the process a Workshop whose
  `mqtt.username`/`password` and `influxdb.username`/`password` are its role's account and, for a collector, only
  its own machines. The code that connects (MqttLink, InfluxWriter, InfluxQuery) knows nothing about roles, and
  a process never holds another role's secret.
- The broker's ACL is generated from the same workshop file as the collectors' machine lists, so they cannot
  drift apart. `%u` (the user name the broker checked against its password file; never `%c`, which the client
  chooses) is used where the user name *is* the thing the topic names:
  - a collector's user name is its collector id: it may publish its own status, `copeau/v1/<site>/collectors/%u/status`,
    and its own health report, `copeau/v1/<site>/health/collector/%u`;
  - a badge reader's user name is its machine's id: it may publish that machine's scans, `copeau/v1/<site>/%u/badge`.
  It cannot express "the machines of this collector": the event topics name the machine, not the collector, and
  one collector reads several machines. So each collector gets explicit `user`/`topic` lines, one per machine and
  event kind (write), plus its machines' job contexts (read). The web service gets one `write` line per machine
  for the contexts it publishes, and reads what the live board and the badge readers need. The gateway reads the
  four event kinds of the site, not the control topics (it does not store them, and a badge code is none of its
  business), and the health reports; it publishes its own health report under its client id (explicit line).
  mosquitto applies patterns to every user; the configuration refuses a user name that is a machine id (other than
  that machine's reader) or another account's name, so a pattern only ever opens topics that nobody reads.
- mosquitto's password file is written hashed by us (PBKDF2-SHA512, `$7$`, the format of mosquitto_passwd 2.x), so
  no password goes through a command line, where `ps` would show it.
- InfluxDB 1.x: the administrator is created at the first start without credentials (InfluxDB accepts that while it
  has no user at all); then each account is created, or has its password set again (a changed secret is applied at
  the next start), and gets the least privilege it needs on the one database (copeau.services.secure_influxdb).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path

from copeau.config import (
    CollectorAccount,
    ConfigError,
    ConfigOrigin,
    InfluxAccount,
    MqttAccount,
    Secret,
    Workshop,
    iter_secrets,
    secret_problems,
)
from copeau.contract import TOPIC_ROOT, ControlKind, EventKind, ServiceKind
from copeau.services import BrokerSecurity, InfluxGrant, InfluxLogin, InfluxSecurity, write_private

_Loc = tuple[str | int, ...]

MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd 2.0's own count; the broker reads the count from each line
_SALT_BYTES = 12  # as mosquitto_passwd


class Role(StrEnum):
    COLLECTOR = "collector"
    GATEWAY = "gateway"
    WEB = "web"
    SERVICES = "services"  # the managed mosquitto and influxd: every MQTT password (to hash), every InfluxDB account


# --------------------------------------------------------------------------------------------------------
# Roles


def _problem(workshop: Workshop, loc: _Loc, message: str) -> ConfigError:
    origin = workshop.origin or ConfigOrigin("(configuration)", {})
    return ConfigError([origin.problem(loc, message)])


def collector_account(workshop: Workshop, collector_id: str | None = None) -> tuple[int, CollectorAccount]:
    """The account of collector `collector_id` (default `collector.id`), with its index. Raises ConfigError."""
    accounts = workshop.mqtt.accounts
    wanted = collector_id or workshop.collector.id
    assert accounts is not None  # the production profile requires it (config cross-checks)
    for i, account in enumerate(accounts.collectors):
        if account.id == wanted:
            return i, account
    known = ", ".join(a.id for a in accounts.collectors)
    raise _problem(workshop, ("mqtt", "accounts", "collectors"),
                   f"aucun collecteur « {wanted} » (collecteurs : {known}) ; lancez copeau collector --id <id>")


def required_secrets(workshop: Workshop, role: Role, *, collector_id: str | None = None) -> list[_Loc]:
    """The secrets a process of this role cannot work without (field paths)."""
    mqtt, influx = workshop.mqtt.accounts, workshop.influxdb.accounts
    assert mqtt is not None  # the production profile requires them (config cross-checks)
    assert influx is not None
    if role is Role.COLLECTOR:
        i, account = collector_account(workshop, collector_id)
        locs: list[_Loc] = [("mqtt", "accounts", "collectors", i, "password")]
        for j, machine in enumerate(workshop.machines):
            security = getattr(machine, "security", None)
            if machine.id in account.machines and security is not None and security.username:
                locs.append(("machines", j, "security", "password"))
        return locs
    if role is Role.GATEWAY:
        return [("mqtt", "accounts", "gateway", "password"), ("influxdb", "accounts", "gateway", "password")]
    if role is Role.WEB:
        locs = [("mqtt", "accounts", "web", "password"), ("influxdb", "accounts", "web", "password")]
        # The kiosk keys and the database URL are optional, unless the file names where they are.
        for name in ("kiosk_keys", "database_url"):
            secret = getattr(workshop.web, name)
            if secret.file or secret.credential:
                locs.append(("web", name))
        return locs
    return [loc for loc, _ in iter_secrets(workshop) if loc[:2] in (("mqtt", "accounts"), ("influxdb", "accounts"))]


def check_role_secrets(workshop: Workshop, role: Role, *, collector_id: str | None = None) -> None:
    """Raise ConfigError (file:line: field: problem) if a secret this role needs is missing, unreadable or not a
    real one. Other roles' secrets are not looked at beyond what the loader already checked."""
    problems = secret_problems(workshop, required=required_secrets(workshop, role, collector_id=collector_id))
    if problems:
        raise ConfigError(problems)


def for_role(workshop: Workshop, role: Role, *, collector_id: str | None = None) -> Workshop:
    """The workshop as this process must see it: its own MQTT and InfluxDB accounts and, for a collector, its own
    machines and id. Demo profile: the workshop unchanged (a collector id given is still applied).

    Raises ConfigError when the role has no account, or its secrets are missing or not real ones.
    """
    if not workshop.production:
        if role is Role.COLLECTOR and collector_id:
            return workshop.model_copy(update={"collector": workshop.collector.model_copy(update={"id": collector_id})})
        return workshop
    mqtt, influx = workshop.mqtt.accounts, workshop.influxdb.accounts
    assert mqtt is not None  # the production profile requires them (config cross-checks)
    assert influx is not None
    if role is Role.SERVICES:
        check_role_secrets(workshop, role)
        return workshop
    mqtt_account: MqttAccount | None
    influx_account: InfluxAccount | None = None
    update: dict[str, object] = {}
    if role is Role.COLLECTOR:
        _, collector = collector_account(workshop, collector_id)
        mqtt_account = MqttAccount(username=collector.id, password=collector.password)
        update["machines"] = [m for m in workshop.machines if m.id in collector.machines]
        update["collector"] = workshop.collector.model_copy(update={"id": collector.id})
    elif role is Role.GATEWAY:
        mqtt_account, influx_account = mqtt.gateway, influx.gateway
    else:
        mqtt_account, influx_account = mqtt.web, influx.web
        if mqtt_account is None:
            raise _problem(workshop, ("mqtt", "accounts"),
                           "le service web n'a pas de compte : ajoutez mqtt.accounts.web")
        if influx_account is None:
            raise _problem(workshop, ("influxdb", "accounts"),
                           "le service web n'a pas de compte : ajoutez influxdb.accounts.web")
    check_role_secrets(workshop, role, collector_id=collector_id)
    update["mqtt"] = workshop.mqtt.model_copy(
        update={"username": mqtt_account.username, "password": mqtt_account.password}
    )
    if influx_account is not None:
        update["influxdb"] = workshop.influxdb.model_copy(
            update={"username": influx_account.username, "password": influx_account.password}
        )
    return workshop.model_copy(update=update)


# --------------------------------------------------------------------------------------------------------
# mosquitto: password file and ACL


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """`password` hashed as mosquitto_passwd 2.x writes it: `$7$<iterations>$<salt>$<PBKDF2-SHA512>`, base64."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mqtt_logins(workshop: Workshop) -> Iterator[tuple[str, _Loc, Secret]]:
    """Every MQTT account of the production profile: user name, field path of its password, its Secret."""
    accounts = workshop.mqtt.accounts
    if accounts is None:
        return
    yield accounts.gateway.username, ("mqtt", "accounts", "gateway", "password"), accounts.gateway.password
    if accounts.web is not None:
        yield accounts.web.username, ("mqtt", "accounts", "web", "password"), accounts.web.password
    for i, c in enumerate(accounts.collectors):
        yield c.id, ("mqtt", "accounts", "collectors", i, "password"), c.password
    for i, r in enumerate(accounts.badge_readers):
        yield r.machine, ("mqtt", "accounts", "badge_readers", i, "password"), r.password


def mosquitto_password_file(workshop: Workshop) -> str:
    """The broker's password file (hashed). Raises ConfigError when a password is missing or not a real one."""
    logins = list(mqtt_logins(workshop))
    problems = secret_problems(workshop, required=[loc for _, loc, _ in logins])
    if problems:
        raise ConfigError(problems)
    lines = []
    for username, _, secret in logins:
        password = secret.read()
        assert password is not None  # checked just above
        lines.append(f"{username}:{mosquitto_hash(password)}\n")
    return "".join(lines)


def mosquitto_acl(workshop: Workshop, *, source: str = "workshop.yaml") -> str:
    """The broker's ACL for the production profile (see this module's docstring for the reasoning)."""
    accounts = workshop.mqtt.accounts
    if accounts is None:
        raise ValueError("the production profile needs mqtt.accounts")
    site = workshop.site.id
    root = f"{TOPIC_ROOT}/{site}"
    machines = [m.id for m in workshop.machines]
    kinds = [k.value for k in EventKind]
    out = [
        f"# Generated by Copeau from {source} (profile production). Do not edit: regenerate it after a change of",
        "# the workshop file (the managed broker rewrites it at each start; otherwise `copeau security mosquitto`).",
        "# Nothing is allowed unless a line below allows it. %u is the user name the broker checked against the",
        "# password file (never %c: a client chooses its own client id).",
        "",
        "# Patterns apply to every user. A collector's user name is its collector id: it announces its own",
        "# presence (and its last will) and its own health report, no other collector's.",
        f"pattern write {root}/collectors/%u/status",
        f"pattern write {root}/health/{ServiceKind.COLLECTOR.value}/%u",
    ]
    if accounts.badge_readers:
        out += [
            "# A badge reader's user name is its machine's id: it reports the badges scanned at that machine only.",
            f"pattern write {root}/%u/{ControlKind.BADGE.value}",
        ]
    for c in accounts.collectors:
        out += ["", f"# Collector {c.id}: the events of its own machines; their job context (read)."]
        out.append(f"user {c.id}")
        for machine in c.machines:
            out += [f"topic write {root}/{machine}/{kind}" for kind in kinds]
            out.append(f"topic read {root}/{machine}/{ControlKind.CONTEXT.value}")
    out += ["", "# Gateway: stores the events of every machine of the site (not the control topics: it does not store",
            "# them) and every service's health report; publishes its own health report (its client id).",
            f"user {accounts.gateway.username}"]
    out += [f"topic read {root}/+/{kind}" for kind in kinds]
    out.append(f"topic read {root}/health/+/+")
    out.append(f"topic write {root}/health/{ServiceKind.GATEWAY.value}/{workshop.gateway.client_id}")
    if accounts.web is not None:
        out += ["", "# Web service: publishes each machine's job context (retained). Reads the badge readers' scans",
                "# and, for the live board, the site's events, job contexts, collectors' presence and health.",
                f"user {accounts.web.username}"]
        out += [f"topic write {root}/{machine}/{ControlKind.CONTEXT.value}" for machine in machines]
        out += [f"topic read {root}/+/+", f"topic read {root}/collectors/+/status", f"topic read {root}/health/+/+"]
    return "\n".join(out) + "\n"


def broker_security(workshop: Workshop, *, source: str = "workshop.yaml") -> BrokerSecurity | None:
    """What the managed broker needs in the production profile; None in the demo profile."""
    if not workshop.production:
        return None
    return BrokerSecurity(
        password_file=mosquitto_password_file(workshop),
        acl_file=mosquitto_acl(workshop, source=source),
        tls=workshop.mqtt.tls,
    )


# --------------------------------------------------------------------------------------------------------
# InfluxDB accounts

_PRIVILEGES = {"gateway": "WRITE", "web": "ALL", "grafana": "READ"}


def influx_security(workshop: Workshop) -> InfluxSecurity | None:
    """The administrator and the accounts to create in InfluxDB; None in the demo profile.

    Raises ConfigError when a secret is missing or not a real one, or when there is no administrator account.
    """
    accounts = workshop.influxdb.accounts
    if not workshop.production or accounts is None:
        return None
    if accounts.admin is None:
        raise _problem(workshop, ("influxdb", "accounts"),
                       "il faut influxdb.accounts.admin pour créer la base et les comptes")
    roles = [r for r in ("admin", *_PRIVILEGES) if getattr(accounts, r) is not None]
    problems = secret_problems(workshop, required=[("influxdb", "accounts", r, "password") for r in roles])
    if problems:
        raise ConfigError(problems)

    def login(account: InfluxAccount) -> InfluxLogin:
        password = account.password.read()
        assert password is not None  # checked above
        return InfluxLogin(account.username, password)

    grants = tuple(
        InfluxGrant(login(account), privilege)  # type: ignore[arg-type]
        for role, privilege in _PRIVILEGES.items()
        if (account := getattr(accounts, role)) is not None
    )
    return InfluxSecurity(admin=login(accounts.admin), grants=grants)


# --------------------------------------------------------------------------------------------------------
# Creating the secrets


def new_secret() -> str:
    """A random password: 32 characters from the URL-safe alphabet (192 bits)."""
    return secrets.token_urlsafe(24)


def missing_secret_files(workshop: Workshop) -> list[tuple[_Loc, Path]]:
    """The `file:` of every MQTT/InfluxDB account secret that does not exist yet, once each."""
    seen: set[Path] = set()
    out = []
    for loc, secret in iter_secrets(workshop):
        if loc[:2] not in (("mqtt", "accounts"), ("influxdb", "accounts")) or secret.file is None:
            continue
        if secret.file in seen or secret.file.exists():
            continue
        seen.add(secret.file)
        out.append((loc, secret.file))
    return out


def create_secret_files(paths: Iterable[Path]) -> list[Path]:
    """Create each missing secret file with a new random password (mode 0600). Returns the files created."""
    created = []
    for path in paths:
        if path.exists():
            continue
        write_private(path, new_secret() + "\n")
        created.append(path)
    return created


__all__ = [
    "Role",
    "broker_security",
    "check_role_secrets",
    "collector_account",
    "create_secret_files",
    "for_role",
    "influx_security",
    "missing_secret_files",
    "mosquitto_acl",
    "mosquitto_hash",
    "mosquitto_password_file",
    "new_secret",
    "required_secrets",
    "write_private",
]

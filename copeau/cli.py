"""The `copeau` command. Each sub-command exits non-zero on an error, with a message a person can act on."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from copeau import security
from copeau.config import DEFAULT_CONFIG, ConfigError, ServicesMode, Workshop, load_workshop
from copeau.errors import CopeauError
from copeau.i18n import t
from copeau.security import Role, for_role

app = typer.Typer(
    help="Copeau : suivi d'atelier pour les Écoles de production (COPEAU_LANG=en for English).",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Fichier de configuration de l'atelier (workshop.yaml).")
]


def _config_failed(exc: ConfigError) -> typer.Exit:
    typer.echo(t("config.invalid", n=len(exc.problems)), err=True)
    for problem in sorted(exc.problems, key=lambda p: p.line or 0):
        typer.echo(f"  {problem}", err=True)
    return typer.Exit(2)


def _load(path: Path) -> Workshop:
    try:
        return load_workshop(path)
    except ConfigError as exc:
        raise _config_failed(exc) from exc


def _as_role(workshop: Workshop, role: Role, *, collector_id: str | None = None) -> Workshop:
    """The workshop with this process's own accounts (production profile); exit 2 when its secrets are not right."""
    try:
        return for_role(workshop, role, collector_id=collector_id)
    except ConfigError as exc:
        raise _config_failed(exc) from exc


def _logging(verbose: bool, *, quiet_level: int = logging.WARNING) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else quiet_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # pymodbus and asyncua log every failed attempt, with tracebacks; the collector logs once on loss and
        # once on recovery, with the machine's name. -v shows everything.
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _services(workshop: Workshop, config: Path) -> Iterator[None]:
    """Managed mode: start mosquitto and influxd for the duration. External mode: nothing to start."""
    if workshop.services.mode is not ServicesMode.MANAGED:
        yield
        return
    from copeau.services import managed_services

    try:
        broker_security = security.broker_security(workshop, source=str(config))
        influx_security = security.influx_security(workshop)
    except ConfigError as exc:
        raise _config_failed(exc) from exc
    with managed_services(
        mqtt_host=workshop.mqtt.host,
        mqtt_port=workshop.mqtt.port,
        influx_host=workshop.influxdb.host,
        influx_port=workshop.influxdb.port,
        influx_rpc_port=workshop.influxdb.rpc_port,
        database=workshop.influxdb.database,
        state_dir=workshop.state_dir,
        max_queued_mb=workshop.mqtt.max_queued_mb,
        config_name=str(config),
        broker_security=broker_security,
        influx_security=influx_security,
    ):
        yield


async def _until_signal(stop: asyncio.Event, seconds: float | None = None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if seconds:
        loop.call_later(seconds, stop.set)


def _fail(exc: CopeauError) -> typer.Exit:
    typer.echo(str(exc), err=True)
    return typer.Exit(1)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="workshop.yaml")] = DEFAULT_CONFIG) -> None:
    """Vérifie un fichier de configuration (file:line: field: problem)."""
    workshop = _load(config)
    typer.echo(t("config.ok", file=config, site=workshop.site.name, machines=len(workshop.machines)))


@app.command()
def demo(
    config: ConfigOption = DEFAULT_CONFIG,
    seconds: Annotated[
        float | None, typer.Option(help="S'arrêter seul après N secondes (défaut : $DEMO_SECONDS, sinon jamais).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Atelier simulé complet : services, simulateurs, collecteur, passerelle, résumé en direct."""
    # The live table says what matters (a machine offline shows as « hors ligne »); -v adds the log.
    _logging(verbose, quiet_level=logging.ERROR)
    workshop = _load(config)
    if workshop.production:
        typer.echo(t("security.demo_only"), err=True)
        raise typer.Exit(2)
    if seconds is None and os.environ.get("DEMO_SECONDS"):
        seconds = float(os.environ["DEMO_SECONDS"])
    from copeau.demo import run_demo

    try:
        with _services(workshop, config):
            ok = asyncio.run(run_demo(workshop, seconds=seconds, until=_until_signal))
    except CopeauError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(0 if ok else 1)


# A service that has not finished stopping this long after SIGTERM/SIGINT prints every thread's stack to its log
# and exits with status 1 (faulthandler), rather than hang until a service manager kills it without a word (its durable
# outbox or the broker's session keep what was not acknowledged). Its own drain is bounded well below this.
STOP_WATCHDOG_S = 20.0


def _serve_until_signal(body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `body(stop)` until SIGINT or SIGTERM sets `stop`; `body` must return once `stop` is set."""

    async def watchdog(stop: asyncio.Event) -> None:
        await stop.wait()
        faulthandler.dump_traceback_later(STOP_WATCHDOG_S, exit=True)

    async def run() -> None:
        stop = asyncio.Event()
        await _until_signal(stop)
        guard = asyncio.get_running_loop().create_task(watchdog(stop), name="stop-watchdog")
        try:
            await body(stop)
        finally:
            guard.cancel()

    try:
        asyncio.run(run())
    finally:
        faulthandler.cancel_dump_traceback_later()


@app.command()
def services(
    config: ConfigOption = DEFAULT_CONFIG, verbose: Annotated[bool, typer.Option("--verbose", "-v")] = True
) -> None:
    """Lance mosquitto et influxd gérés par Copeau (mode managed) jusqu'à Ctrl-C."""
    _logging(verbose)
    workshop = _load(config)
    if workshop.services.mode is not ServicesMode.MANAGED:
        typer.echo("services.mode est « external » : rien à lancer.", err=True)
        raise typer.Exit(2)
    workshop = _as_role(workshop, Role.SERVICES)

    async def wait(stop: asyncio.Event) -> None:
        await stop.wait()

    try:
        with _services(workshop, config):
            _serve_until_signal(wait)
    except CopeauError as exc:
        raise _fail(exc) from exc


@app.command()
def collector(
    config: ConfigOption = DEFAULT_CONFIG,
    collector_id: Annotated[
        str | None,
        typer.Option("--id", help="Ce collecteur (défaut : collector.id). En production : ses machines seulement."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = True,
) -> None:
    """Lit les machines et publie leurs événements sur MQTT (avec file d'attente durable)."""
    _logging(verbose)
    workshop = _as_role(_load(config), Role.COLLECTOR, collector_id=collector_id)
    from collectors.runner import Collector

    _serve_until_signal(Collector(workshop).run)


@app.command()
def gateway(
    config: ConfigOption = DEFAULT_CONFIG, verbose: Annotated[bool, typer.Option("--verbose", "-v")] = True
) -> None:
    """Reçoit les événements MQTT et les écrit dans InfluxDB (API v1)."""
    _logging(verbose)
    workshop = _as_role(_load(config), Role.GATEWAY)
    from gateway.service import Gateway

    async def run(stop: asyncio.Event) -> None:
        gw = Gateway(workshop)
        gw.start()
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(gw.stop)

    _serve_until_signal(run)


@app.command()
def simulate(
    config: ConfigOption = DEFAULT_CONFIG, verbose: Annotated[bool, typer.Option("--verbose", "-v")] = True
) -> None:
    """Simule les machines qui ont un bloc `simulation:` (vérité terrain dans <state_dir>/truth/)."""
    _logging(verbose)
    workshop = _load(config)
    from simulators.workshop import SimulatedWorkshop

    async def run(stop: asyncio.Event) -> None:
        task = asyncio.create_task(SimulatedWorkshop(workshop).run(), name="simulators")
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    _serve_until_signal(run)


@app.command()
def web(
    config: ConfigOption = DEFAULT_CONFIG,
    host: Annotated[str | None, typer.Option(help="Adresse d'écoute (défaut : web.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (défaut : web.port, 8080).")] = None,
    add_maitre: Annotated[
        str | None,
        typer.Option("--add-maitre", help="Ajouter ce maître professionnel (mot de passe demandé), puis quitter."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Bornes des machines, pages des maîtres et API JSON (FastAPI). Voir docs/orders-and-kiosk.md."""
    _logging(verbose, quiet_level=logging.INFO)
    workshop = _load(config)
    from orders.errors import OrdersError
    from web.access import KioskKeyError
    from web.server import add_maitre as create_maitre
    from web.server import serve

    if add_maitre:
        name = typer.prompt("Nom affiché", default=add_maitre)
        password = typer.prompt("Mot de passe", hide_input=True, confirmation_prompt=True)
        try:
            create_maitre(workshop, login=add_maitre, display_name=name, password=password)
        except OrdersError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"Maître « {add_maitre} » ajouté.")
        return
    workshop = _as_role(workshop, Role.WEB)
    try:
        serve(workshop, host=host, port=port, log_level="debug" if verbose else "info")
    except KioskKeyError as exc:
        raise _fail(exc) from exc


@app.command("opcua-browse")
def opcua_browse(url: Annotated[str, typer.Argument(help="opc.tcp://hôte:port")]) -> None:
    """Explore un serveur OPC UA et affiche les machines à ajouter dans workshop.yaml (modèle OPC 40501-1)."""
    _logging(False)
    import yaml

    from collectors.opcua import browse_server

    try:
        entries = asyncio.run(browse_server(url))
    except (OSError, TimeoutError, CopeauError) as exc:
        typer.echo(f"{url} : {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from exc
    if not entries:
        typer.echo(f"{url} : aucune machine-outil (MachineToolType) sous Objects/Machines.", err=True)
        raise typer.Exit(1)
    typer.echo(f"# {len(entries)} machine(s) trouvée(s) sur {url}. À coller sous `machines:` dans workshop.yaml ;")
    typer.echo("# vérifiez `kind` (lathe/mill). Les nœuds trouvés sont indiqués en commentaire.")
    for entry in entries:
        found = entry.pop("found")
        typer.echo(yaml.safe_dump([entry], allow_unicode=True, sort_keys=False).rstrip())
        for name, node_id in found.items():
            typer.echo(f"    # {name}: {node_id}")


# --- production profile (issue #6) -------------------------------------------------------------------------------

security_app = typer.Typer(
    help="Profil production : secrets, fichiers de mosquitto, comptes InfluxDB (voir docs/operations.md).",
    no_args_is_help=True,
)
app.add_typer(security_app, name="security")


def _production(config: Path) -> Workshop:
    workshop = _load(config)
    if not workshop.production:
        typer.echo(t("security.demo_profile"), err=True)
        raise typer.Exit(2)
    return workshop


def _give_group(path: Path, group: str) -> None:
    """chgrp `path` to `group` (a name or a number) and make it readable by that group (0640)."""
    import grp

    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
        os.chmod(path, 0o640)
    except (KeyError, OSError) as exc:
        typer.echo(f"{path} : groupe {group} impossible ({exc})", err=True)
        raise typer.Exit(1) from exc


GroupOption = Annotated[
    str | None, typer.Option("--group", help="Groupe qui pourra lire les fichiers (mode 0640), ex. copeau-secrets.")
]


@security_app.command("secrets")
def security_secrets(config: ConfigOption = DEFAULT_CONFIG, group: GroupOption = None) -> None:
    """Crée les fichiers de secrets (file:) des comptes qui n'existent pas encore : mots de passe aléatoires, mode
    0600 (0640 avec --group), jamais affichés. Les fichiers existants ne sont pas touchés."""
    workshop = _production(config)
    created = security.create_secret_files(path for _, path in security.missing_secret_files(workshop))
    for path in created:
        if group:
            _give_group(path, group)
        typer.echo(t("security.secret_created", path=path))
    if not created:
        typer.echo(t("security.no_secret_to_create"))


@security_app.command("mosquitto")
def security_mosquitto(
    out: Annotated[Path, typer.Option("--out", help="Dossier où écrire passwd et acl (ex. /etc/mosquitto/copeau).")],
    config: ConfigOption = DEFAULT_CONFIG,
    group: GroupOption = None,
) -> None:
    """Écrit le fichier de mots de passe (haché) et l'ACL de mosquitto pour un broker externe."""
    workshop = _production(config)
    try:
        texts = {"passwd": security.mosquitto_password_file(workshop),
                 "acl": security.mosquitto_acl(workshop, source=str(config))}
    except ConfigError as exc:
        raise _config_failed(exc) from exc
    written = []
    for name, text in texts.items():
        path = out / name
        security.write_private(path, text)
        if group:
            _give_group(path, group)
        written.append(str(path))
    typer.echo(t("security.mosquitto_written", files=", ".join(written)))


@security_app.command("influxdb")
def security_influxdb(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Prépare un InfluxDB 1.x externe (auth-enabled = true) : administrateur au premier démarrage, base, comptes
    gateway (WRITE), web (ALL), grafana (READ). Relancer applique les mots de passe changés."""
    _logging(True, quiet_level=logging.INFO)
    workshop = _production(config)
    from copeau.services import secure_influxdb

    try:
        settings = security.influx_security(workshop)
    except ConfigError as exc:
        raise _config_failed(exc) from exc
    assert settings is not None  # production profile
    try:
        secure_influxdb(workshop.influxdb.url, workshop.influxdb.database, settings)
    except CopeauError as exc:
        raise _fail(exc) from exc


# --- dashboards (issue #5) ---------------------------------------------------------------------------------------

dashboards_app = typer.Typer(help="Tableaux Grafana : générer les fichiers, les pousser vers un Grafana.",
                             no_args_is_help=True)
app.add_typer(dashboards_app, name="dashboards")


@dashboards_app.command("generate")
def dashboards_generate(
    check: Annotated[bool, typer.Option("--check", help="Ne rien écrire ; code 1 si les fichiers sont périmés.")]
    = False,
) -> None:
    """Régénère dashboards/generated/ (fr, en) et dashboards/provisioning/."""
    from dashboards.generate import PACKAGE_DIR, stale_files, write_all

    if check:
        stale = stale_files()
        if stale:
            names = ", ".join(str(p.relative_to(PACKAGE_DIR.parent)) for p in stale)
            typer.echo(t("dashboards.stale", files=names), err=True)
            raise typer.Exit(1)
        typer.echo(t("dashboards.up_to_date"))
        return
    typer.echo(t("dashboards.written", n=len(write_all())))


@dashboards_app.command("push")
def dashboards_push(
    *,
    url: Annotated[str, typer.Option("--url", envvar="GRAFANA_URL", help="http://grafana:3000")],
    token: Annotated[str, typer.Option("--token", envvar="GRAFANA_TOKEN",
                                       help="Jeton d'un compte de service Grafana (rôle Editor ou Admin).")],
    lang: Annotated[list[str] | None, typer.Option("--lang", help="fr, en (répétable). Par défaut : fr.")] = None,
    influx_url: Annotated[str, typer.Option("--influx-url", help="InfluxDB vu depuis Grafana.")]
    = "http://127.0.0.1:18086",
    database: Annotated[str, typer.Option("--database")] = "copeau",
    influx_user: Annotated[str | None, typer.Option("--influx-user",
                                                    help="Mot de passe : $COPEAU_INFLUXDB_PASSWORD.")] = None,
) -> None:
    """Pousse la source de données et les tableaux vers un Grafana (deux fois de suite : rien en double)."""
    from dashboards.push import push

    try:
        report = push(url, token, languages=tuple(lang or ["fr"]), influx_url=influx_url, database=database,
                      influx_user=influx_user)
    except CopeauError as exc:
        raise _fail(exc) from exc
    typer.echo(t("dashboards.pushed", url=url, datasource=report.datasource, n=len(report.dashboards),
                 uids=", ".join(report.dashboards)))


def main() -> None:
    app()

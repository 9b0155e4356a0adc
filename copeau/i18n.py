"""French first, English available: one catalogue for what a person at the school reads.

The language comes from `COPEAU_LANG` (`fr` by default, or `en`).
"""

from __future__ import annotations

import os

CATALOGUE: dict[str, dict[str, str]] = {
    "config.invalid": {
        "fr": "Configuration invalide ({n} problème(s)) :",
        "en": "Invalid configuration ({n} problem(s)):",
    },
    "config.ok": {
        "fr": "Configuration valide : {file} — site « {site} », {machines} machine(s).",
        "en": "Configuration is valid: {file} — site “{site}”, {machines} machine(s).",
    },
    "services.port_busy": {
        "fr": (
            "Le port {port} ({what}) est déjà utilisé sur {host}. Choisissez-en un autre dans {config} "
            "(champ {field}), ou arrêtez le programme qui l'occupe (voir : ss -ltnp | grep {port})."
        ),
        "en": (
            "Port {port} ({what}) is already in use on {host}. Choose another one in {config} "
            "(field {field}), or stop the program that holds it (see: ss -ltnp | grep {port})."
        ),
    },
    "services.missing_binary": {
        "fr": "{binary} est introuvable. Lancez « make demo » ou « make test » : ils l'installent (apt-get).",
        "en": "{binary} was not found. Run `make demo` or `make test`: they install it (apt-get).",
    },
    "services.failed": {
        "fr": "{what} n'a pas démarré ({reason}). Journal : {log}",
        "en": "{what} did not start ({reason}). Log: {log}",
    },
    "services.started": {
        "fr": "{what} démarré sur {host}:{port} (journal : {log})",
        "en": "{what} started on {host}:{port} (log: {log})",
    },
    "demo.header": {
        "fr": "Copeau — démonstration : atelier simulé « {site} » ({machines} machines)",
        "en": "Copeau — demo: simulated workshop “{site}” ({machines} machines)",
    },
    "demo.stop_hint": {
        "fr": "Ctrl-C pour arrêter proprement.",
        "en": "Press Ctrl-C to stop cleanly.",
    },
    "demo.stop_after": {
        "fr": "Arrêt automatique dans {seconds} s (DEMO_SECONDS).",
        "en": "Stopping by itself in {seconds} s (DEMO_SECONDS).",
    },
    "demo.table_header": {
        "fr": "{time}  {machine:<14} {state:<10} {parts:>7} {cycle:>14}",
        "en": "{time}  {machine:<14} {state:<10} {parts:>7} {cycle:>14}",
    },
    "demo.col.machine": {"fr": "machine", "en": "machine"},
    "demo.col.state": {"fr": "état", "en": "state"},
    "demo.col.parts": {"fr": "pièces", "en": "parts"},
    "demo.col.cycle": {"fr": "dernier cycle", "en": "last cycle"},
    "demo.query_hint": {
        "fr": "Les mêmes chiffres dans InfluxDB ({url}, base « {db} ») :",
        "en": "The same numbers in InfluxDB ({url}, database “{db}”):",
    },
    "demo.curl_hint": {
        "fr": "  (par exemple : curl -sG {url}/query --data-urlencode db={db} --data-urlencode 'q=SELECT …')",
        "en": "  (for example: curl -sG {url}/query --data-urlencode db={db} --data-urlencode 'q=SELECT …')",
    },
    "demo.stopping": {"fr": "Arrêt en cours…", "en": "Stopping…"},
    "demo.check_ok": {
        "fr": "{machine} : {stored} pièces dans InfluxDB, {truth} dans la vérité terrain ({file}) — identique ✔",
        "en": "{machine}: {stored} parts in InfluxDB, {truth} in the ground truth ({file}) — identical ✔",
    },
    "demo.check_bad": {
        "fr": "{machine} : {stored} pièces dans InfluxDB mais {truth} dans la vérité terrain ({file}) ✘",
        "en": "{machine}: {stored} parts in InfluxDB but {truth} in the ground truth ({file}) ✘",
    },
    "demo.done": {"fr": "Démonstration terminée.", "en": "Demo finished."},
    "state.offline": {"fr": "hors ligne", "en": "offline"},
    "state.idle": {"fr": "à l'arrêt", "en": "idle"},
    "state.running": {"fr": "en cycle", "en": "running"},
    "state.alarm": {"fr": "en alarme", "en": "alarm"},
    "state.unknown": {"fr": "inconnu", "en": "unknown"},
}


def lang() -> str:
    value = os.environ.get("COPEAU_LANG", "fr").lower()[:2]
    return value if value in ("fr", "en") else "fr"


def t(key: str, **values: object) -> str:
    """The text for `key` in the current language, formatted with `values`."""
    entry = CATALOGUE[key]
    return entry.get(lang(), entry["fr"]).format(**values)

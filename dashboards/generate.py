"""Turn the boards into the committed files: `generated/<lang>/<board>.json` and `provisioning/*.yaml`.

The output is deterministic (sorted keys, fixed ids and uids, no timestamps), so `python -m dashboards` run twice
gives the same bytes and a test can tell when the committed files are stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards.boards import BOARDS, DATASOURCE_NAME, DATASOURCE_UID
from dashboards.catalogue import LANGUAGES, Texts
from dashboards.influxql import DATASOURCE_TYPE

PACKAGE_DIR = Path(__file__).resolve().parent
GENERATED_DIR = PACKAGE_DIR / "generated"
PROVISIONING_DIR = PACKAGE_DIR / "provisioning"
REGENERATE = "python -m dashboards  (or: copeau dashboards generate)"

DEFAULT_INFLUX_URL = "http://127.0.0.1:18086"
DEFAULT_DATABASE = "copeau"


def board_json(name: str, lang: str) -> dict[str, Any]:
    """One board as Grafana's dashboard JSON (a plain dict), panels numbered 1, 2, ... in order."""
    built = BOARDS[name](Texts(lang)).build()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number  # fixed ids: a push must replace, not add
    data: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
    return data


def render(data: dict[str, Any] | list[Any]) -> str:
    """The canonical text of a JSON document: sorted keys, two-space indent, UTF-8 kept, final newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


DATASOURCE_YAML = f"""\
# Généré par dashboards/ (python -m dashboards) — ne pas modifier. / Generated: do not edit.
# Grafana provisioning: copy to <grafana>/provisioning/datasources/copeau.yaml.
# The password comes from the environment of the Grafana server (on InfluxDB 2.x and 3.x: the token).
apiVersion: 1
datasources:
  - name: {DATASOURCE_NAME}
    uid: {DATASOURCE_UID}
    type: {DATASOURCE_TYPE}
    access: proxy
    url: {DEFAULT_INFLUX_URL}
    user: $COPEAU_INFLUXDB_USER
    jsonData:
      dbName: {DEFAULT_DATABASE}
      httpMode: POST
      version: InfluxQL
    secureJsonData:
      password: $COPEAU_INFLUXDB_PASSWORD
    editable: false
"""

PROVIDER_YAML = """\
# Généré par dashboards/ (python -m dashboards) — ne pas modifier. / Generated: do not edit.
# Grafana provisioning: copy to <grafana>/provisioning/dashboards/copeau.yaml, and set COPEAU_DASHBOARDS_DIR in
# Grafana's environment to <copeau>/dashboards/generated/fr (or .../en for the English boards).
apiVersion: 1
providers:
  - name: copeau
    orgId: 1
    folder: Copeau
    folderUid: copeau
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 60
    options:
      path: $COPEAU_DASHBOARDS_DIR
      foldersFromFilesStructure: false
"""


def expected_files() -> dict[Path, str]:
    """Every generated file and its exact text, keyed by absolute path."""
    files: dict[Path, str] = {}
    for lang in LANGUAGES:
        for name in BOARDS:
            files[GENERATED_DIR / lang / f"{name}.json"] = render(board_json(name, lang))
    files[PROVISIONING_DIR / "datasources" / "copeau.yaml"] = DATASOURCE_YAML
    files[PROVISIONING_DIR / "dashboards" / "copeau.yaml"] = PROVIDER_YAML
    return files


def stale_files() -> list[Path]:
    """The generated files that are missing or differ from what the code generates now."""
    return [
        path for path, content in expected_files().items()
        if not path.is_file() or path.read_text(encoding="utf-8") != content
    ]


def write_all() -> list[Path]:
    """(Re)write every generated file; returns the paths written. Removes boards that no longer exist."""
    files = expected_files()
    for lang in LANGUAGES:
        for old in (GENERATED_DIR / lang).glob("*.json"):
            if old not in files:
                old.unlink()
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return sorted(files)

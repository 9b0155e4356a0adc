"""The generated dashboards: reproducible, committed as generated, InfluxQL only, French and English."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import boards
from dashboards.catalogue import CATALOGUE, LANGUAGES
from dashboards.generate import (
    GENERATED_DIR,
    PACKAGE_DIR,
    PROVISIONING_DIR,
    REGENERATE,
    board_json,
    expected_files,
    stale_files,
)

ROOT = PACKAGE_DIR.parent
PANEL_TYPES_WITHOUT_QUERY = {"text"}
# InfluxDB 3 Core's InfluxQL lacks these (FIELD-NOTES); Flux is not InfluxQL at all.
NOT_PORTABLE = re.compile(r"\bSLIMIT\b|\bSHOW DATABASES\b|moving_average|\bfrom\(bucket|\|>", re.IGNORECASE)


def all_boards() -> list[tuple[str, str, dict[str, Any]]]:
    return [(lang, name, board_json(name, lang)) for lang in LANGUAGES for name in boards.BOARDS]


def digest() -> str:
    h = hashlib.sha256()
    for path, text in sorted(expected_files().items()):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def test_generating_twice_gives_identical_bytes_even_in_other_processes() -> None:
    first, second = expected_files(), expected_files()
    assert first == second
    here = digest()
    script = "from tests.unit.test_dashboards_generate import digest; print(digest())"
    for seed in ("1", "2"):  # another process, another hash seed: set or dict order must not leak into the files
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True, timeout=60)
        assert out.stdout.strip() == here


def test_committed_files_equal_what_the_code_generates() -> None:
    stale = [str(p.relative_to(ROOT)) for p in stale_files()]
    assert not stale, f"generated files are out of date: {', '.join(stale)}. Run: {REGENERATE}"
    extra = [p for lang in LANGUAGES for p in (GENERATED_DIR / lang).glob("*.json") if p not in expected_files()]
    assert not extra, f"stray generated files {extra}. Run: {REGENERATE}"


def test_every_board_is_marked_generated_with_fixed_uids_and_panel_ids() -> None:
    uids = set()
    for lang, name, board in all_boards():
        assert "ne pas modifier" in board["description"], name
        assert "id" not in board  # Grafana assigns ids; uids identify boards across Grafanas
        assert board["uid"] == f"copeau-{name}" + ("" if lang == "fr" else f"-{lang}")
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert ids == list(range(1, len(ids) + 1))
    assert len(uids) == len(LANGUAGES) * len(boards.BOARDS)


def test_every_panel_has_an_influxql_query_or_is_a_text_panel() -> None:
    for lang, name, board in all_boards():
        for panel in board["panels"]:
            where = f"{lang}/{name}: {panel['title']}"
            if panel["type"] in PANEL_TYPES_WITHOUT_QUERY:
                assert not panel.get("targets"), where
                assert panel["options"]["content"].strip(), where
                continue
            influx = [t for t in panel["targets"] if t.get("datasource", {}).get("type") == "influxdb"]
            assert influx, f"{where} has no InfluxQL query"
            for target in influx:
                assert target["rawQuery"] is True and target["resultFormat"] in ("time_series", "table"), where
                assert target["datasource"]["uid"] == boards.DATASOURCE_UID, where
                query = target["query"]
                assert query.startswith(("SELECT ", "SHOW ")), where
                assert "$timeFilter" in query, f"{where}: every panel query is bounded by the dashboard range"
                assert not NOT_PORTABLE.search(query), f"{where}: not portable InfluxQL: {query}"
            others = [t for t in panel["targets"] if t not in influx]
            assert all(t["datasource"]["type"] == "__expr__" for t in others), where


def test_default_ranges_stay_within_72_hours_and_the_live_board_refreshes_every_5_s() -> None:
    hours = {"s": 1 / 3600, "m": 1 / 60, "h": 1, "d": 24}
    for _, name, board in all_boards():
        match = re.fullmatch(r"now-(\d+)([smhd])", board["time"]["from"])
        assert match and board["time"]["to"] == "now", name
        assert int(match.group(1)) * hours[match.group(2)] <= 72, name
    assert board_json("atelier", "fr")["refresh"] == "5s"


def test_template_variables_use_show_tag_values_and_match_all_with_a_regex() -> None:
    for _, name, board in all_boards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        expected = {"site", "machine"} if name == "machines" else {"site", "machine", "order", "apprentice"}
        assert set(variables) == expected, name
        for var in variables.values():
            assert var["query"].startswith("SHOW TAG VALUES FROM ")
            assert f'WITH KEY = "{var["name"]}"' in var["query"]
            assert (var["multi"], var["includeAll"], var["allValue"]) == (True, True, ".*")


def texts(board: dict[str, Any]) -> list[str]:
    """The titles and labels a person reads on a board."""
    out = [board["title"]] + [v["label"] for v in board["templating"]["list"]]
    for panel in board["panels"]:
        out.append(panel["title"])
        for transform in panel.get("transformations", []):
            out += list(transform["options"].get("renameByName", {}).values())
    return [t for t in out if t]


def test_french_boards_in_fr_and_english_boards_in_en() -> None:
    french = {entry["fr"] for entry in CATALOGUE.values()}
    english = {entry["en"] for entry in CATALOGUE.values()}
    only_french = french - english  # words that are the same in both ("Machine", "Code") prove nothing
    only_english = english - french
    for name in boards.BOARDS:
        fr, en = texts(board_json(name, "fr")), texts(board_json(name, "en"))
        assert set(fr) <= french, f"fr/{name}: {set(fr) - french}"
        assert set(en) <= english, f"en/{name}: {set(en) - english}"
        assert set(fr) & only_french and not set(fr) & only_english, name
        assert set(en) & only_english and not set(en) & only_french, name
    assert board_json("atelier", "fr")["title"] == "Atelier en direct"
    assert board_json("atelier", "en")["title"] == "Workshop live"


def test_both_languages_run_the_same_queries() -> None:
    def queries(board: dict[str, Any]) -> list[str]:
        return [t.get("query", t.get("expression")) for p in board["panels"] for t in p.get("targets", [])]

    for name in boards.BOARDS:
        assert queries(board_json(name, "fr")) == queries(board_json(name, "en")), name


def test_provisioning_files_point_at_copeau_influxdb_with_the_password_from_the_environment() -> None:
    ds = yaml.safe_load((PROVISIONING_DIR / "datasources" / "copeau.yaml").read_text())["datasources"][0]
    assert (ds["uid"], ds["type"], ds["url"]) == (boards.DATASOURCE_UID, "influxdb", "http://127.0.0.1:18086")
    assert ds["jsonData"] == {"dbName": "copeau", "httpMode": "POST", "version": "InfluxQL"}
    assert ds["secureJsonData"]["password"] == "$COPEAU_INFLUXDB_PASSWORD"
    provider = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "copeau.yaml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "$COPEAU_DASHBOARDS_DIR"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_generated_json_reads_back_as_json(lang: str) -> None:
    for path in sorted((GENERATED_DIR / lang).glob("*.json")):
        assert json.loads(Path(path).read_text(encoding="utf-8"))["schemaVersion"] >= 39


def test_panels_against_the_standard_merge_the_standard_after_the_cycles() -> None:
    """Grafana's `merge` copies B's standard into every row of A with the same (order, operation) only when A's rows
    come first, and keys rows on every field both frames share: Time must be gone, order and operation there."""
    found = 0
    for lang, name, board in all_boards():
        for panel in board["panels"]:
            queries = [t.get("query") for t in panel.get("targets", [])]
            if boards.Q_STANDARD not in queries:
                continue
            found += 1
            assert queries.index(boards.Q_STANDARD) == len(queries) - 1 == 1, (lang, name, panel["title"])
            assert all(t["resultFormat"] == "table" for t in panel["targets"])
            ids = [tr["id"] for tr in panel["transformations"]]
            assert ids[:4] == ["organize", "merge", "filterByValue", "calculateField"], ids
            assert panel["transformations"][0]["options"] == {"excludeByName": {"Time": True}}
            measured = panel["transformations"][3]["options"]["binary"]["left"]["matcher"]["options"]
            cycles = str(queries[0])
            assert f'AS "{measured}"' in cycles and '"order"' in cycles and '"operation"' in cycles
            assert panel["transformations"][3]["options"]["alias"] == f"{measured}_vs_standard"
    assert found == 2 * len(LANGUAGES)  # Atelier en direct and Apprentis, in each language

"""Configuration errors name the file, the line and the field, and the command exits non-zero."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from copeau.config import ConfigError, load_workshop

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
        f"{path}:13: mqtt.host: en mode managed, les services écoutent en local seulement (127.0.0.1)"
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

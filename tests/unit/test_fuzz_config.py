"""Fuzz of the configuration loader (Hypothesis): whatever a workshop file holds, `load_workshop` returns a
Workshop or raises ConfigError whose every problem names the file and a line of it. Never another exception,
never a hang.

Theory of operation: five generators, from the rawest to the nearest to a real file:

- any text, and text made of the characters YAML gives a meaning to;
- YAML documents with explicit tags (`!!int`, `!!timestamp`, `!!binary`, …) on values that do not fit them;
- documents dumped from random data (nested maps and lists of every YAML scalar);
- the shipped demo file, parsed, with one value replaced, one key removed or one unknown key added;
- the shipped demo file as text, with characters deleted, inserted or replaced.

Then `copeau check-config` on a broken file: exit code 2 and the `file:line:` message.

Deterministic by default (`derandomize`: `make test` and CI draw the same examples every run, so a failure can be
reproduced). `COPEAU_FUZZ_RANDOM=1` draws new examples on each run, `COPEAU_FUZZ_EXAMPLES=N` draws more.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from copeau.cli import app
from copeau.config import ConfigError, Workshop, load_workshop

DEMO = Path(__file__).parents[2] / "config" / "workshop.yaml"
DEMO_TEXT = DEMO.read_text(encoding="utf-8")
DEMO_DATA = yaml.safe_load(DEMO_TEXT)

_RANDOM = os.environ.get("COPEAU_FUZZ_RANDOM") == "1"
FUZZ = settings(
    max_examples=int(os.environ.get("COPEAU_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=not _RANDOM,
    database=None,
    # One file in tmp_path is rewritten by every example: reusing the fixture is what we want.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Line breaks as YAML counts them (PyYAML's Mark.line): a problem's line must exist in the file.
_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def assert_loads_or_refuses(tmp_path: Path, text: str) -> None:
    path = tmp_path / "workshop.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        workshop: Workshop | None = load_workshop(path)
        problems = []
    except ConfigError as exc:
        workshop, problems = None, exc.problems
        assert problems, "a ConfigError lists its problems"
    last_line = len(_BREAKS.split(text))
    for problem in problems:
        assert problem.file == str(path), problem
        assert problem.line is not None, f"no line: {problem}"
        assert 1 <= problem.line <= last_line, f"line {problem.line} of {last_line}: {problem}"
        assert problem.message.strip(), problem
        assert str(problem).startswith(f"{path}:{problem.line}: "), str(problem)
    assert workshop is None or isinstance(workshop, Workshop)


# -- generators

_YAML_CHARS = st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?~ \t\n\r.0123456789abcdeyz_\\\x00\x07\ufeff\u2028é"))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30),
    st.sampled_from(["", "~", "null", "yes", "no", "on", "0x1F", "0o17", "1_000", "1:30", ".inf", "-.nan",
                     "2001-13-45", "2024-02-29T25:61:00", "modbus", "opcua", "mill", "lathe", "127.0.0.1", "8.8.8.8",
                     "Europe", "Europe/Paris", "../x", "x" * 300]),
)
keys = st.one_of(st.sampled_from(["site", "id", "name", "machines", "kind", "protocol", "endpoint", "host", "port",
                                  "registers", "parts", "mqtt", "influxdb", "web", "services", "timezone", "mode",
                                  "profile", "simulation", "security", "env", "file"]),
                 st.text(max_size=12), st.integers(-5, 5))
documents = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                             st.dictionaries(keys, children, max_size=5)),
                         max_leaves=25)


@st.composite
def explicit_tags(draw: st.DrawFn) -> str:
    tag = draw(st.sampled_from(["int", "float", "bool", "null", "str", "binary", "timestamp", "set", "omap",
                                "pairs", "seq", "map", "merge", "value", "python/object:os.system",
                                "python/name:os.system"]))
    value = draw(st.sampled_from(["x", "1", "-0x", "9" * 5000, "2001-13-45", "2001-02-30", "zz==", "[1, 2]",
                                  "{a: 1}", "[[a, b]]", "''", "Europe", "true"]))
    return f"site:\n  id: ecole\n  name: !!{tag} {value}\nmachines: []\n"


@st.composite
def mutated_demo(draw: st.DrawFn) -> Any:
    """The demo's data with one change somewhere: a value replaced, a key removed, an unknown key added."""
    data = yaml.safe_load(DEMO_TEXT)  # a fresh copy to change
    node: Any = data
    for _ in range(draw(st.integers(0, 6))):
        children = list(node.keys()) if isinstance(node, dict) else list(range(len(node))) if isinstance(
            node, list) else []
        if not children:
            break
        child = draw(st.sampled_from(children))
        if not isinstance(node[child], dict | list):
            break
        node = node[child]
    children = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "add" or not children:
        if isinstance(node, dict):
            node[draw(keys)] = draw(documents)
        else:
            node.append(draw(documents))
    elif action == "remove":
        del node[draw(st.sampled_from(children))]
    else:
        node[draw(st.sampled_from(children))] = draw(documents)
    return data


@st.composite
def damaged_demo_text(draw: st.DrawFn) -> str:
    """The demo file as text, with up to five characters deleted, inserted or replaced."""
    text = DEMO_TEXT
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        insert = draw(st.text(_YAML_CHARS, max_size=3))
        text = text[:at] + insert + text[at + cut:]
    return text


# -- properties


@FUZZ
@given(text=st.text())
def test_any_text_loads_or_is_refused_with_a_line(tmp_path: Path, text: str) -> None:
    assert_loads_or_refuses(tmp_path, text)


@FUZZ
@given(text=st.text(_YAML_CHARS, max_size=60))
def test_yaml_punctuation_loads_or_is_refused_with_a_line(tmp_path: Path, text: str) -> None:
    assert_loads_or_refuses(tmp_path, text)


@FUZZ
@given(text=explicit_tags())
def test_explicit_tags_load_or_are_refused_with_a_line(tmp_path: Path, text: str) -> None:
    assert_loads_or_refuses(tmp_path, text)


@FUZZ
@given(data=documents, flow=st.booleans())
def test_random_documents_load_or_are_refused_with_a_line(tmp_path: Path, data: Any, flow: bool) -> None:
    assert_loads_or_refuses(tmp_path, yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True))


@FUZZ
@given(data=mutated_demo(), flow=st.booleans())
def test_mutated_demo_loads_or_is_refused_with_a_line(tmp_path: Path, data: Any, flow: bool) -> None:
    assert_loads_or_refuses(tmp_path, yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True,
                                                     sort_keys=False))


@FUZZ
@given(text=damaged_demo_text())
def test_damaged_demo_text_loads_or_is_refused_with_a_line(tmp_path: Path, text: str) -> None:
    assert_loads_or_refuses(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("site: {id: ecole, name: x}\nmachines:\n  - \x00\n", 3, "U+0000"),  # a character YAML refuses
        ("site: &s [*s]\nmachines: []\n", 1, "site"),  # an alias inside its own anchor
        ("site:\n  id: ecole\n  name: " + "[" * 200 + "]" * 200 + "\n", 3, "niveaux"),  # nested too deep
        ("site: {id: ecole, name: x}\n? [a, b]\n: 1\nmachines: []\n", 2, "clé"),  # a list as a key
        ("site: {id: ecole, name: x}\nwhen: !!timestamp 2001-13-45\n", 2, "timestamp"),  # an impossible date
        ("site: {id: ecole, name: x}\nmachines: []\nweb: {timezone: Europe}\n", 3, "Europe"),  # a folder of zones
    ],
)
def test_what_the_fuzz_found_is_refused_with_its_line(tmp_path: Path, text: str, line: int, says: str) -> None:
    path = tmp_path / "workshop.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_workshop(path)
    assert any(p.line == line and says in str(p) for p in info.value.problems), info.value.problems


def test_a_shared_anchor_is_not_walked_once_per_use(tmp_path: Path) -> None:
    """Nine aliases of nine aliases … (the "billion laughs"): the line map must not walk every copy."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    assert_loads_or_refuses(tmp_path, "\n".join(levels) + "\n")


def test_check_config_exits_non_zero_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "workshop.yaml"
    path.write_text(DEMO_TEXT.replace("kind: mill", "kind: [mill", 1), encoding="utf-8")
    result = CliRunner().invoke(app, ["check-config", str(path)])
    assert result.exit_code == 2, result.output
    assert re.search(rf"{re.escape(str(path))}:\d+: ", result.output), result.output

"""Print the fault suite's last measured figures (test-output/faults/*.json) as Markdown, to update
docs/reliability.md after a run::

    .venv/bin/pytest -m faults                 # or -m faults_long for the long variants
    .venv/bin/python -m tests.faults.report    # one section per scenario, figures as measured

Exits 1 when there is no result to print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.faults.rig import RESULTS_DIR

_VERDICT = ("truth_parts", "stored_parts", "lost_parts", "duplicated_parts", "events", "stored_events",
            "missing_events", "duplicated_events")


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_value(v) for v in value)
    return str(value)


def render(path: Path) -> str:
    record = json.loads(path.read_text(encoding="utf-8"))
    machine = record.pop("machine", {})
    load = record.pop("load", {})
    name = record.pop("scenario", path.stem)
    when = record.pop("measured_at", "?")
    verdict = {k: record.pop(k) for k in _VERDICT if k in record}
    lines = [f"### {name}", "",
             f"Measured {when} on `{machine.get('host', '?')}` ({machine.get('cpus', '?')} CPUs, "
             f"Python {machine.get('python', '?')}, {machine.get('system', '?')}).", ""]
    if load:
        lines.append(f"- load: {_value(load)}")
    if verdict:
        lines.append(f"- verdict: {_value(verdict)}")
    lines += [f"- {key}: {_value(value)}" for key, value in record.items()]
    return "\n".join(lines) + "\n"


def main(directory: Path = RESULTS_DIR) -> int:
    files = sorted(directory.glob("*.json"))
    if not files:
        sys.stderr.write(f"no result in {directory}: run `.venv/bin/pytest -m faults` first\n")
        return 1
    sys.stdout.write("\n".join(render(f) for f in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

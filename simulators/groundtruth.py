"""Ground truth: what a simulator really did, one JSON object per line, for tests to compare with.

Each record is ``{"ts": <int ns since the epoch>, "machine": "<id>", "event": "<name>", ...}`` with event:

- ``cycle_start``; ``cycle_end`` with ``"duration_s"``;
- ``part`` with ``"counter"``, the raw counter value after the increment (modulo the counter's modulus), and
  ``"good"`` (true or false) when the simulator knows the part's quality (OPC UA); a record without it is a good part;
- ``alarm_on``, ``alarm_off``;
- ``power_off``; ``power_on`` with ``"counter"``: 0 for a Modbus module (the cut resets it), the kept value for
  an OPC UA machine;
- ``server_stop``, ``server_start`` (OPC UA): the server that serves the machine was down in between (connections
  dropped and refused) while the machine kept producing.

`ts` is taken when the simulator changes its registers or variables, on the same clock as the records of the other
events. The OPC UA simulator stamps in whole microseconds, and its `ts` is the SourceTimestamp of the values written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO


def truth_path(state_dir: Path, machine_id: str) -> Path:
    """Where the ground truth of one simulated machine lives."""
    return state_dir / "truth" / f"{machine_id}.jsonl"


class GroundTruthWriter:
    """Appends records to a JSON-lines file, one flushed line per record (readable while it is written)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as a compact JSON line and flush it, so that a reader sees it at once."""
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class TruthCycle:
    """One cycle as it really ran. A cycle with no `cycle_end` (still running, or its run was cancelled)
    is not completed and has no end."""

    start_ns: int
    end_ns: int | None
    duration_s: float | None
    completed: bool


@dataclass(frozen=True)
class Truth:
    """A ground-truth file, summed up."""

    machine: str
    parts: int  # number of "part" records
    good: int  # "part" records without "good": false (a record without the key is a good part)
    bad: int  # "part" records with "good": false
    cycles: list[TruthCycle]
    alarms: int  # number of "alarm_on" records
    power_cycles: int  # number of "power_off" records
    records: list[dict[str, Any]]


def read_truth(path: Path) -> Truth:
    """Read a ground-truth file. A last line without its newline is still being written and is skipped."""
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    records = [json.loads(line) for line in complete.splitlines() if line]
    machines = {r["machine"] for r in records}
    if len(machines) > 1:
        raise ValueError(f"{path}: records of several machines: {sorted(machines)}")
    cycles: list[TruthCycle] = []
    started: int | None = None
    for r in records:
        if r["event"] == "cycle_start":
            if started is not None:  # a run cancelled mid-cycle, then a new run appended to the same file
                cycles.append(TruthCycle(started, None, None, completed=False))
            started = r["ts"]
        elif r["event"] == "cycle_end" and started is not None:
            cycles.append(TruthCycle(started, r["ts"], r["duration_s"], completed=True))
            started = None
    if started is not None:
        cycles.append(TruthCycle(started, None, None, completed=False))
    parts = [r for r in records if r["event"] == "part"]
    return Truth(
        # An empty file (a simulator in its first idle step) is named after its machine, as truth_path does.
        machine=machines.pop() if machines else path.stem,
        parts=len(parts),
        good=sum(r.get("good", True) is not False for r in parts),
        bad=sum(r.get("good", True) is False for r in parts),
        cycles=cycles,
        alarms=sum(r["event"] == "alarm_on" for r in records),
        power_cycles=sum(r["event"] == "power_off" for r in records),
        records=records,
    )

"""The ground-truth file: what the simulators write is what the tests read, including part quality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulators.groundtruth import GroundTruthWriter, read_truth, truth_path


def write(path: Path, *records: dict[str, Any]) -> None:
    with GroundTruthWriter(path) as writer:
        for r in records:
            writer.write({"machine": "tour-1", **r})


def cycle(start: int, end: int, counter: int, **part: Any) -> list[dict[str, Any]]:
    return [
        {"ts": start, "event": "cycle_start"},
        {"ts": end, "event": "cycle_end", "duration_s": (end - start) / 1e9},
        {"ts": end, "event": "part", "counter": counter, **part},
    ]


def test_parts_without_quality_are_good(tmp_path: Path) -> None:
    # The Modbus simulator knows nothing of quality: its files (and older ones) read as all good.
    path = truth_path(tmp_path, "tour-1")
    write(path, *cycle(10, 20, 1), *cycle(30, 40, 2))
    truth = read_truth(path)
    assert (truth.parts, truth.good, truth.bad) == (2, 2, 0)


def test_good_and_bad_parts_are_counted(tmp_path: Path) -> None:
    path = truth_path(tmp_path, "tour-1")
    write(path, *cycle(10, 20, 1, good=True), *cycle(30, 40, 2, good=False), *cycle(50, 60, 3, good=True))
    truth = read_truth(path)
    assert (truth.parts, truth.good, truth.bad) == (3, 2, 1)
    assert [c.completed for c in truth.cycles] == [True] * 3


def test_server_restarts_and_power_cuts_do_not_break_cycles(tmp_path: Path) -> None:
    path = truth_path(tmp_path, "tour-1")
    write(
        path,
        *cycle(10, 20, 1, good=True),
        {"ts": 21, "event": "server_stop"},
        *cycle(30, 40, 2, good=False),
        {"ts": 41, "event": "power_off"},
        {"ts": 42, "event": "power_on", "counter": 2},
        {"ts": 45, "event": "server_start"},
        {"ts": 50, "event": "cycle_start"},
    )
    truth = read_truth(path)
    assert (truth.parts, truth.good, truth.bad, truth.power_cycles) == (2, 1, 1, 1)
    assert [(c.start_ns, c.end_ns) for c in truth.cycles] == [(10, 20), (30, 40), (50, None)]


def test_a_line_being_written_is_skipped(tmp_path: Path) -> None:
    path = truth_path(tmp_path, "tour-1")
    write(path, *cycle(10, 20, 1, good=False))
    with path.open("a", encoding="utf-8") as file:
        file.write('{"ts": 30, "machine": "tour-1", "event": "par')
    truth = read_truth(path)
    assert (truth.parts, truth.good, truth.bad) == (1, 0, 1)

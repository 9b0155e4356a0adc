"""The derivation core against hand-made timelines and against a tiny reference model (Hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.core import (
    TRANSITIONS,
    CycleTracking,
    Derived,
    Deriver,
    Observation,
    OutOfOrderSample,
    Sample,
    Snapshot,
)
from copeau.contract import CycleData, CycleOutcome, CyclePhase, EventKind, MachineState, PartData, StateData

S = 1_000_000_000  # one second in ns
T0 = 1_800_000_000 * S


def deriver(**kw: object) -> Deriver:
    return Deriver(counter_modulus=2**32, wrap_window=10_000, **kw)  # type: ignore[arg-type]


def kinds(events: list[Derived]) -> list[str]:
    return [e.kind.value + (f":{e.data.phase}" if isinstance(e.data, CycleData) else "") for e in events]


def test_a_cycle_and_its_part() -> None:
    d = deriver()
    assert kinds(d.feed(Sample(T0, counter=7))) == ["state"]  # idle; counter baseline
    start = d.feed(Sample(T0 + 1 * S, cycle_running=True, counter=7))
    assert kinds(start) == ["state", "cycle:start"]
    end = d.feed(Sample(T0 + 5 * S + S // 2, cycle_running=False, counter=8))
    assert kinds(end) == ["state", "cycle:end", "part"]
    cycle = end[1].data
    assert isinstance(cycle, CycleData)
    assert cycle.duration_s == pytest.approx(4.5)
    assert cycle.outcome is CycleOutcome.COMPLETED
    assert cycle.started_ts == T0 + S
    part = end[2].data
    assert isinstance(part, PartData)
    assert (part.count, part.counter) == (1, 8)


def test_cycle_seen_already_running_at_start_is_not_reported() -> None:
    d = deriver()
    d.feed(Sample(T0, cycle_running=True, counter=0))
    out = d.feed(Sample(T0 + S, cycle_running=False, counter=1))
    assert kinds(out) == ["state", "part"]  # the part counts, the false duration does not


def test_losing_the_machine_aborts_the_cycle_and_the_reset_is_counted() -> None:
    d = deriver()
    d.feed(Sample(T0, counter=4_294_967_290))
    d.feed(Sample(T0 + S, cycle_running=True, counter=4_294_967_290))
    lost = d.feed(Sample(T0 + 2 * S, available=False))
    assert kinds(lost) == ["state", "cycle:end"]
    assert isinstance(lost[0].data, StateData) and lost[0].data.state is MachineState.OFFLINE
    assert isinstance(lost[1].data, CycleData) and lost[1].data.outcome is CycleOutcome.ABORTED
    back = d.feed(Sample(T0 + 9 * S, counter=2))
    part = back[-1].data
    assert isinstance(part, PartData)
    assert (part.count, part.reset, part.wrapped) == (2, True, False)


def test_alarm_raised_and_cleared_and_cycle_aborted_by_it() -> None:
    d = deriver()
    d.feed(Sample(T0, counter=0))
    d.feed(Sample(T0 + S, cycle_running=True, counter=0))
    out = d.feed(Sample(T0 + 2 * S, alarm=True, counter=0))
    assert kinds(out) == ["state", "alarm", "cycle:end"]
    assert isinstance(out[2].data, CycleData) and out[2].data.outcome is CycleOutcome.ABORTED
    cleared = d.feed(Sample(T0 + 3 * S, counter=0))
    assert kinds(cleared) == ["state", "alarm"]


def test_snapshot_round_trip_and_restart() -> None:
    d = deriver()
    d.feed(Sample(T0, counter=10))
    d.feed(Sample(T0 + S, cycle_running=True, counter=10))
    snap = Snapshot.from_dict(d.snapshot.to_dict())
    assert snap == d.snapshot
    resumed = deriver(snapshot=snap.after_restart())
    # Still running after the restart: we cannot know since when, so no cycle is reported...
    out = resumed.feed(Sample(T0 + 60 * S, cycle_running=False, counter=13))
    assert kinds(out) == ["state", "part"]
    # ...but the parts made while the collector was away are.
    assert isinstance(out[1].data, PartData) and out[1].data.count == 3


def test_out_of_order_sample_is_refused_and_changes_nothing() -> None:
    d = deriver()
    d.feed(Sample(T0 + S, counter=1))
    before = d.snapshot
    with pytest.raises(OutOfOrderSample):
        d.feed(Sample(T0, counter=5))
    assert d.snapshot == before


def test_transition_table_is_total() -> None:
    for state in CycleTracking:
        assert set(TRANSITIONS[state]) == set(Observation)


# -- reference model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    available: bool
    running: bool
    alarm: bool
    new_parts: int


polls = st.lists(
    st.builds(
        Poll,
        available=st.sampled_from([True, True, True, True, False]),  # mostly reachable
        running=st.booleans(),
        alarm=st.sampled_from([False, False, False, False, True]),  # alarms are rarer
        new_parts=st.integers(0, 3),
    ),
    max_size=80,
)


def reference(samples: list[Sample]) -> tuple[list[MachineState], list[tuple[int, int, CycleOutcome]]]:
    """The rules of core.py written the dumbest way: state changes and cycles (start, end, outcome)."""
    states: list[MachineState] = []
    cycles: list[tuple[int, int, CycleOutcome]] = []
    current: MachineState | None = None
    seen_stopped = False
    start: int | None = None
    for s in samples:
        state = (
            MachineState.OFFLINE
            if not s.available
            else MachineState.ALARM
            if s.alarm
            else MachineState.RUNNING
            if s.cycle_running
            else MachineState.IDLE
        )
        if state is not current:
            states.append(state)
            current = state
        if not s.available:
            if start is not None:
                cycles.append((start, s.ts, CycleOutcome.ABORTED))
            start, seen_stopped = None, False
        elif s.cycle_running:
            if start is None and seen_stopped:
                start = s.ts
        else:
            if start is not None:
                cycles.append((start, s.ts, CycleOutcome.ABORTED if s.alarm else CycleOutcome.COMPLETED))
                start = None
            seen_stopped = True
    return states, cycles


@settings(max_examples=300)
@given(polls)
def test_core_matches_the_reference_model(timeline: list[Poll]) -> None:
    d = deriver()
    counter = 1000
    made = 0
    samples = []
    for i, p in enumerate(timeline):
        if p.available:
            counter += p.new_parts
            made += p.new_parts
        samples.append(
            Sample(
                T0 + i * S,
                available=p.available,
                cycle_running=p.running,
                alarm=p.alarm,
                counter=counter if p.available else None,
            )
        )
    events = [e for s in samples for e in d.feed(s)]
    states, cycles = reference(samples)
    assert [e.data.state for e in events if isinstance(e.data, StateData)] == states
    got = [
        (e.data.started_ts, e.ts, e.data.outcome)
        for e in events
        if isinstance(e.data, CycleData) and e.data.phase is CyclePhase.END
    ]
    assert got == cycles
    starts = [e.ts for e in events if isinstance(e.data, CycleData) and e.data.phase is CyclePhase.START]
    assert (
        starts == [c[0] for c in cycles] + starts[len(cycles) :]
    )  # every start ends, except a last open one
    first_counted = next((i for i, p in enumerate(timeline) if p.available), None)
    expected = made - (timeline[first_counted].new_parts if first_counted is not None else 0)  # baseline
    assert sum(e.data.count for e in events if isinstance(e.data, PartData)) == expected
    assert all(e.kind is EventKind(e.kind) for e in events)


def test_good_counter_gives_quality_and_parts_after_an_outage_are_rebuilt() -> None:
    d = deriver()
    d.feed(Sample(T0, counter=100, good_counter=90))
    good_part = d.feed(Sample(T0 + S, counter=101, good_counter=91))[-1].data
    assert isinstance(good_part, PartData)
    assert (good_part.count, good_part.good, good_part.rebuilt) == (1, 1, False)
    scrap = d.feed(Sample(T0 + 2 * S, counter=102, good_counter=91))[-1].data
    assert isinstance(scrap, PartData)
    assert (scrap.count, scrap.good) == (1, 0)
    # The good counter may move in a later reading than the part counter: totals stay exact.
    late = d.feed(Sample(T0 + 3 * S, counter=102, good_counter=92))[-1].data
    assert isinstance(late, PartData)
    assert (late.count, late.good) == (0, 1)
    d.feed(Sample(T0 + 4 * S, available=False))
    back = d.feed(Sample(T0 + 9 * S, counter=106, good_counter=95))[-1].data
    assert isinstance(back, PartData)
    assert (back.count, back.good, back.rebuilt) == (4, 3, True)
    after = d.feed(Sample(T0 + 10 * S, counter=107, good_counter=96))[-1].data
    assert isinstance(after, PartData)
    assert after.rebuilt is False

"""The scenario is pure and seeded: its shape follows the rules in `simulators/scenario.py`, every time."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from copeau.config import Simulation
from simulators.scenario import Step, plan

# Enough steps to see several alarms and the power cut in an endless plan, yet fast to check.
_PREFIX = 300


def steps_of(sim: Simulation) -> list[Step]:
    """The whole plan when it is finite, its first `_PREFIX` steps when it is not."""
    return list(itertools.islice(plan(sim), _PREFIX))


def parts_before(steps: list[Step], index: int) -> int:
    return sum(s.kind == "cycle" for s in steps[:index])


@st.composite
def simulations(draw: st.DrawFn) -> Simulation:
    cycle_s = draw(st.floats(0.01, 600, allow_nan=False))
    return Simulation(
        seed=draw(st.integers(0, 2**32)),
        cycle_s=cycle_s,
        cycle_jitter_s=draw(st.floats(0, cycle_s)),
        idle_s=draw(st.floats(0.01, 600)),
        alarm_every=draw(st.integers(0, 6)),
        alarm_s=draw(st.floats(0.01, 60)),
        power_cycle_after=draw(st.integers(0, 12)),
        power_off_s=draw(st.floats(0.01, 60)),
        parts=draw(st.integers(0, 15)),
    )


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    sim = Simulation(seed=7, alarm_every=3, power_cycle_after=4, parts=10)
    assert list(plan(sim)) == list(plan(sim))
    assert list(plan(sim)) != list(plan(sim.model_copy(update={"seed": 8})))


def test_a_short_plan_step_by_step() -> None:
    sim = Simulation(seed=1, alarm_every=2, power_cycle_after=2, parts=3)
    assert [s.kind for s in plan(sim)] == [
        "idle",
        "cycle", "idle",
        "cycle", "idle", "alarm", "idle", "power_off", "idle",  # both after part 2: alarm first
        "cycle", "idle",
    ]  # fmt: skip


def test_nothing_is_played_after_the_last_part() -> None:
    sim = Simulation(alarm_every=2, power_cycle_after=2, parts=2)
    assert [s.kind for s in plan(sim)] == ["idle", "cycle", "idle", "cycle", "idle"]


def test_demo_machine_is_cut_after_its_fourth_part() -> None:
    # The same numbers as fraiseuse-2 in config/workshop.yaml.
    sim = Simulation(seed=22, cycle_s=5.0, cycle_jitter_s=1.0, idle_s=2.5, power_cycle_after=4, power_off_s=4.0)
    steps = steps_of(sim)
    cuts = [i for i, s in enumerate(steps) if s.kind == "power_off"]
    assert len(cuts) == 1
    assert parts_before(steps, cuts[0]) == 4
    assert steps[cuts[0]].duration_s == 4.0


@given(simulations())
def test_plan_shape(sim: Simulation) -> None:
    steps = steps_of(sim)
    assert steps == steps_of(sim)  # deterministic
    assert steps[0].kind == "idle"
    for i, step in enumerate(steps):
        if step.kind != "idle":
            # Every cycle, alarm and power cut is followed by idle; alarms and cuts are also preceded by it.
            assert i + 1 == len(steps) or steps[i + 1].kind == "idle", (i, steps[i : i + 2])
        if step.kind in ("alarm", "power_off"):
            assert steps[i - 1].kind == "idle"
        made = parts_before(steps, i)
        match step.kind:
            case "cycle":
                low = max(0.0, sim.cycle_s - sim.cycle_jitter_s)
                assert low <= step.duration_s <= sim.cycle_s + sim.cycle_jitter_s
            case "idle" if i > 0 and steps[i - 1].kind == "power_off":
                assert step.duration_s == sim.power_on_idle_s  # restart and homing after a power cut
            case "idle":
                assert 0.5 * sim.idle_s <= step.duration_s <= 1.5 * sim.idle_s
            case "alarm":
                assert step.duration_s == sim.alarm_s
                assert sim.alarm_every > 0 and made % sim.alarm_every == 0
                assert steps[i - 2].kind == "cycle"  # right after that cycle's idle step
            case "power_off":
                assert step.duration_s == sim.power_off_s
                assert made == sim.power_cycle_after
                assert steps[i - 2].kind == "cycle" or steps[i - 2 : i] == [Step("alarm", sim.alarm_s), steps[i - 1]]

    cycles = parts_before(steps, len(steps))
    if sim.parts:
        assert len(steps) < _PREFIX, "a finite plan fits in the prefix for these parameters"
        assert cycles == sim.parts
        assert [s.kind for s in steps[-2:]] == ["cycle", "idle"]  # ends right after the last part
    else:
        assert len(steps) == _PREFIX  # endless

    # Nothing is left out: what is due after part k comes right after that part's idle step.
    for i in (i for i, s in enumerate(steps) if s.kind == "cycle"):
        part = parts_before(steps, i) + 1
        due = [Step("alarm", sim.alarm_s)] if sim.alarm_every and part % sim.alarm_every == 0 else []
        if part == sim.power_cycle_after:
            due.append(Step("power_off", sim.power_off_s))
        if part == sim.parts:
            due = []  # the plan ends here
        after = steps[i + 2 : i + 2 + 2 * len(due)]
        if len(after) == 2 * len(due):  # not cut off by the prefix
            assert after[::2] == due, (part, after)
            if i + 2 + 2 * len(due) < len(steps):
                assert steps[i + 2 + 2 * len(due)].kind == "cycle"
    cut_is_due = 0 < sim.power_cycle_after < (sim.parts or cycles)
    assert sum(s.kind == "power_off" for s in steps) == (1 if cut_is_due else 0)

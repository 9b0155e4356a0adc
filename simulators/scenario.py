"""A machine's day as a seeded list of steps: pure (no clock, no I/O), so it is tested without waiting.

The simulator plays the steps in order; the same `Simulation` block always gives the same steps.

Shape of a plan::

    idle, cycle, idle, cycle, idle, [alarm, idle], [power_off, restart idle], cycle, idle, ...

- Every cycle completes and makes exactly one part; an idle step follows each cycle.
- After every `alarm_every`-th part and its idle step: an alarm, then idle again.
- Once, after part `power_cycle_after` and its idle step: the module loses power, then idle for
  `power_on_idle_s` (restart and homing) before the next cycle. The cut
  comes after at least 0.5 * idle_s of idle, so a poller has read the counter since the last part: parts made
  in the last poll interval before a module loses power cannot be known by anyone reading that counter, and
  the scenario does not pretend otherwise.
- With `parts > 0` the plan stops with the idle step right after part `parts`; an alarm or a power cut
  that would come after that last part is not played. With `parts == 0` the plan never ends.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from copeau.config import Simulation

StepKind = Literal["cycle", "idle", "alarm", "power_off"]


@dataclass(frozen=True)
class Step:
    """One thing the machine does for `duration_s` seconds."""

    kind: StepKind
    duration_s: float


def plan(sim: Simulation) -> Iterator[Step]:
    """Yield the steps of the scenario described by `sim`, deterministically for a given `sim`."""
    rng = random.Random(sim.seed)  # a reproducible scenario, not cryptography

    def idle() -> Step:
        return Step("idle", rng.uniform(0.5 * sim.idle_s, 1.5 * sim.idle_s))

    def cycle() -> Step:
        drawn = rng.uniform(sim.cycle_s - sim.cycle_jitter_s, sim.cycle_s + sim.cycle_jitter_s)
        # `Simulation` alone allows a jitter larger than the cycle (`Machine` does not); time cannot go back.
        return Step("cycle", max(0.0, drawn))

    yield idle()
    made = 0
    while sim.parts == 0 or made < sim.parts:
        yield cycle()
        made += 1
        yield idle()
        if made == sim.parts:
            return
        if sim.alarm_every and made % sim.alarm_every == 0:
            yield Step("alarm", sim.alarm_s)
            yield idle()
        if sim.power_cycle_after and made == sim.power_cycle_after:
            yield Step("power_off", sim.power_off_s)
            # Switched back on, a machine is restarted and homed before its next cycle.
            yield Step("idle", sim.power_on_idle_s)

"""The derivation core: raw machine samples in, events out. Sans-I/O.

Theory of operation
-------------------
A protocol adapter (Modbus, OPC UA, a test) reads a machine and hands a `Sample` to `Deriver.feed()`.
The sample carries its own time: this module never reads a clock and does no I/O, so every rule about
cycles, parts, states and alarms lives here and is tested here, the same for every protocol.

From a sample the deriver emits, in this order:

1. `state`  when the machine's state changes (offline / idle / running / alarm);
2. `alarm`  when the alarm input rises or falls;
3. `cycle`  end, when a cycle it saw start stops running (with its duration);
4. `part`   when the cumulative part counter (or good-part counter) moved (see counters.py for wraps and
            resets); parts counted from the counter after the machine was unreachable are flagged `rebuilt`;
5. `cycle`  start, when the machine starts running.

Cycles follow a small transition table (`TRANSITIONS`). A cycle whose start was not seen (Copeau started
mid-cycle, or the machine was unreachable) is not reported: its duration would be false. A cycle cut short
by an alarm or by losing the machine ends as `aborted`.

Everything the deriver must remember across a collector restart is in `Snapshot`, which the collector
stores with the outbox in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from collectors.counters import counter_step
from copeau.contract import (
    AlarmData,
    CycleData,
    CycleOutcome,
    CyclePhase,
    EventData,
    EventKind,
    MachineState,
    PartData,
    StateData,
)


@dataclass(frozen=True)
class Sample:
    """One reading of a machine at time `ts` (ns since the epoch, fixed by the adapter at the source).

    `available=False` means the machine could not be read: the other fields are then ignored.
    `counter` is the raw cumulative part counter, or None when the machine has none.
    """

    ts: int
    available: bool = True
    cycle_running: bool = False
    alarm: bool = False
    counter: int | None = None
    good_counter: int | None = None  # cumulative good parts, when the machine reports quality (OPC UA PartsGood)


@dataclass(frozen=True)
class Derived:
    """One event, before the collector adds site, machine and sequence number."""

    kind: EventKind
    ts: int
    data: EventData


class CycleTracking(StrEnum):
    UNKNOWN = "unknown"  # we do not know whether a cycle is running (start, or machine unreachable)
    STOPPED = "stopped"  # no cycle running
    RUNNING = "running"  # a cycle whose start we saw is running


class Observation(StrEnum):
    RUN_ON = "run_on"
    RUN_OFF = "run_off"
    LOST = "lost"


TRANSITIONS: dict[CycleTracking, dict[Observation, CycleTracking]] = {
    CycleTracking.UNKNOWN: {
        Observation.RUN_ON: CycleTracking.UNKNOWN,  # running, but since when? wait for it to stop
        Observation.RUN_OFF: CycleTracking.STOPPED,
        Observation.LOST: CycleTracking.UNKNOWN,
    },
    CycleTracking.STOPPED: {
        Observation.RUN_ON: CycleTracking.RUNNING,  # → cycle start
        Observation.RUN_OFF: CycleTracking.STOPPED,
        Observation.LOST: CycleTracking.UNKNOWN,
    },
    CycleTracking.RUNNING: {
        Observation.RUN_ON: CycleTracking.RUNNING,
        Observation.RUN_OFF: CycleTracking.STOPPED,  # → cycle end
        Observation.LOST: CycleTracking.UNKNOWN,  # → cycle end, aborted
    },
}


class IllegalTransition(RuntimeError):
    """A (state, observation) pair missing from TRANSITIONS: a bug in this module, never the machine's fault."""

    def __init__(self, state: CycleTracking, observation: Observation) -> None:
        super().__init__(f"no transition from {state} on {observation}")
        self.state = state
        self.observation = observation


def next_tracking(state: CycleTracking, observation: Observation) -> CycleTracking:
    try:
        return TRANSITIONS[state][observation]
    except KeyError:
        raise IllegalTransition(state, observation) from None


@dataclass(frozen=True)
class Snapshot:
    """What the deriver remembers. Plain data, so the collector can persist it (JSON) and restore it."""

    state: MachineState | None = None
    tracking: CycleTracking = CycleTracking.UNKNOWN
    cycle_started_ts: int | None = None
    alarm: bool | None = None
    counter: int | None = None
    good_counter: int | None = None
    last_ts: int | None = None
    # The machine was unreachable since the last counter reading (a decrease is then a reset, not a wrap).
    outage: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value if self.state else None,
            "tracking": self.tracking.value,
            "cycle_started_ts": self.cycle_started_ts,
            "alarm": self.alarm,
            "counter": self.counter,
            "good_counter": self.good_counter,
            "last_ts": self.last_ts,
            "outage": self.outage,
        }

    def after_restart(self) -> Snapshot:
        """The snapshot to resume from after the collector was away: a cycle seen running may have ended and
        another started meanwhile, so its start time no longer means anything."""
        # The module may also have been power-cycled meanwhile: a lower counter is then a reset.
        if self.tracking is CycleTracking.RUNNING:
            return replace(self, tracking=CycleTracking.UNKNOWN, cycle_started_ts=None, outage=True)
        return replace(self, outage=True)

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Snapshot:
        state = raw.get("state")
        return cls(
            state=MachineState(str(state)) if state else None,
            tracking=CycleTracking(str(raw.get("tracking", CycleTracking.UNKNOWN.value))),
            cycle_started_ts=_opt_int(raw.get("cycle_started_ts")),
            alarm=None if raw.get("alarm") is None else bool(raw.get("alarm")),
            counter=_opt_int(raw.get("counter")),
            good_counter=_opt_int(raw.get("good_counter")),
            last_ts=_opt_int(raw.get("last_ts")),
            outage=bool(raw.get("outage", False)),
        )


def _opt_int(value: object) -> int | None:
    return None if value is None else int(str(value))


class OutOfOrderSample(ValueError):
    """A sample older than the previous one: the adapter's clock or ordering is broken (our fault)."""


class Deriver:
    """Per-machine derivation. `feed()` one sample at a time, in time order; it returns the new events."""

    def __init__(self, *, counter_modulus: int, wrap_window: int, snapshot: Snapshot | None = None) -> None:
        self._modulus = counter_modulus
        self._wrap_window = wrap_window
        self._s = snapshot or Snapshot()
        self.rebased = 0  # counter jumps taken as a new baseline (see counters.py)

    @property
    def snapshot(self) -> Snapshot:
        return self._s

    def feed(self, sample: Sample) -> list[Derived]:
        s = self._s
        if s.last_ts is not None and sample.ts < s.last_ts:
            raise OutOfOrderSample(f"sample at {sample.ts} is older than the previous one at {s.last_ts}")
        out: list[Derived] = []
        ts = sample.ts

        new_state = _state_of(sample)
        if new_state is not s.state:
            out.append(Derived(EventKind.STATE, ts, StateData(state=new_state, previous=s.state)))

        if not sample.available:
            tracking = next_tracking(s.tracking, Observation.LOST)
            if s.tracking is CycleTracking.RUNNING:
                out.append(self._cycle_end(ts, CycleOutcome.ABORTED))
            # Counter and alarm are left as they were: compared again when the machine is back.
            self._s = replace(s, state=new_state, tracking=tracking, cycle_started_ts=None, last_ts=ts, outage=True)
            return out

        alarm = s.alarm
        if sample.alarm != s.alarm:
            # Report a raised alarm always; a cleared one only if we had seen it raised.
            if sample.alarm or s.alarm is not None:
                out.append(Derived(EventKind.ALARM, ts, AlarmData(active=sample.alarm)))
            alarm = sample.alarm

        observation = Observation.RUN_ON if sample.cycle_running else Observation.RUN_OFF
        tracking = next_tracking(s.tracking, observation)
        started = s.cycle_started_ts
        if s.tracking is CycleTracking.RUNNING and tracking is CycleTracking.STOPPED:
            outcome = CycleOutcome.ABORTED if sample.alarm else CycleOutcome.COMPLETED
            out.append(self._cycle_end(ts, outcome))
            started = None

        counter, good_counter = s.counter, s.good_counter
        parts, good, reset, wrapped = 0, None, False, False
        if sample.counter is not None:
            step = counter_step(
                s.counter, sample.counter, modulus=self._modulus, wrap_window=self._wrap_window, outage=s.outage
            )
            if step.rebased:
                self.rebased += 1  # the collector logs it: a person should know the counter jumped
            parts, reset, wrapped, counter = step.parts, step.reset, step.wrapped, sample.counter
        if sample.good_counter is not None:
            good_step = counter_step(
                s.good_counter,
                sample.good_counter,
                modulus=self._modulus,
                wrap_window=self._wrap_window,
                outage=s.outage,
            )
            good, good_counter = good_step.parts, sample.good_counter
        if parts > 0 or good:
            data = PartData(
                count=parts, good=good, counter=sample.counter, reset=reset, wrapped=wrapped, rebuilt=s.outage
            )
            out.append(Derived(EventKind.PART, ts, data))

        if s.tracking is not CycleTracking.RUNNING and tracking is CycleTracking.RUNNING:
            out.append(Derived(EventKind.CYCLE, ts, CycleData(phase=CyclePhase.START)))
            started = ts

        self._s = Snapshot(
            state=new_state,
            tracking=tracking,
            cycle_started_ts=started,
            alarm=alarm,
            counter=counter,
            good_counter=good_counter,
            last_ts=ts,
            outage=s.outage and sample.counter is None,
        )
        return out

    def _cycle_end(self, ts: int, outcome: CycleOutcome) -> Derived:
        started = self._s.cycle_started_ts
        assert started is not None, "RUNNING always has a start time"
        return Derived(
            EventKind.CYCLE,
            ts,
            CycleData(phase=CyclePhase.END, started_ts=started, duration_s=(ts - started) / 1e9, outcome=outcome),
        )


def _state_of(sample: Sample) -> MachineState:
    if not sample.available:
        return MachineState.OFFLINE
    if sample.alarm:
        return MachineState.ALARM
    if sample.cycle_running:
        return MachineState.RUNNING
    return MachineState.IDLE

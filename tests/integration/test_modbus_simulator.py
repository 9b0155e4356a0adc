"""The Modbus simulator, read by a real pymodbus client, says what its ground truth says.

Each read is stamped before it is sent and after its answer came (`t0`, `t1`). The simulator changes its
registers and stamps its truth record in one step of the event loop, so when no record falls in [t0, t1]
the read must show exactly the state the truth describes at t0. No read is trusted to "probably" fall
between two changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from pymodbus.client import AsyncModbusTcpClient

from copeau.config import ModbusMachine
from copeau.services import free_port
from simulators.groundtruth import read_truth, truth_path
from simulators.modbus import ModbusMachineSimulator
from simulators.scenario import plan

pytestmark = pytest.mark.integration

UNIT = 7  # not the default 1, so that a simulator ignoring unit_id would be caught
WORD_ORDER_TABLE = {"big": ("holding_register", 0), "little": ("input_register", 16)}  # as in workshop.yaml


def machine(port: int, *, word_order: Literal["big", "little"] = "big", **simulation: Any) -> ModbusMachine:
    table, address = WORD_ORDER_TABLE[word_order]
    return ModbusMachine.model_validate({
        "id": "fraiseuse-t",
        "name": "Fraiseuse de test",
        "kind": "mill",
        "protocol": "modbus",
        "endpoint": {"host": "127.0.0.1", "port": port},
        "unit_id": UNIT,
        "poll_interval_s": 0.05,
        "registers": {
            "cycle_running": {"table": "discrete_input", "address": 0},
            "spindle_on": {"table": "discrete_input", "address": 1},
            "alarm": {"table": "discrete_input", "address": 2},
            "parts": {"table": table, "address": address, "type": "uint32", "count": 2, "word_order": word_order},
        },
        "simulation": {"seed": 5, "cycle_s": 0.25, "cycle_jitter_s": 0.05, "idle_s": 0.2, **simulation},
    })  # fmt: skip


async def eventually(predicate: Callable[[], Awaitable[Any]], *, within: float, what: str) -> Any:
    """Await `predicate` until it returns a truthy value; fail with `what` after `within` seconds."""
    last: Any = None
    try:
        async with asyncio.timeout(within):
            # Polling: a truth file and a listening socket signal nothing that could be awaited instead.
            while not (last := await predicate()):
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {within:.1f} s waiting for {what} (last value: {last!r})")
    return last


@contextlib.asynccontextmanager
async def simulating(sim: ModbusMachineSimulator) -> AsyncIterator[asyncio.Task[None]]:
    """Run the simulator in a task; cancel it at the end and surface any failure of its own."""
    task = asyncio.create_task(sim.run(), name="simulator-under-test")
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.result()


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    """A client connected to the simulator (waits for it to listen)."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, reconnect_delay_max=0.5, timeout=1, retries=0)
    try:
        await eventually(client.connect, within=5, what=f"the simulator to listen on port {port}")
        yield client
    finally:
        client.close()


@dataclass(frozen=True)
class Reading:
    t0: int
    t1: int
    bits: tuple[bool, bool, bool]  # cycle_running, spindle_on, alarm
    counter: int


async def read(client: AsyncModbusTcpClient, m: ModbusMachine) -> Reading:
    reg = m.registers.parts
    read_counter = client.read_holding_registers if reg.table == "holding_register" else client.read_input_registers
    t0 = time.time_ns()
    bits = await client.read_discrete_inputs(0, count=3, device_id=UNIT)
    words = await read_counter(reg.address, count=2, device_id=UNIT)
    t1 = time.time_ns()
    assert not bits.isError() and not words.isError(), (bits, words)
    value = client.convert_from_registers(words.registers, client.DATATYPE.UINT32, word_order=reg.word_order)
    assert isinstance(value, int)
    return Reading(t0, t1, (bits.bits[0], bits.bits[1], bits.bits[2]), value)


def truth_state_at(records: list[dict[str, Any]], ts: int, counter_start: int) -> tuple[tuple[bool, ...], int]:
    """What the truth says the module showed at `ts`: (cycle_running, spindle_on, alarm), counter."""
    running, alarm, counter = False, False, counter_start
    for r in records:
        if r["ts"] > ts:
            break
        match r["event"]:
            case "cycle_start" | "cycle_end":
                running = r["event"] == "cycle_start"
            case "alarm_on" | "alarm_off":
                alarm = r["event"] == "alarm_on"
            case "part" | "power_on":
                counter = r["counter"]
    return (running, running, alarm), counter


@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize(
    ("counter_start", "expected_end"),
    [(0x1_FFFE, 0x2_0001), (2**32 - 2, 1)],  # a carry from the low word to the high one; a wrap at 2**32
    ids=["carry", "wrap"],
)
def test_readings_match_ground_truth(
    tmp_path: Path, word_order: Literal["big", "little"], counter_start: int, expected_end: int
) -> None:
    port = free_port()
    m = machine(port, word_order=word_order, counter_start=counter_start, parts=3, alarm_every=2, alarm_s=0.15)
    path = truth_path(tmp_path, m.id)
    sim = ModbusMachineSimulator(m, truth_path=path)

    async def scenario() -> list[Reading]:
        readings: list[Reading] = []
        async with simulating(sim), connected(port) as client:
            while not sim.finished.is_set():
                readings.append(await read(client, m))
                await asyncio.sleep(0.01)  # a poll interval, not a wait for a result
            readings.append(await read(client, m))  # still serving once the plan has ended
        return readings

    readings = asyncio.run(scenario())
    truth = read_truth(path)

    assert truth.machine == m.id
    assert truth.parts == 3 == sim.parts_made
    assert [r["counter"] for r in truth.records if r["event"] == "part"] == [
        (counter_start + k) % 2**32 for k in (1, 2, 3)
    ]
    assert sim.counter == expected_end == readings[-1].counter
    assert truth.alarms == 1  # after part 2; none after part 3, the last one
    assert [c.completed for c in truth.cycles] == [True] * 3

    # The plan is played as planned, on absolute deadlines: cycles last what the plan says, and the time from
    # the first cycle to the last one is the sum of the planned steps in between (errors do not add up).
    planned = list(plan(m.simulation))
    for cycle, step in zip(truth.cycles, [s for s in planned if s.kind == "cycle"], strict=True):
        assert cycle.duration_s == (cycle.end_ns - cycle.start_ns) / 1e9
        assert cycle.duration_s == pytest.approx(step.duration_s, abs=0.1)
    span = (truth.cycles[-1].end_ns - truth.cycles[0].start_ns) / 1e9
    assert span == pytest.approx(sum(s.duration_s for s in planned[1:-1]), abs=0.1)

    stamps = sorted(r["ts"] for r in truth.records)
    clear = [
        reading for reading in readings if not any(reading.t0 <= ts <= reading.t1 for ts in stamps)
    ]  # readings with no change of state while they were in flight
    for reading in clear:
        assert (reading.bits, reading.counter) == truth_state_at(truth.records, reading.t0, counter_start), reading
    seen = {(r.bits, r.counter) for r in clear}
    # Not a vacuous check: the readings saw the machine running, in alarm, idle, and every counter value.
    assert ((True, True, False), counter_start) in seen
    assert any(bits == (False, False, True) for bits, _ in seen)
    assert {counter for _, counter in seen} == {(counter_start + k) % 2**32 for k in range(4)}


def test_raw_words_follow_the_word_order(tmp_path: Path) -> None:
    # Decoding with pymodbus checks the simulator against an independent decoder; this pins the raw layout.
    async def words(word_order: Literal["big", "little"]) -> list[int]:
        port = free_port()
        m = machine(port, word_order=word_order, counter_start=0x1234_5678, parts=1, idle_s=1.0)
        reg = m.registers.parts
        path = tmp_path / f"{word_order}.jsonl"
        async with (
            simulating(ModbusMachineSimulator(m, truth_path=path)),
            connected(port) as client,
        ):
            read_words = (
                client.read_holding_registers if reg.table == "holding_register" else client.read_input_registers
            )
            answer = await read_words(reg.address, count=2, device_id=UNIT)
            assert read_truth(path).records == [], "read during the first idle step, before any change"
            return list(answer.registers)

    assert asyncio.run(words("big")) == [0x1234, 0x5678]
    assert asyncio.run(words("little")) == [0x5678, 0x1234]


def test_power_cut_drops_connections_refuses_new_ones_and_resets_the_counter(tmp_path: Path) -> None:
    port = free_port()
    m = machine(port, counter_start=5, parts=3, power_cycle_after=1, power_off_s=0.6, idle_s=0.3)
    path = truth_path(tmp_path, m.id)
    sim = ModbusMachineSimulator(m, truth_path=path)

    def events() -> list[str]:
        return [r["event"] for r in read_truth(path).records]

    async def scenario() -> tuple[Reading, int]:
        async with simulating(sim), connected(port) as client:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a connection open before the cut
            try:
                await eventually(lambda: _now("power_off" in events()), within=5, what="the power cut")
                async with asyncio.timeout(2):
                    assert await reader.read() == b"", "the open connection is dropped by the cut"
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection("127.0.0.1", port)
                assert "power_on" not in events(), "the cut lasted long enough for these checks"
            finally:
                writer.close()
                await writer.wait_closed()
            await eventually(lambda: _now("power_on" in events()), within=5, what="power to come back")
            async with connected(port) as fresh:
                after_power_on = await read(fresh, m)
            async with asyncio.timeout(10):
                await sim.finished.wait()
            client.close()  # the first client's connection died with the power
            return after_power_on, sim.counter

    after_power_on, final_counter = asyncio.run(scenario())
    truth = read_truth(path)
    counted = [(r["event"], r.get("counter")) for r in truth.records if r["event"] in ("part", "power_off", "power_on")]
    assert counted == [("part", 6), ("power_off", None), ("power_on", 0), ("part", 1), ("part", 2)]
    assert truth.parts == 3 == sim.parts_made
    assert truth.power_cycles == 1
    assert final_counter == 2
    power_on_ts = next(r["ts"] for r in truth.records if r["event"] == "power_on")
    next_change = next(r["ts"] for r in truth.records if r["ts"] > power_on_ts)
    assert power_on_ts < after_power_on.t0, "read after power came back"
    assert after_power_on.t1 < next_change, "read before the next cycle started"
    assert (after_power_on.bits, after_power_on.counter) == ((False, False, False), 0)
    # The cut comes after at least half an idle step, so a poller has read the last part's counter.
    part_before_cut_ts = next(r["ts"] for r in truth.records if r["event"] == "part")
    cut_ts = next(r["ts"] for r in truth.records if r["event"] == "power_off")
    assert cut_ts - part_before_cut_ts >= 0.5 * 0.3 * 1e9


def test_cancel_stops_serving_and_leaves_a_complete_truth(tmp_path: Path) -> None:
    port = free_port()
    m = machine(port, parts=0)  # endless
    path = truth_path(tmp_path, m.id)
    sim = ModbusMachineSimulator(m, truth_path=path)

    async def scenario() -> None:
        task = asyncio.create_task(sim.run())
        async with connected(port):
            await eventually(lambda: _now(read_truth(path).parts >= 1), within=5, what="a first part")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(scenario())
    assert not sim.finished.is_set()
    assert read_truth(path).parts == sim.parts_made >= 1


async def _now(value: Any) -> Any:
    """A value as an awaitable, for `eventually` on a synchronous condition."""
    return value

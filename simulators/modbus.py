"""A Modbus TCP retrofit module on an older CNC mill, played by a seeded scenario.

The module is built from the same register description as the collector reads (`machine.registers`), so
the two cannot drift apart: discrete inputs (cycle running, spindle on, alarm) and a hardware counter of
end-of-program (M30) pulses, in the tables, at the addresses and in the word order the description says.
Like a real module, each of the four tables is addressed on its own (pymodbus "non-shared" blocks).

Everything that happens is written to a ground-truth file (`groundtruth.py`) at the moment the registers
change, so that a test can compare what Copeau stored with what really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from copeau.config import ModbusMachine, Register, Table
from copeau.errors import ServiceError
from copeau.i18n import t
from simulators.groundtruth import GroundTruthWriter
from simulators.scenario import Step, plan

# A function code that reads each table: pymodbus's simulator picks the table to write from it.
_FUNCTION_CODE = {Table.COIL: 1, Table.DISCRETE_INPUT: 2, Table.HOLDING_REGISTER: 3, Table.INPUT_REGISTER: 4}
_BITS = ("cycle_running", "spindle_on", "alarm")


def _words(reg: Register, value: int) -> list[int]:
    """`value` as a module holds it: 16-bit words, high word first unless word_order is "little"."""
    high_first = [(value >> (16 * i)) & 0xFFFF for i in reversed(range(reg.count))]
    return high_first if reg.word_order == "big" else high_first[::-1]


class ModbusMachineSimulator:
    """One simulated machine: a Modbus TCP server whose values follow `plan(machine.simulation)`."""

    def __init__(
        self,
        machine: ModbusMachine,
        *,
        truth_path: Path,
        clock_ns: Callable[[], int] = time.time_ns,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        if machine.simulation is None:
            raise ValueError(f"{machine.id}: no simulation block, nothing to simulate")
        self.machine = machine
        self.host = host if host is not None else machine.endpoint.host
        self.port = port if port is not None else machine.endpoint.port
        self.finished = asyncio.Event()  # set when a finite plan has been played to its end, or production stopped
        self._stop_production = asyncio.Event()
        self._simulation = machine.simulation
        self._truth_path = truth_path
        self._clock_ns = clock_ns
        self._counter = machine.simulation.counter_start
        self._parts_made = 0
        self._bits = dict.fromkeys(_BITS, False)
        self._server: ModbusTcpServer | None = None
        self._truth: GroundTruthWriter | None = None

    @property
    def parts_made(self) -> int:
        """Parts made since `run()` started, across counter wraps and power cuts."""
        return self._parts_made

    @property
    def counter(self) -> int:
        """The raw hardware counter, as a client reads it (0 after a power cut)."""
        return self._counter

    def stop_production(self) -> None:
        """Make no more parts: a cycle in progress completes (its part is counted), then the machine stays idle
        and keeps serving, so that a collector can read the final counter. Sets `finished` when idle."""
        self._stop_production.set()

    async def run(self) -> None:
        """Serve, and play the scenario until cancelled. A finite scenario ends idle, still serving."""
        loop = asyncio.get_running_loop()
        self._truth = truth = GroundTruthWriter(self._truth_path)
        try:
            await self._start_server()
            # Absolute deadlines on the loop's monotonic clock: time spent changing registers or restarting
            # the server is taken from the step, so the scenario does not drift.
            deadline = loop.time()
            for step in plan(self._simulation):
                if self._stop_production.is_set():
                    break
                deadline += step.duration_s
                await self._play(step, deadline)
            self.finished.set()
            await loop.create_future()  # idle and serving until cancelled
        finally:
            await self._stop_server()
            truth.close()

    async def _play(self, step: Step, deadline: float) -> None:
        if step.kind == "cycle":
            await self._set_bits(cycle_running=True, spindle_on=True)
            start = self._record("cycle_start")
            await _sleep_until(deadline)
            await self._set_bits(cycle_running=False, spindle_on=False)
            self._counter = (self._counter + 1) % self.machine.registers.parts.modulus
            self._parts_made += 1
            await self._write_counter()
            end = self._clock_ns()
            self._record("cycle_end", ts=end, duration_s=(end - start) / 1e9)
            self._record("part", ts=end, counter=self._counter)
        elif step.kind == "alarm":
            await self._set_bits(alarm=True)
            self._record("alarm_on")
            await _sleep_until(deadline)
            await self._set_bits(alarm=False)
            self._record("alarm_off")
        elif step.kind == "power_off":
            # The module loses everything: connections, listening socket, and the counter's value.
            await self._stop_server()
            self._record("power_off")
            self._counter = 0
            self._bits = dict.fromkeys(_BITS, False)
            await _sleep_until(deadline)
            await self._start_server()
            self._record("power_on", counter=0)
        else:  # idle: the only step that a stop request cuts short
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._stop_production.wait()

    async def _set_bits(self, **values: bool) -> None:
        for name, on in values.items():
            self._bits[name] = on
            reg: Register | None = getattr(self.machine.registers, name)
            if reg is not None and self._server is not None:
                await self._server.async_setValues(self.machine.unit_id, _FUNCTION_CODE[reg.table], reg.address, [on])

    async def _write_counter(self) -> None:
        reg = self.machine.registers.parts
        if self._server is not None:
            await self._server.async_setValues(
                self.machine.unit_id, _FUNCTION_CODE[reg.table], reg.address, _words(reg, self._counter)
            )

    def _record(self, event: str, *, ts: int | None = None, **fields: Any) -> int:
        """Write one ground-truth record, stamped now unless `ts` is given; return its timestamp."""
        stamp = self._clock_ns() if ts is None else ts
        assert self._truth is not None, "records are written only while run() is running"
        self._truth.write({"ts": stamp, "machine": self.machine.id, "event": event, **fields})
        return stamp

    def _device(self) -> SimDevice:
        """The module's four tables, holding the current values."""
        regs = self.machine.registers
        tables: dict[Table, list[SimData]] = {table: [] for table in Table}
        for name, on in self._bits.items():
            reg: Register | None = getattr(regs, name)
            if reg is not None:
                tables[reg.table].append(SimData(reg.address, values=on, datatype=DataType.BITS))
        tables[regs.parts.table].append(
            SimData(regs.parts.address, values=_words(regs.parts, self._counter), datatype=DataType.REGISTERS)
        )
        # pymodbus needs at least one block per table. A table the description leaves empty answers
        # "illegal address" for registers; a bit table cannot be marked invalid, so it holds 16 zero bits.
        for table in (Table.COIL, Table.DISCRETE_INPUT):
            tables[table] = tables[table] or [SimData(0, values=False, datatype=DataType.BITS)]
        for table in (Table.HOLDING_REGISTER, Table.INPUT_REGISTER):
            tables[table] = tables[table] or [SimData(0, datatype=DataType.INVALID)]
        return SimDevice(
            id=self.machine.unit_id,
            simdata=(
                tables[Table.COIL],
                tables[Table.DISCRETE_INPUT],
                tables[Table.HOLDING_REGISTER],
                tables[Table.INPUT_REGISTER],
            ),
        )

    async def _start_server(self) -> None:
        server = ModbusTcpServer(self._device(), address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus's way of saying that listen() failed (port busy, bad address)
            raise ServiceError(
                t(
                    "services.port_busy",
                    port=self.port,
                    what=f"Modbus {self.machine.id}",
                    host=self.host,
                    field=f"machines[{self.machine.id}].endpoint.port",
                    config="workshop.yaml",
                )
            ) from exc
        self._server = server

    async def _stop_server(self) -> None:
        # shutdown() closes the listening socket (new connections are refused) and every client connection.
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))

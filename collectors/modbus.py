"""Modbus TCP adapter: read a retrofit I/O module and return a `Sample` for the derivation core.

The register map comes from workshop.yaml (`machines[].registers`), the same description the simulator
serves. One connection per module, one read at a time on it (a lock), reads grouped per table.

pymodbus's own reconnect loop is switched off (`reconnect_delay=0`): its default backs off up to 300 s,
so a module back from a power cut would be read minutes late. The collector's poll loop reconnects
instead, with a short jittered backoff (see collectors/runner.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from collectors.core import Sample
from copeau.config import ModbusMachine, Register, Table, ValueType
from copeau.errors import MachineUnavailable

log = logging.getLogger(__name__)


class ModbusSource:
    """Reads one machine's retrofit module over Modbus TCP."""

    def __init__(
        self, machine: ModbusMachine, *, clock_ns: Callable[[], int] = time.time_ns, timeout_s: float | None = None
    ) -> None:
        self.machine = machine
        self.machine_id = machine.id
        self._clock_ns = clock_ns
        # A read must end well before the next poll is due, but never below what a busy module needs.
        self._timeout_s = timeout_s or max(1.0, 2 * machine.poll_interval_s)
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self.address = f"{machine.endpoint.host}:{machine.endpoint.port}/unit {machine.unit_id}"

    async def read(self) -> Sample:
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout_s):
                    client = await self._connected()
                    ts = self._clock_ns()  # the time of the reading, fixed here at the source
                    values = await self._read_all(client)
            except (TimeoutError, ModbusException, OSError) as exc:
                await self._drop()
                raise MachineUnavailable(
                    str(exc) or type(exc).__name__, machine=self.machine_id, address=self.address
                ) from exc
        return Sample(
            ts=ts,
            available=True,
            cycle_running=bool(values["cycle_running"]),
            alarm=bool(values.get("alarm", False)),
            counter=int(values["parts"]),
        )

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        await self._drop()
        ep = self.machine.endpoint
        client = AsyncModbusTcpClient(
            ep.host, port=ep.port, timeout=self._timeout_s, retries=0, reconnect_delay=0, name=self.machine_id
        )
        if not await client.connect():
            client.close()
            raise MachineUnavailable("connexion refusée", machine=self.machine_id, address=self.address)
        self._client = client
        return client

    async def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _read_all(self, client: AsyncModbusTcpClient) -> dict[str, int | bool]:
        regs = self.machine.registers
        named = {
            name: reg
            for name in ("cycle_running", "spindle_on", "alarm", "parts")
            if (reg := getattr(regs, name)) is not None
        }
        # One request per table, spanning the addresses used in it.
        by_table: dict[Table, list[tuple[str, Register]]] = {}
        for name, reg in named.items():
            by_table.setdefault(reg.table, []).append((name, reg))
        values: dict[str, int | bool] = {}
        for table, entries in by_table.items():
            first = min(reg.address for _, reg in entries)
            last = max(reg.address + (reg.count if reg.type is not ValueType.BOOL else 1) for _, reg in entries)
            raw = await self._read_table(client, table, first, last - first)
            for name, reg in entries:
                offset = reg.address - first
                if reg.type is ValueType.BOOL:
                    values[name] = bool(raw[offset])
                else:
                    words = [int(w) for w in raw[offset : offset + reg.count]]
                    values[name] = _decode(words, reg)
        return values

    async def _read_table(
        self, client: AsyncModbusTcpClient, table: Table, address: int, count: int
    ) -> list[int] | list[bool]:
        unit = self.machine.unit_id
        if table is Table.DISCRETE_INPUT:
            resp = await client.read_discrete_inputs(address, count=count, device_id=unit)
        elif table is Table.COIL:
            resp = await client.read_coils(address, count=count, device_id=unit)
        elif table is Table.HOLDING_REGISTER:
            resp = await client.read_holding_registers(address, count=count, device_id=unit)
        else:
            resp = await client.read_input_registers(address, count=count, device_id=unit)
        if resp.isError():
            # The module answered with a Modbus exception: wrong address or unit in the config, or a busy
            # module. Either way this reading is unusable.
            raise ModbusException(f"{table} {address}+{count}: réponse d'erreur Modbus {resp}")
        return list(resp.bits[:count]) if table in (Table.DISCRETE_INPUT, Table.COIL) else list(resp.registers)


def _decode(words: list[int], reg: Register) -> int:
    """Unsigned value from 16-bit words in the register's word order (pure, tested in isolation)."""
    ordered = words if reg.word_order == "big" else list(reversed(words))
    value = 0
    for w in ordered:
        value = (value << 16) | (w & 0xFFFF)
    return value

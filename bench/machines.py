"""Simulated machines for the collector benchmark, in processes of their own (so that the collector's process is
measured alone), built from the project's simulators (simulators/modbus.py, simulators/opcua.py).

Theory of operation: a `SimulatorFleet` starts `processes` simulator processes and splits the machines between them.
Each process runs its machines on one asyncio loop and answers commands over a pipe: "ready?" (every server is
listening), "reads" (Modbus: when each machine's module was read, from a start time), "stop". Modbus modules are
the project's `ModbusMachineSimulator`, with pymodbus's `trace_pdu` hook noting the arrival of every
read-discrete-inputs request (function code 2: the first of the two requests of each poll) on the monotonic clock,
which every process of the machine shares. That is how the benchmark sees, from the machine's side, whether each
machine was read in each interval. OPC UA machines are `OpcUaWorkshopSimulator` servers (one per process, several
machine tools each); their ground truth (`<state_dir>/truth/<machine>.jsonl`) is read by the benchmark directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymodbus.server import ModbusTcpServer

from copeau.config import ModbusMachine, OpcUaMachine
from simulators.groundtruth import truth_path
from simulators.modbus import ModbusMachineSimulator
from simulators.opcua import OpcUaWorkshopSimulator

_SPAWN = mp.get_context("spawn")
_READ_DISCRETE_INPUTS = 2


class TracedModbusSimulator(ModbusMachineSimulator):
    """The project's Modbus module simulator, noting when each poll arrives (monotonic ns)."""

    def __init__(self, machine: ModbusMachine, *, truth: Path) -> None:
        super().__init__(machine, truth_path=truth)
        self.reads: list[int] = []

    def _trace(self, sending: bool, pdu: Any) -> Any:
        if not sending and pdu.function_code == _READ_DISCRETE_INPUTS:
            self.reads.append(time.monotonic_ns())
        return pdu

    async def _start_server(self) -> None:
        # As the parent's, with the trace hook (pymodbus takes it only in the constructor).
        server = ModbusTcpServer(self._device(), address=(self.host, self.port), trace_pdu=self._trace)
        await server.serve_forever(background=True)
        self._server = server

    @property
    def listening(self) -> bool:
        return self._server is not None


def _quiet() -> None:
    logging.basicConfig(level=logging.ERROR)
    for name in ("pymodbus", "asyncua"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


async def _serve(conn: Any, make: Callable[[], list[Any]], answer: Callable[[Any, tuple[Any, ...]], Any]) -> None:
    sims = make()
    tasks = [asyncio.create_task(s.run()) for s in sims]
    loop = asyncio.get_running_loop()
    try:
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                break
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
            if failed:  # a simulator that could not start (port taken...) would never be "ready"
                conn.send(RuntimeError(f"simulator failed: {failed[0].exception()!r}"))
                continue
            conn.send(answer(sims, command))
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(*tasks, return_exceptions=True)


def _modbus_process(conn: Any, machines: list[dict[str, Any]], state_dir: str) -> None:
    _quiet()

    def make() -> list[TracedModbusSimulator]:
        return [TracedModbusSimulator(m, truth=truth_path(Path(state_dir), m.id))
                for m in (ModbusMachine.model_validate(d) for d in machines)]

    def answer(sims: list[TracedModbusSimulator], command: tuple[Any, ...]) -> Any:
        if command[0] == "ready":
            return all(s.listening for s in sims)
        if command[0] == "reads":
            since = command[1]
            return {s.machine.id: [t for t in s.reads if t >= since] for s in sims}
        raise ValueError(command)

    asyncio.run(_serve(conn, make, answer))


def _opcua_process(conn: Any, machines: list[dict[str, Any]], url: str, state_dir: str) -> None:
    _quiet()

    def make() -> list[OpcUaWorkshopSimulator]:
        return [OpcUaWorkshopSimulator([OpcUaMachine.model_validate(d) for d in machines], url=url,
                                       state_dir=Path(state_dir))]

    def answer(sims: list[OpcUaWorkshopSimulator], command: tuple[Any, ...]) -> Any:
        if command[0] == "ready":
            return all(s.serving.is_set() for s in sims)
        raise ValueError(command)

    asyncio.run(_serve(conn, make, answer))


class SimulatorFleet:
    """Simulator processes, each answering over its pipe."""

    def __init__(self, targets: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
        self._pipes = []
        self._procs = []
        for target, args in targets:
            parent, child = _SPAWN.Pipe()
            self._pipes.append(parent)
            self._procs.append(_SPAWN.Process(target=target, args=(child, *args), daemon=True))

    @classmethod
    def modbus(cls, machines: list[dict[str, Any]], state_dir: Path, processes: int) -> SimulatorFleet:
        groups = [machines[i::processes] for i in range(processes)]
        return cls([(_modbus_process, (g, str(state_dir))) for g in groups if g])

    @classmethod
    def opcua(cls, servers: dict[str, list[dict[str, Any]]], state_dir: Path) -> SimulatorFleet:
        return cls([(_opcua_process, (machines, url, str(state_dir))) for url, machines in servers.items()])

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def __enter__(self) -> SimulatorFleet:
        for p in self._procs:
            p.start()
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(range(len(self._pipes)))
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator processes {pending} not serving after {timeout:.0f} s")
            for i in list(pending):
                if not self._procs[i].is_alive():
                    raise RuntimeError(f"simulator process {i} died (exit code {self._procs[i].exitcode})")
                if self._ask(i, ("ready",)):
                    pending.remove(i)
            time.sleep(0.2)

    def _ask(self, i: int, command: tuple[Any, ...]) -> Any:
        self._pipes[i].send(command)
        answer = self._pipes[i].recv()
        if isinstance(answer, Exception):
            raise RuntimeError(f"simulator process {i}: {answer}")  # noqa: TRY004 - a failure, not a type error
        return answer

    def reads(self, since_ns: int) -> dict[str, list[int]]:
        """Modbus: the arrival times (monotonic ns) of each machine's polls since `since_ns`."""
        out: dict[str, list[int]] = {}
        for i in range(len(self._pipes)):
            out.update(self._ask(i, ("reads", since_ns)))
        return out

    def __exit__(self, *_exc: object) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("stop",))
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()

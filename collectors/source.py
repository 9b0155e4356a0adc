"""What a protocol adapter looks like to the collector (polled or streaming), and the simplest one: a plain
function.

Modbus (collectors/modbus.py), OPC UA (to come) and test fakes all take this shape, so the poll loop,
the core and the outbox never know which protocol they read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from collectors.core import Sample


class MachineSource(Protocol):
    machine_id: str

    async def read(self) -> Sample:
        """Read the machine now. Raises copeau.errors.MachineUnavailable when it cannot be read."""
        ...

    async def close(self) -> None:
        """Release the connection (called once, at shutdown)."""
        ...


@runtime_checkable
class StreamingSource(Protocol):
    """A machine that pushes its changes (OPC UA subscriptions) rather than being polled."""

    machine_id: str

    def samples(self) -> AsyncIterator[Sample]:
        """Samples as the machine changes, each stamped with the machine's own time when it has one. Never
        ends by itself: while the machine cannot be reached it yields one unavailable sample, then reconnects."""
        ...

    async def close(self) -> None: ...


class FunctionSource:
    """A source whose readings come from a plain function (tests, replays). The function may raise
    MachineUnavailable to play an unreachable machine."""

    def __init__(self, machine_id: str, read: Callable[[], Sample]) -> None:
        self.machine_id = machine_id
        self._read = read

    async def read(self) -> Sample:
        return self._read()

    async def close(self) -> None:
        return None

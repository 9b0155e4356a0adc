"""Every simulated machine of a workshop, run and stopped as one: Modbus retrofit modules (one server each) and
OPC UA servers (one per url, several machine tools each). Used by `copeau demo` and `copeau simulate`."""

from __future__ import annotations

import asyncio

from copeau.config import ModbusMachine, OpcUaMachine, Workshop
from simulators.groundtruth import truth_path
from simulators.modbus import ModbusMachineSimulator
from simulators.opcua import OpcUaWorkshopSimulator, security_for


class SimulatedWorkshop:
    """The machines of `workshop` that have a `simulation:` block."""

    def __init__(self, workshop: Workshop) -> None:
        state_dir = workshop.state_dir
        self.modbus = [
            ModbusMachineSimulator(m, truth_path=truth_path(state_dir, m.id))
            for m in workshop.machines
            if isinstance(m, ModbusMachine) and m.simulation is not None
        ]
        by_url: dict[str, list[OpcUaMachine]] = {}
        for m in workshop.machines:
            if isinstance(m, OpcUaMachine) and m.simulation is not None:
                by_url.setdefault(m.url, []).append(m)
        self.opcua = [
            OpcUaWorkshopSimulator(members, url=url, state_dir=state_dir, **security_for(members, state_dir, url))
            for url, members in by_url.items()
        ]
        self.machine_ids = [s.machine.id for s in self.modbus] + [m for s in self.opcua for m in s.machines]

    async def prepare(self) -> None:
        """Build the OPC UA address spaces (2–3 s each, blocking the event loop) before anything else runs."""
        for server in self.opcua:
            await server.prepare()

    async def run(self) -> None:
        """Serve and play every scenario until cancelled."""
        await self.prepare()
        async with asyncio.TaskGroup() as group:
            for sim in self.modbus:
                group.create_task(sim.run(), name=f"simulate:{sim.machine.id}")
            for server in self.opcua:
                group.create_task(server.run(), name=f"simulate:{server.url}")

    def _all(self) -> list[ModbusMachineSimulator | OpcUaWorkshopSimulator]:
        return [*self.modbus, *self.opcua]

    def stop_production(self) -> None:
        """No more parts: cycles in progress complete, then every machine idles (and keeps serving)."""
        for sim in self._all():
            sim.stop_production()

    @property
    def finished(self) -> bool:
        return all(sim.finished.is_set() for sim in self._all())

    def counter(self, machine_id: str) -> int:
        """The machine's part counter as a collector reads it."""
        for sim in self.modbus:
            if sim.machine.id == machine_id:
                return sim.counter
        for server in self.opcua:
            if machine_id in server.machines:
                return server.machines[machine_id].counter
        raise KeyError(machine_id)

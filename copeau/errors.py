"""Copeau's small error tree. Errors carry data, chain their cause (`raise ... from exc`), and tell our fault
(a bug, a bad configuration) apart from the machine's or the network's (a module that does not answer).
"""

from __future__ import annotations


class CopeauError(Exception):
    """Base of every error Copeau raises on purpose."""


class ServiceError(CopeauError):
    """A managed service (mosquitto, influxd) cannot be started or reached. The message is for a person."""


class MachineError(CopeauError):
    """The machine (or the network to it) failed: not our bug. Retried by the collector."""

    def __init__(self, message: str, *, machine: str, address: str) -> None:
        super().__init__(f"{machine} ({address}): {message}")
        self.machine = machine
        self.address = address


class MachineUnavailable(MachineError):
    """The machine did not answer: connection refused, timeout, or a Modbus exception response."""


class StoreError(CopeauError):
    """InfluxDB refused or failed a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

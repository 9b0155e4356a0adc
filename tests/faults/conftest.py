"""Fixtures of the fault-injection suite (see docs/reliability.md): fault proxies, and the long variants kept out
of `make test` unless asked for with `-m faults_long`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from simulators.faultproxy import FaultProxy


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # A fault scenario runs an event loop, threads and servers. pytest-timeout's default (a signal) raises in
        # whatever the main thread runs, and an asyncio callback swallows it (seen once: a run that stalled under
        # memory pressure hung past its timeout). The thread method dumps every stack and ends the run instead.
        if item.get_closest_marker("faults") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(300, method="thread"))
    # The long variants carry the `integration` marker too (they need the same servers), so `make test` would
    # select them: they run only when the marker expression names them.
    if "faults_long" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long fault variant: run with -m faults_long")
    for item in items:
        if item.get_closest_marker("faults_long") is not None:
            item.add_marker(skip)


@pytest.fixture
def proxies() -> Iterator[Callable[..., FaultProxy]]:
    """Start fault proxies to targets on loopback; every proxy started is stopped at the end."""
    started: list[FaultProxy] = []

    def start(port: int, *, name: str) -> FaultProxy:
        proxy = FaultProxy(("127.0.0.1", port), name=name).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()

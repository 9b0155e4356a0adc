"""The gateway's flow control between paho's network thread and its writer (gateway/service.py `_may_read`,
`_took`): when the network thread holds back for want of room, the writer's next take must wake it, whatever the
interleaving. A missed wake-up leaves the messages already read waiting for paho's next select() timeout (1 s)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.service import Gateway
from tests.conftest import make_workshop, modbus_machine


class _Inbox:
    """A stand-in for the gateway's inbox, full at first; the writer's take (`take_at_look`) runs right after the
    network thread's n-th look at its size and empties it, as a real take of the whole inbox would."""

    def __init__(self, size: int, take_at_look: int | None = None, take: Any = None) -> None:
        self.size = size
        self.take_at_look = take_at_look
        self.take = take
        self.looks = 0

    def qsize(self) -> int:
        self.looks += 1
        seen = self.size
        if self.looks == self.take_at_look:
            self.size = 0
            self.take()
        return seen


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    workshop = make_workshop(tmp_path, mqtt_port=1, machines=[modbus_machine("tour-1", 1)],
                             gateway={"max_batch_lines": 5})
    gw = Gateway(workshop)
    gw._room.wait = lambda _timeout=None: False  # type: ignore[method-assign]  # no real waiting in a unit test
    yield gw
    gw._client._reset_sockets()  # paho's wake-up socket pair, made when the client is built (never started here)
    gw.writer.close()
    gw.dead_letters.close()


def _count_wakes(gw: Gateway) -> list[int]:
    wakes: list[int] = []
    gw._client.wake = lambda: wakes.append(1)  # type: ignore[method-assign]
    return wakes


@pytest.mark.parametrize("take_at_look", [1, 2, 3])
def test_a_take_at_any_point_of_a_hold_back_wakes_the_network_thread(gateway: Gateway, take_at_look: int) -> None:
    """The writer takes a batch right after the network thread's n-th look at a full inbox (limit 10). If the
    network thread then answers False (it will not read), the writer must have woken it."""
    wakes = _count_wakes(gateway)
    gateway._inbox = _Inbox(gateway._inbox_limit, take_at_look, gateway._took)  # type: ignore[assignment]
    may_read = gateway._may_read()
    assert gateway._inbox.looks >= take_at_look, "the take happened"  # type: ignore[attr-defined]
    if not may_read:
        assert wakes, f"held back after a take at look {take_at_look}, and nobody woke paho's loop"
    else:
        assert not gateway._held_back


def test_no_room_and_no_take_holds_back_until_the_writer_takes(gateway: Gateway) -> None:
    wakes = _count_wakes(gateway)
    gateway._inbox = _Inbox(gateway._inbox_limit)  # type: ignore[assignment]
    assert gateway._may_read() is False
    assert gateway._held_back and not wakes
    gateway._took()
    assert wakes == [1] and not gateway._held_back
    gateway._took()  # a take with nobody held back wakes nobody
    assert wakes == [1]


def test_room_reads_at_once(gateway: Gateway) -> None:
    wakes = _count_wakes(gateway)
    gateway._inbox = queue.SimpleQueue()
    assert gateway._may_read() is True
    assert not gateway._held_back and not wakes

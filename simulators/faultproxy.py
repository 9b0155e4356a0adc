"""A TCP fault proxy for the fault-injection suite: sits between a client and a server on loopback and breaks
the link on demand, from a synchronous test.

Theory of operation:

- The proxy listens on a loopback port and, for each connection it accepts, opens one to the target and pumps
  bytes both ways. It runs its own asyncio event loop in its own thread, so that a plain (synchronous) test, or
  an asyncio test with its own loop, can switch faults at any moment: every public method is thread-safe and
  returns once the fault is in force.
- Faults (`delay` stays in force until `heal()`; the others replace one another; `heal()` ends them all):

  - `delay(ms)`: every chunk of bytes is held `ms` milliseconds before it is passed on, in both directions.
    Latency, not a bandwidth cap: chunks are time-stamped when read and queued, so a stream keeps its rate.
  - `blackhole()`: connections stay open, and new ones are accepted, but nothing is passed on either way (the
    target is not even dialled for a new connection). Held bytes are delivered in order on `heal()`, as TCP
    would after a short partition; a client with a keepalive gives up by itself first.
  - `reset()`: every open connection is reset (RST, through SO_LINGER 0), and so is every new one until healed.
  - `refuse()`: the listening socket is closed (a connection attempt gets ECONNREFUSED, as from a stopped
    service) and open connections are reset; `heal()` listens again on the same port.
  - `flap(period_s, down_s=..., down="reset")`: the link alternates, starting down: `down_s` seconds in the
    `down` fault (`reset`, `blackhole` or `refuse`), then `period_s - down_s` seconds up.

- Counters (`stats`) prove what happened: connections accepted, connected through to the target, reset by the
  proxy, bytes each way, down phases of a flap. A reconnect storm shows as many connections per down phase.

It is test equipment: no TLS, no access control, loopback only by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

log = logging.getLogger(__name__)

DownMode = Literal["reset", "blackhole", "refuse"]
_T = TypeVar("_T")
_CHUNK = 65536
_QUEUE_CHUNKS = 256  # chunks held per direction before the proxy stops reading (back-pressure)
_EOF = b""


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the proxy's counters since it started."""

    accepted: int = 0  # TCP connections accepted from clients
    forwarded: int = 0  # of which connected through to the target
    reset: int = 0  # connections the proxy reset (open ones by reset/refuse/flap, and new ones while resetting)
    target_failures: int = 0  # connections to the target that failed (target down): the client's is closed
    bytes_up: int = 0  # client → target, bytes passed on
    bytes_down: int = 0  # target → client, bytes passed on
    active: int = 0  # client connections open now
    flaps: int = 0  # down phases started by flap()


@dataclass(eq=False)  # compared and hashed by identity: kept in a set
class _Conn:
    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


class FaultProxy:
    """A TCP proxy to `target` with faults switchable at run time. `start()` (or `with`), then `stop()`."""

    def __init__(
        self, target: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0, name: str = "proxy"
    ) -> None:
        self.target = target
        self.host = host
        self.port = port  # the real port once started, when 0 was asked for
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[Any]] = set()  # one per accepted connection (asyncio's own tasks)
        self._flapper: asyncio.Task[None] | None = None
        # The fault in force (touched in the proxy's thread only).
        self._delay_s = 0.0
        self._open = asyncio.Event()  # set while bytes may pass (created in the loop by start())
        self._resetting = False
        # Counters: written in the proxy's thread, read from any thread (ints: each read is atomic).
        self._accepted = 0
        self._forwarded = 0
        self._reset = 0
        self._target_failures = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._flaps = 0

    # -- lifecycle (any thread)

    def start(self) -> Self:
        """Start the proxy's thread and listen; returns once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"faultproxy-{self.name}", daemon=True)
        self._thread.start()
        self._call(self._init())
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, and end the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop was already stopped
            self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def stats(self) -> ProxyStats:
        return ProxyStats(
            accepted=self._accepted,
            forwarded=self._forwarded,
            reset=self._reset,
            target_failures=self._target_failures,
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
            active=len(self._conns),
            flaps=self._flaps,
        )

    # -- faults (any thread; each returns once in force)

    def heal(self) -> None:
        """End every fault: listen, pass bytes at once, deliver what a blackhole held."""
        self._call(self._heal())

    def delay(self, ms: float) -> None:
        """Hold every chunk `ms` milliseconds before passing it on, both ways (until healed)."""
        if ms < 0:
            raise ValueError("delay must be >= 0 ms")
        self._call(self._set_delay(ms / 1000))

    def blackhole(self) -> None:
        """Keep connections open and accept new ones, but pass nothing on, either way."""
        self._call(self._down("blackhole"))

    def reset(self) -> None:
        """Reset every open connection (RST), and every new one until healed."""
        self._call(self._down("reset"))

    def refuse(self) -> None:
        """Stop listening (connection refused) and reset every open connection, until healed."""
        self._call(self._down("refuse"))

    def flap(self, period_s: float, *, down_s: float | None = None, down: DownMode = "reset") -> None:
        """Alternate down (`down_s`, half the period by default, in the `down` fault) and up, starting down."""
        down_s = period_s / 2 if down_s is None else down_s
        if not 0 < down_s < period_s:
            raise ValueError("flap: need 0 < down_s < period_s")
        self._call(self._start_flap(period_s, down_s, down))

    # -- inside the proxy's loop

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.name}: not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _init(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
            self.port = int(self._server.sockets[0].getsockname()[1])

    def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # not wait_closed(): from 3.12 it also waits for every connection to end

    async def _shutdown(self) -> None:
        await self._stop_flap()
        self._unlisten()
        self._open.set()  # a connection held by a blackhole sees that it is closed
        for conn in list(self._conns):
            self._close(conn, rst=True, count=False)
        # The pumps are cancelled; each connection's handler then ends by itself. Cancelling a handler instead
        # would make asyncio's stream machinery log the CancelledError as an error.
        handlers = set(self._handlers)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t not in handlers]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*handlers, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_default_executor()

    async def _heal(self) -> None:
        await self._stop_flap()
        self._delay_s = 0.0
        await self._up()

    async def _set_delay(self, delay_s: float) -> None:
        self._delay_s = delay_s

    async def _up(self) -> None:
        self._resetting = False
        await self._listen()
        self._open.set()

    async def _down(self, mode: DownMode, *, from_flap: bool = False) -> None:
        if not from_flap:
            await self._stop_flap()
        if mode == "blackhole":
            self._open.clear()
            return
        self._resetting = True
        if mode == "refuse":
            self._unlisten()
        for conn in list(self._conns):
            self._close(conn, rst=True)
        self._open.set()  # after a blackhole: its held connections are reset now, nothing is left to hold

    async def _start_flap(self, period_s: float, down_s: float, down: DownMode) -> None:
        await self._stop_flap()
        self._flapper = asyncio.get_running_loop().create_task(self._flap(period_s, down_s, down))

    async def _stop_flap(self) -> None:
        flapper, self._flapper = self._flapper, None
        if flapper is not None and flapper is not asyncio.current_task():
            flapper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flapper

    async def _flap(self, period_s: float, down_s: float, down: DownMode) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:  # absolute deadlines: the phases do not drift
            self._flaps += 1
            await self._down(down, from_flap=True)
            await asyncio.sleep(max(0.0, start + down_s - loop.time()))
            await self._up()
            start += period_s
            await asyncio.sleep(max(0.0, start - loop.time()))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        conn = _Conn(client=writer)
        self._conns.add(conn)
        if self._resetting:
            self._close(conn, rst=True)
            return
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._open.wait()  # a blackhole does not even dial the target
            if conn.closed:
                return
            try:
                target_reader, target_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:
                self._target_failures += 1
                log.debug("%s: target %s:%s unreachable (%s)", self.name, *self.target, exc)
                self._close(conn, rst=True, count=False)
                return
            if conn.closed:  # reset while dialling
                target_writer.transport.abort()
                return
            conn.target = target_writer
            self._forwarded += 1
            loop = asyncio.get_running_loop()
            conn.tasks = [
                loop.create_task(self._pump(conn, reader, target_writer, up=True)),
                loop.create_task(self._pump(conn, target_reader, writer, up=False)),
            ]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            self._close(conn, rst=False, count=False)
            self._handlers.discard(handler)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """One direction: a reader task queues time-stamped chunks; this task passes them on when due."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            try:
                while True:
                    data = await reader.read(_CHUNK)
                    await queue.put((loop.time() + self._delay_s, data))
                    if not data:
                        return
            except OSError:  # reset by the peer: pass the reset on
                await queue.put((loop.time(), _EOF))
                self._close(conn, rst=True, count=False)

        reading = loop.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self._open.wait()
                if conn.closed:
                    return
                if data is _EOF or not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                if up:
                    self._bytes_up += len(data)
                else:
                    self._bytes_down += len(data)
                await writer.drain()
        except OSError:
            self._close(conn, rst=True, count=False)
        finally:
            reading.cancel()

    def _close(self, conn: _Conn, *, rst: bool, count: bool = True) -> None:
        """Close both sides of a connection; with `rst`, the client's side is reset (SO_LINGER 0)."""
        if conn.closed:
            self._conns.discard(conn)
            return
        conn.closed = True
        self._conns.discard(conn)
        if rst and count:
            self._reset += 1
        for side in (conn.client, conn.target):
            if side is None:
                continue
            if rst:
                _abort_with_rst(side)
            else:
                side.close()
        for task in conn.tasks:
            if task is not asyncio.current_task():
                task.cancel()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def wait_for_stats(proxy: FaultProxy, predicate: Any, *, timeout: float = 10.0) -> ProxyStats:
    """Poll the proxy's counters until `predicate(stats)` holds; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        stats = proxy.stats
        if predicate(stats):
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proxy.name}: condition not met after {timeout} s (stats: {stats})")
        time.sleep(0.01)

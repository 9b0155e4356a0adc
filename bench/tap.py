"""A transparent HTTP tap between the gateway and InfluxDB: notes when InfluxDB acknowledged each write.

Why: InfluxDB 1.x answers 204 to `POST /write` once the points are in its WAL and its in-memory cache, which
queries read, so a point is queryable from the moment that 204 is sent. Timing the 204 where it passes costs
InfluxDB nothing, whereas a query loop fast enough for a millisecond resolution keeps influxd busy (and so slows
the very writes being timed). The tap forwards bytes both ways on one upstream connection per gateway connection
(keep-alive), and only reads the HTTP framing (Content-Length or chunked); for each 2xx answer to a `/write` it
keeps (monotonic ns when the answer arrived from InfluxDB, request body) for the caller to look into afterwards.
It adds one loopback hop (well under a millisecond) to every write, which the latencies include.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from copeau.services import free_port


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message: (head, body). None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            body += size_line + chunk
            if size == 0:
                return head, body
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length) if length else b""


class WriteTap:
    """`with WriteTap(influx_port) as tap:` point the gateway at `tap.port`; read `tap.writes` afterwards."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.writes: list[tuple[int, bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="write-tap", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> WriteTap:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", self.port), self._loop
        ).result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            while True:
                request = await _read_message(reader)
                if request is None:
                    return
                head, body = request
                up_writer.write(head + body)
                await up_writer.drain()
                response = await _read_message(up_reader)
                if response is None:
                    return
                answered = time.monotonic_ns()
                if head.startswith(b"POST /write") and response[0][9:10] == b"2":
                    self.writes.append((answered, body))
                writer.write(response[0] + response[1])
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(OSError):
                    w.close()

"""The fault proxy against a real echo server on loopback: it forwards, delays, holds, resets, refuses and flaps,
and its counters say so. Fast: each test takes well under a second."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from simulators.faultproxy import FaultProxy, wait_for_stats


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server.server_address[0], int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(echo, name="test") as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def exchange(proxy: FaultProxy, data: bytes = b"x") -> bytes:
    """Connect, send `data`, read it back (a reset may come at any step, even before connect() returns)."""
    with connect(proxy) as sock:
        sock.sendall(data)
        return recv_exactly(sock, len(data))


def test_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 1000  # 256 kB: several chunks each way
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join()
    stats = wait_for_stats(proxy, lambda s: s.active == 0)
    assert (stats.accepted, stats.forwarded, stats.reset) == (1, 1, 0)
    assert stats.bytes_up == stats.bytes_down == len(payload)


def test_delay_adds_latency_each_way(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"x")
        recv_exactly(sock, 1)  # connected through
        proxy.delay(100)
        start = time.monotonic()
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        elapsed = time.monotonic() - start
        assert 0.2 <= elapsed < 1.0, elapsed  # 100 ms up, 100 ms down
        # Latency, not a bandwidth cap: 20 messages sent at once arrive after about one round trip, not twenty.
        start = time.monotonic()
        for i in range(20):
            sock.sendall(b"%02d" % i)
            time.sleep(0.005)
        assert recv_exactly(sock, 40) == b"".join(b"%02d" % i for i in range(20))
        assert time.monotonic() - start < 1.0
        proxy.heal()
        start = time.monotonic()
        sock.sendall(b"fast")
        assert recv_exactly(sock, 4) == b"fast"
        assert time.monotonic() - start < 0.1


def test_blackhole_holds_bytes_and_connections_then_delivers_in_order(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"a")
        recv_exactly(sock, 1)
        proxy.blackhole()
        sock.sendall(b"held")
        with connect(proxy, timeout=0.3) as second:  # a new connection is accepted too, and held
            second.sendall(b"second")
            with pytest.raises(TimeoutError):
                second.recv(16)
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(16)
            stats = proxy.stats
            assert (stats.accepted, stats.forwarded, stats.active) == (2, 1, 2)  # the target was not dialled
            proxy.heal()
            sock.settimeout(2)
            second.settimeout(2)
            assert recv_exactly(sock, 4) == b"held"
            assert recv_exactly(second, 6) == b"second"
    assert proxy.stats.forwarded == 2


def test_reset_resets_open_and_new_connections_until_healed(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"a")
        recv_exactly(sock, 1)
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.recv(16)
    # The kernel completes the handshake, then the proxy resets the connection (which may beat connect()).
    with pytest.raises(ConnectionResetError):
        exchange(proxy)
    stats = wait_for_stats(proxy, lambda s: s.reset == 2)
    assert (stats.accepted, stats.forwarded) == (2, 1)
    proxy.heal()
    with connect(proxy) as sock:
        sock.sendall(b"back")
        assert recv_exactly(sock, 4) == b"back"


def test_refuse_closes_the_port_and_heal_listens_again_on_it(proxy: FaultProxy) -> None:
    port = proxy.port
    with connect(proxy) as sock:
        sock.sendall(b"a")
        recv_exactly(sock, 1)
        proxy.refuse()
        with pytest.raises(ConnectionResetError):
            sock.recv(16)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.heal()
    assert proxy.port == port
    with connect(proxy) as sock:
        sock.sendall(b"back")
        assert recv_exactly(sock, 4) == b"back"
    assert proxy.stats.accepted == 2  # the refused attempt never reached the proxy


def test_flap_alternates_down_and_up(proxy: FaultProxy) -> None:
    proxy.flap(0.2, down_s=0.1)
    deadline = time.monotonic() + 0.65
    reset = ok = 0
    while time.monotonic() < deadline:
        try:
            with connect(proxy, timeout=0.5) as sock:
                sock.sendall(b"p")
                recv_exactly(sock, 1)
                ok += 1
        except (ConnectionResetError, ConnectionError):
            reset += 1
        time.sleep(0.02)
    proxy.heal()
    flaps = proxy.stats.flaps
    assert 3 <= flaps <= 5, flaps
    assert ok > 0 and reset > 0, (ok, reset)
    with connect(proxy) as sock:  # healed: stays up
        time.sleep(0.25)
        sock.sendall(b"q")
        assert recv_exactly(sock, 1) == b"q"
    assert proxy.stats.flaps == flaps


def test_target_down_closes_the_client_and_is_counted(echo: tuple[str, int]) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        nowhere = placeholder.getsockname()  # bound, not listening: connections are refused
        with FaultProxy(nowhere, name="nowhere") as proxy:
            with pytest.raises(ConnectionResetError):
                exchange(proxy)
            stats = wait_for_stats(proxy, lambda s: s.target_failures == 1)
            assert (stats.accepted, stats.forwarded, stats.reset) == (1, 0, 0)


def test_stop_closes_everything_and_is_idempotent(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(echo, name="stop").start()
    sock = connect(proxy)
    sock.sendall(b"a")
    recv_exactly(sock, 1)
    proxy.blackhole()
    proxy.stop()
    with pytest.raises(ConnectionResetError):
        sock.recv(16)
    sock.close()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1)
    with pytest.raises(RuntimeError):
        proxy.heal()

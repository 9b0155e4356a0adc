"""A service that does not finish stopping after SIGTERM prints every thread's stack and exits non-zero, instead of
hanging until a service manager kills it without a word (copeau/cli.py `_serve_until_signal`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

SERVICE = """
import asyncio, sys
from copeau import cli
cli.STOP_WATCHDOG_S = float(sys.argv[1])

async def body(stop):
    await stop.wait()
    print("stopping", flush=True)
    if sys.argv[2] == "stuck":
        await asyncio.sleep(3600)  # a stop that never ends

cli._serve_until_signal(body)
print("stopped", flush=True)
"""


def run_and_stop(mode: str) -> tuple[int, str, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVICE, "0.5", mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # The child imports Copeau first: wait until its SIGTERM handler is installed (poll with a deadline).
        deadline = time.monotonic() + 30
        while not _ready(proc):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the service never installed its SIGTERM handler"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def _ready(proc: subprocess.Popen[str]) -> bool:
    """Whether the child has installed its signal handlers (SigCgt has SIGTERM's bit)."""
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_a_service_that_stops_exits_0() -> None:
    code, out, _err = run_and_stop("clean")
    assert (code, out.split()) == (0, ["stopping", "stopped"])


def test_a_stuck_stop_dumps_the_stacks_and_exits_non_zero() -> None:
    code, out, err = run_and_stop("stuck")
    assert code == 1
    assert out.split() == ["stopping"]
    assert "Timeout" in err and "Thread" in err  # faulthandler's dump of every thread

"""Where the gateway's time goes at saturation: py-spy attached to the `copeau gateway` process.

Theory of operation: a warmed-up gateway gets `volume` messages as fast as the publishers can send them, while
`py-spy record --pid` samples every thread (100 Hz, non-blocking, idle samples left out) for the whole run. The
collapsed stacks (`--format raw`, which speedscope.app and flamegraph.pl both open) are kept in bench/results/ and
summarised here: per thread, the share of samples (a thread with 100 % was busy the whole time), and the functions
with the most samples in them (inclusive) and on top (self).

py-spy needs ptrace rights over the gateway (root, or the same user with kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.gateway import GatewayUnderTest, ThroughputSettings, _jobs, _wait_end
from bench.publisher import PublisherGroup
from bench.stack import Stack

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def pyspy() -> str | None:
    return shutil.which("py-spy") or (str(Path(sys.executable).parent / "py-spy")
                                      if (Path(sys.executable).parent / "py-spy").exists() else None)


def summarize_collapsed(text: str, *, top: int = 15) -> dict[str, Any]:
    """Per thread sample counts, and the top functions inclusive and self, from py-spy's collapsed stacks.

    A line is `frame;frame;...;frame count`; with `--threads` the first frame is `thread (0x...)` or the thread
    name, and each frame reads `function (file:line)`.
    """
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = frames[0]
        threads[_thread_name(thread)] += count
        seen = set()
        names = [_short(f) for f in frames[1:]]
        for name in names:
            if name not in seen:
                inclusive[name] += count
                seen.add(name)
        if names:
            own[names[-1]] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "threads": {k: round(100 * v / total, 1) for k, v in threads.most_common()},
        "inclusive_pct": {k: round(100 * v / total, 1) for k, v in inclusive.most_common(top)},
        "self_pct": {k: round(100 * v / total, 1) for k, v in own.most_common(top)},
    }


def _thread_name(frame: str) -> str:
    # "process 123:"python -m copeau..."" first when --idle is off? py-spy gives e.g. `thread (0x7f..)` or a name.
    return re.sub(r"0x[0-9a-f]+", "…", frame)


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def profile_gateway(stack: Stack, out_dir: Path, *, volume: int, rate_hz: int = 100,
                    log: Any = print) -> dict[str, Any]:
    """Record the gateway under saturation; write the collapsed stacks to `out_dir`; return the summary."""
    spy = pyspy()
    if spy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    settings = ThroughputSettings(volume=volume)
    out_dir.mkdir(parents=True, exist_ok=True)
    collapsed = out_dir / "gateway-profile.txt"
    with GatewayUnderTest(stack, "profile") as gw:
        jobs = _jobs(stack, "prof", settings, count=volume)
        prefixes = [j.prefix for j in jobs]
        with PublisherGroup(jobs) as group:
            recorder = subprocess.Popen(
                [spy, "record", "--pid", str(gw.pid), "--rate", str(rate_hz), "--nonblocking", "--threads",
                 "--format", "raw", "--output", str(collapsed)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            time.sleep(0.5)  # py-spy attaches (reads the interpreter's memory layout) before the load begins
            started = group.go()
            done = _wait_end(gw, prefixes, timeout=60 + volume / 1000)
            group.results()
            recorder.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            _, err = recorder.communicate(timeout=60)
    if not collapsed.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
    summary = summarize_collapsed(collapsed.read_text())
    summary["rate_msg_s"] = round(sum(j.count + 1 for j in jobs) / ((done - started) / 1e9))
    summary["file"] = str(collapsed.relative_to(out_dir.parent.parent)) if out_dir.is_relative_to(
        out_dir.parent.parent) else str(collapsed)
    log(f"    profiled at {summary['rate_msg_s']:,} msg/s ({summary.get('samples', 0)} samples) → {collapsed}")
    return summary

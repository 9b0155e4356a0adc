"""The dead-letter file: every message the gateway will not store, with the reason, one JSON object a line.

A message is acknowledged to the broker only after its dead letter is on disk (flushed and fsynced), so a
rejected message is either in this file or still at the broker; never nowhere. Each line reads::

    {"at": "2025-03-04T10:15:02.123+00:00", "topic": "copeau/v1/...", "reason": "...", "payload": "..."}

`payload` is the message as UTF-8 text, or `base64:<data>` when it is not valid UTF-8 (or when the text itself
starts with `base64:`, so that the two cannot be confused). A redelivered message (after a lost connection or
a stop in the middle of a batch) may be written twice: dead letters are at-least-once, like the rest.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

_BASE64_PREFIX = "base64:"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DeadLetters:
    """Append-only JSON-lines file of rejected messages. Thread-safe; `add()` returns once the line is durable."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._count = 0

    @property
    def count(self) -> int:
        """Dead letters written by this instance (not the lines already in the file)."""
        with self._lock:
            return self._count

    def add(self, *, topic: str, payload: bytes, reason: str) -> None:
        """Append one dead letter and fsync it. Raises OSError when the file cannot be written."""
        record = {
            "at": self._clock().isoformat(timespec="milliseconds"),
            "topic": topic,
            "reason": reason,
            "payload": payload_text(payload),
        }
        # ensure_ascii=False keeps French text readable; a lone surrogate (from a reason or a topic built from
        # bad bytes) becomes the JSON escape \udcxx through backslashreplace, so the line stays valid JSON.
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
        with self._lock:
            file = self._open()
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
            self._count += 1

    def close(self) -> None:
        """Close the file (a later `add()` opens it again)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._file = self.path.open("ab")
            if created:
                # The new file's directory entry must survive a power cut too, not only its content.
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return self._file


def payload_text(payload: bytes) -> str:
    """The payload as text for a dead letter: UTF-8 as is, anything else as `base64:<data>`."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return _BASE64_PREFIX + base64.b64encode(payload).decode("ascii")
    if text.startswith(_BASE64_PREFIX):
        return _BASE64_PREFIX + base64.b64encode(payload).decode("ascii")
    return text


def payload_bytes(text: str) -> bytes:
    """Inverse of `payload_text`: the original payload bytes of a dead letter (to replay it)."""
    if text.startswith(_BASE64_PREFIX):
        return base64.b64decode(text.removeprefix(_BASE64_PREFIX), validate=True)
    return text.encode("utf-8")

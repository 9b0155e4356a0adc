"""Pseudonymous apprentice codes: the only identity of an apprentice that leaves the relational store (MQTT job
contexts, InfluxDB tags, dashboards). Apprentices are minors: the code is drawn at random, never derived from
the name, the badge or the row id, so that nobody can work back from a code to a person without this database.

Form: `AP-` and five characters from an alphabet without look-alikes (no 0/O, 1/I/L), e.g. `AP-7KQ3X`:
31⁵ ≈ 28 million codes, easy to read aloud, and matching `copeau.contract.APPRENTICE_CODE_PATTERN`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Container

from copeau.contract import APPRENTICE_CODE_PATTERN

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
PREFIX = "AP-"
LENGTH = 5
_CODE = re.compile(APPRENTICE_CODE_PATTERN)


def new_code(taken: Container[str] = (), *, choice: Callable[[str], str] = secrets.choice, attempts: int = 100) -> str:
    """A fresh code not in `taken`. `choice` picks one character (tests pass a seeded one)."""
    for _ in range(attempts):
        code = PREFIX + "".join(choice(ALPHABET) for _ in range(LENGTH))
        if code not in taken:
            return code
    raise RuntimeError(f"no free apprentice code after {attempts} draws: is `taken` nearly full?")


def is_code(text: str) -> bool:
    """Whether `text` is a valid apprentice code for the event contract."""
    return bool(_CODE.match(text))

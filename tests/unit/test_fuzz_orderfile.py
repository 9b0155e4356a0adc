"""Fuzz of the order-file reader (Hypothesis), the biggest parser behind the API (`POST /api/commandes/import`):
whatever a school uploads, `read_order_file` returns the orders and the problems, or raises ImportRejected.
Never another exception, which the API would answer with a 500.

Theory of operation: any bytes; text made of the characters CSV gives a meaning to (separators, quotes, the three
kinds of line ends); and a valid file with a few characters deleted, inserted or replaced. The API fuzz found a
lone carriage return (old Mac exports) raising csv.Error; the last test keeps that case.

Deterministic by default (`derandomize`); `COPEAU_FUZZ_RANDOM=1` draws new examples on each run,
`COPEAU_FUZZ_EXAMPLES=N` draws more.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from orders.errors import ImportRejected
from orders.orderfile import read_order_file

_RANDOM = os.environ.get("COPEAU_FUZZ_RANDOM") == "1"
FUZZ = settings(max_examples=int(os.environ.get("COPEAU_FUZZ_EXAMPLES", "200")), deadline=None,
                derandomize=not _RANDOM, database=None)

HEADER = "commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)"
GOOD = (f"{HEADER}\r\n"
        "CMD-2026-017;Mécanique Durand;BRIDE-45;20;2026-12-18;10;fraiseuse;42,5;900\r\n"
        "CMD-2026-017;Mécanique Durand;BRIDE-45;20;2026-12-18;20;tour;30;600\r\n")
_CSV_CHARS = st.sampled_from(list(';,\t"\r\n \x00\ufeff0123456789-/.,éaz'))
_CSV_PIECES = st.lists(_CSV_CHARS | st.sampled_from(["fraiseuse", "tour", "2026-12-18", "CMD-2026-017"]),
                       max_size=40).map("".join)


def assert_reads_or_refuses(data: bytes | str) -> None:
    try:
        read = read_order_file(data)
    except ImportRejected as exc:
        problems = exc.errors
        assert problems, "a refusal lists its problems"
    else:
        problems = read.problems
        for order in read.orders:
            assert order.operations, order
    for problem in problems:
        assert problem.line >= 1, problem
        assert problem.message("fr") and problem.message("en")  # what the API answers, in both languages


@FUZZ
@given(data=st.binary(max_size=400))
def test_any_bytes_read_or_are_refused(data: bytes) -> None:
    assert_reads_or_refuses(data)


@FUZZ
@given(text=_CSV_PIECES)
def test_csv_punctuation_reads_or_is_refused(text: str) -> None:
    assert_reads_or_refuses(f"{HEADER}\n{text}")
    assert_reads_or_refuses(text)


@st.composite
def damaged(draw: st.DrawFn) -> str:
    text = GOOD
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(_CSV_CHARS, max_size=2)) + text[at + draw(st.integers(0, 3)):]
    return text


@FUZZ
@given(text=damaged(), encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]))
def test_a_damaged_file_reads_or_is_refused(text: str, encoding: str) -> None:
    assert_reads_or_refuses(text.encode(encoding, errors="replace"))


def test_a_file_with_old_mac_line_ends_is_read() -> None:
    read = read_order_file(GOOD.replace("\r\n", "\r").encode())
    assert read.problems == []
    assert [(o.reference, [op.sequence for op in o.operations]) for o in read.orders] == [("CMD-2026-017", [10, 20])]

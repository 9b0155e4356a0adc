"""The gateway's fast decode path (`copeau.contract.decode_event_fields`, `gateway.lineprotocol.event_fields_line`,
`gateway.service._encode_fields`) against the reference path through the contract's models (`decode_event`,
`event_line`, `gateway.service._encode`): on fuzzed payloads, both accept the same messages, give the same values
and the same line byte for byte, and refuse the same ones with the same reason.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.workload import stream
from copeau.contract import ContractError, Event, _fast_fields, decode_event, decode_event_fields
from gateway.lineprotocol import LineProtocolError
from gateway.service import _Delivery, _encode, _encode_fields
from tests.unit.test_fuzz_contract import FUZZ, events, json_values, mutated, topics


def _outcome(encode: Any, topic: str, payload: bytes) -> tuple[str, str]:
    delivery = _Delivery(topic=topic, raw_topic=topic.encode("utf-8", "surrogatepass"), payload=payload, mid=1,
                         qos=1, epoch=0)
    try:
        return "line", encode(delivery)[1]
    except ContractError as exc:
        return "contract", exc.reason
    except LineProtocolError as exc:
        return "lineprotocol", str(exc)


def _same(topic: str, payload: bytes) -> None:
    assert _outcome(_encode_fields, topic, payload) == _outcome(_encode, topic, payload)
    try:
        event = decode_event(topic, payload)
    except ContractError as exc:
        reason = exc.reason
    else:
        assert Event.model_validate(decode_event_fields(topic, payload)) == event  # the same values
        return
    with pytest.raises(ContractError) as fast:  # never accepts a refused one, and says why in the same words
        decode_event_fields(topic, payload)
    assert fast.value.reason == reason


@FUZZ
@given(event=events())
def test_a_valid_event_gives_the_same_line(event: Event) -> None:
    payload = event.encode()
    assert _fast_fields(payload) is not None, "the fast path takes every valid event the collectors send"
    _same(event.topic, payload)


@FUZZ
@given(case=mutated(events()), right_topic=st.booleans(), topic=topics)
def test_a_mutated_event_gets_the_same_answer(case: tuple[Event, bytes], right_topic: bool, topic: str) -> None:
    event, payload = case
    _same(event.topic if right_topic else topic, payload)


@FUZZ
@given(topic=topics, value=json_values | st.binary(max_size=200))
def test_anything_gets_the_same_answer(topic: str, value: Any) -> None:
    _same(topic, value if isinstance(value, bytes) else json.dumps(value).encode())


def test_the_rules_checked_in_python_are_kept() -> None:
    """A cycle end without its duration, a part event that counts nothing: refused, with the models' reason."""
    head = '{"v":1,"site":"s","machine":"m","seq":1,"ts":1800000000000000000,'
    for kind, data in (("cycle", '{"phase":"end","started_ts":5}'), ("part", '{"count":0}'),
                       ("part", '{"count":0,"good":0}')):
        payload = f'{head}"kind":"{kind}","data":{data}}}'.encode()
        assert _fast_fields(payload) is None
        _same(f"copeau/v1/s/m/{kind}", payload)
        assert _outcome(_encode_fields, f"copeau/v1/s/m/{kind}", payload)[0] == "contract"


def test_the_bench_workload_takes_the_fast_path() -> None:
    for message in stream("m", machines=3, count=40, ts0=time.time_ns()):
        assert _fast_fields(message.payload) is not None
        _same(message.topic, message.payload)

"""Fuzz of the MQTT payload decoders (Hypothesis): whatever arrives on a topic, the decoder returns a valid object
or raises the one error its callers handle. Never another exception, which would stop the gateway's writer or a
collector's context handling.

Theory of operation:

- `decode_event` (and the gateway's encode path, `gateway.service._encode`: decode, then line protocol) gets any
  bytes, any JSON value, and valid events with one field changed, removed or added. Only ContractError may come
  out of the decoder; only ContractError or LineProtocolError out of the encode path, and LineProtocolError only
  for the text line protocol cannot carry (a backslash or a line break in a context tag).
- A valid event (drawn field by field from the contract's own ranges) decodes from its own bytes to an equal
  event, re-encodes to the same bytes, and is encoded as exactly one line.
- The control payloads, `JobContext` (retained context) and `BadgeScan` (hardware readers), are read with
  pydantic's `model_validate_json` by their callers (`collectors/runner.py`, `web/badges.py`), which catch
  ValidationError: only that may come out, and valid ones round-trip.
- `decode_health` and the gateway's `health_lines`: ContractError only; a decoded report becomes points or a
  LineProtocolError.

Deterministic by default (`derandomize`: `make test` and CI draw the same examples every run, so a failure can be
reproduced). `COPEAU_FUZZ_RANDOM=1` draws new examples on each run, `COPEAU_FUZZ_EXAMPLES=N` draws more.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from copeau.contract import (
    APPRENTICE_CODE_PATTERN,
    INT64_MAX,
    SLUG_PATTERN,
    AlarmData,
    BadgeScan,
    ContractError,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventContext,
    EventKind,
    JobContext,
    MachineState,
    PartData,
    StateData,
    decode_event,
    decode_health,
)
from gateway.lineprotocol import LineProtocolError
from gateway.service import _Delivery, _encode, health_lines

_RANDOM = os.environ.get("COPEAU_FUZZ_RANDOM") == "1"
FUZZ = settings(max_examples=int(os.environ.get("COPEAU_FUZZ_EXAMPLES", "300")), deadline=None,
                derandomize=not _RANDOM, database=None)

MIN_TS, MAX_TS = 946_684_800 * 10**9, 7_258_118_400 * 10**9  # the contract's bounds (2000-01-01, 2200-01-01)

# -- valid objects, drawn from the contract's own ranges

slugs = st.from_regex(SLUG_PATTERN, fullmatch=True)
timestamps = st.integers(MIN_TS, MAX_TS)
short_text = st.text(max_size=20)
contexts = st.builds(
    EventContext,
    order=st.none() | st.text(min_size=1, max_size=64),
    operation=st.none() | st.integers(0, 10_000),
    apprentice=st.none() | st.from_regex(APPRENTICE_CODE_PATTERN, fullmatch=True),
)
state_data = st.builds(StateData, state=st.sampled_from(MachineState),
                       previous=st.none() | st.sampled_from(MachineState))
cycle_data = st.one_of(
    st.builds(CycleData, phase=st.just(CyclePhase.START)),
    st.builds(CycleData, phase=st.just(CyclePhase.END), started_ts=st.integers(0, INT64_MAX),
              duration_s=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
              outcome=st.none() | st.sampled_from(CycleOutcome)),
)
part_data = st.builds(  # a part event counts at least one part (count, or good)
    lambda count, good, **rest: PartData(count=count, good=good if count or good else 1, **rest),
    count=st.integers(0, 1_000_000), good=st.none() | st.integers(0, 1_000_000),
    counter=st.none() | st.integers(0, INT64_MAX), reset=st.booleans(), wrapped=st.booleans(), rebuilt=st.booleans(),
)
alarm_data = st.builds(AlarmData, active=st.booleans(), code=st.none() | st.text(max_size=64),
                       text=st.none() | st.text(max_size=256))
_DATA = {EventKind.STATE: state_data, EventKind.CYCLE: cycle_data, EventKind.PART: part_data,
         EventKind.ALARM: alarm_data}


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from(EventKind))
    return Event(site=draw(slugs), machine=draw(slugs), kind=kind, seq=draw(st.integers(0, INT64_MAX)),
                 ts=draw(timestamps), data=draw(_DATA[kind]), ctx=draw(st.none() | contexts))


job_contexts = st.builds(JobContext, site=slugs, machine=slugs, ts=timestamps, context=contexts)
badge_scans = st.builds(BadgeScan, code=st.text(min_size=1, max_size=64), ts=st.none() | timestamps)

# -- hostile payloads

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400, MIN_TS - 1, MAX_TS + 1]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
topics = st.one_of(
    st.text(max_size=60),
    st.builds("/".join, st.lists(st.text(max_size=12), min_size=5, max_size=5)),
    st.builds(lambda site, machine, kind: f"copeau/v1/{site}/{machine}/{kind}", slugs | short_text,
              slugs | short_text, st.sampled_from([*EventKind, "context", "badge", "x"]) | short_text),
)


def _set(document: dict[str, Any], path: list[str], value: Any, *, remove: bool = False) -> None:
    node = document
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node
    if not isinstance(node, dict):
        return
    if remove:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> tuple[Any, bytes]:
    """A valid object's JSON with one field replaced, removed, or added (also inside `data` and `ctx`)."""
    obj = draw(valid)
    document = json.loads(obj.model_dump_json(exclude_none=True))
    fields = [[k] for k in document] + [[k, sub] for k, v in document.items() if isinstance(v, dict) for sub in v]
    path = draw(st.sampled_from(fields)) if fields else ["v"]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "add":
        path = [*path[:-1], draw(st.text(max_size=10))]
    _set(document, path, draw(json_values), remove=action == "remove")
    # JSON (with NaN and Infinity, which strict JSON does not have), or Python's repr: both arrive on the wire.
    raw = json.dumps(document) if draw(st.booleans()) else repr(document)
    return obj, raw.encode("utf-8", "surrogatepass")


# -- properties: events


def _decode_or_refuse(topic: str, payload: bytes) -> Event | None:
    try:
        return decode_event(topic, payload)
    except ContractError as exc:
        reason = exc.reason
    assert reason.strip(), "a refusal says why (for the dead-letter file)"
    return None


def _encode_or_refuse(topic: str, payload: bytes) -> str | None:
    delivery = _Delivery(topic=topic, raw_topic=topic.encode("utf-8", "surrogatepass"), payload=payload, mid=1,
                         qos=1, epoch=0)
    try:
        event, line = _encode(delivery)
    except (ContractError, LineProtocolError):
        return None
    assert isinstance(event, Event)
    assert "\n" not in line and "\r" not in line, line
    return line


@FUZZ
@given(topic=topics, payload=st.binary(max_size=300))
def test_any_bytes_decode_or_are_refused(topic: str, payload: bytes) -> None:
    _decode_or_refuse(topic, payload)
    _encode_or_refuse(topic, payload)


@FUZZ
@given(topic=topics, value=json_values)
def test_any_json_decodes_or_is_refused(topic: str, value: Any) -> None:
    payload = json.dumps(value).encode()
    _decode_or_refuse(topic, payload)
    _encode_or_refuse(topic, payload)


@FUZZ
@given(case=mutated(events()), right_topic=st.booleans(), topic=topics)
def test_a_mutated_event_decodes_or_is_refused(case: tuple[Event, bytes], right_topic: bool, topic: str) -> None:
    event, payload = case
    where = event.topic if right_topic else topic
    decoded = _decode_or_refuse(where, payload)
    assert decoded is None or decoded.topic == where  # an accepted event is the one its topic names
    _encode_or_refuse(where, payload)


@FUZZ
@given(event=events())
def test_a_valid_event_round_trips_and_is_one_line(event: Event) -> None:
    payload = event.encode()
    decoded = decode_event(event.topic, payload)
    assert decoded == event
    assert decoded.encode() == payload  # a re-send is byte-identical: InfluxDB keeps one point
    ctx = event.ctx
    unsafe = ctx is not None and ctx.order is not None and any(c in ctx.order for c in "\\\n\r")
    line = _encode_or_refuse(event.topic, payload)
    assert (line is None) == unsafe, (line, ctx)


# -- properties: control payloads and health


@FUZZ
@given(payload=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | mutated(job_contexts).map(lambda c: c[1]) | mutated(badge_scans).map(lambda c: c[1]))
def test_control_payloads_decode_or_raise_validation_error(payload: bytes) -> None:
    for model in (JobContext, BadgeScan):
        with contextlib.suppress(ValidationError):
            model.model_validate_json(payload)


@FUZZ
@given(context=job_contexts, scan=badge_scans)
def test_control_payloads_round_trip(context: JobContext, scan: BadgeScan) -> None:
    assert JobContext.model_validate_json(context.encode()) == context
    assert BadgeScan.model_validate_json(scan.model_dump_json(exclude_none=True)) == scan


@FUZZ
@given(topic=topics | slugs.map(lambda s: f"copeau/v1/{s}/health/gateway/{s}"),
       payload=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_health_reports_decode_or_are_refused(topic: str, payload: bytes) -> None:
    try:
        report = decode_health(topic, payload)
    except ContractError:
        return
    with contextlib.suppress(LineProtocolError):
        health_lines(report)

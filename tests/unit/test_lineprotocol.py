"""Line protocol encoding: exact bytes for every kind, escaping, refusals, and a round trip through a small
reference parser written here from the InfluxDB 1.x scanner's rules (not from our encoder)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from copeau.contract import (
    AlarmData,
    ContractError,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventKind,
    MachineState,
    PartData,
    StateData,
    decode_event,
)
from gateway.lineprotocol import FieldValue, LineProtocolError, encode_line, event_line

TS = 1_700_000_000_123_456_789


def _event(kind: EventKind, data: object, *, seq: int = 7, ts: int = TS) -> Event:
    return Event(site="ecole-demo", machine="fraiseuse-1", kind=kind, seq=seq, ts=ts, data=data)  # type: ignore[arg-type]


# -- a reference parser (InfluxDB 1.x rules) ---------------------------------------------------------------


def _read_until(line: str, i: int, stops: str, escapable: str) -> tuple[str, int]:
    out = []
    while i < len(line) and line[i] not in stops:
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in escapable:
            out.append(line[i + 1])
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out), i


def _read_string(line: str, i: int) -> tuple[str, int]:
    assert line[i] == '"'
    i += 1
    out = []
    while line[i] != '"':
        if line[i] == "\\" and line[i + 1] in '\\"':  # the only two escapes in a string field
            out.append(line[i + 1])
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out), i + 1


def _scalar(raw: str) -> FieldValue:
    if raw in ("true", "false"):
        return raw == "true"
    if raw.endswith("i"):
        return int(raw[:-1])
    assert not raw.endswith("u"), "1.6 rejects the unsigned syntax"
    return float(raw)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
    """Split one line the way InfluxDB 1.x does; fails on anything out of place."""
    assert "\n" not in line and "\r" not in line
    measurement, i = _read_until(line, 0, ", ", ", ")
    tags: dict[str, str] = {}
    while line[i] == ",":
        key, i = _read_until(line, i + 1, "=", ",= ")
        value, i = _read_until(line, i + 1, ", ", ",= ")
        assert key not in tags
        tags[key] = value
    assert line[i] == " "
    i += 1
    fields: dict[str, FieldValue] = {}
    while True:
        key, i = _read_until(line, i, "=", ",= ")
        i += 1
        if line[i] == '"':
            value, i = _read_string(line, i)
        else:
            raw, i = _read_until(line, i, ", ", "")
            value = _scalar(raw)
        fields[key] = value
        if line[i] == " ":
            break
        assert line[i] == ","
        i += 1
    ts_text = line[i + 1 :]
    assert ts_text.lstrip("-").isdigit(), ts_text
    return measurement, tags, fields, int(ts_text)


# -- exact bytes for every kind -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            _event(EventKind.STATE, StateData(state=MachineState.RUNNING, previous=MachineState.IDLE)),
            f'state,machine=fraiseuse-1,site=ecole-demo previous="idle",seq=7i,state="running" {TS}',
        ),
        (
            _event(EventKind.STATE, StateData(state=MachineState.OFFLINE)),
            f'state,machine=fraiseuse-1,site=ecole-demo seq=7i,state="offline" {TS}',
        ),
        (
            _event(EventKind.CYCLE, CycleData(phase=CyclePhase.START)),
            f"cycle,machine=fraiseuse-1,phase=start,site=ecole-demo seq=7i {TS}",
        ),
        (
            _event(EventKind.CYCLE, CycleData(phase=CyclePhase.END, started_ts=TS - 6_500_000_000, duration_s=6.5,
                                              outcome=CycleOutcome.COMPLETED)),
            f"cycle,machine=fraiseuse-1,outcome=completed,phase=end,site=ecole-demo "
            f"duration_s=6.5,seq=7i,started_ts={TS - 6_500_000_000}i {TS}",
        ),
        (
            _event(EventKind.CYCLE, CycleData(phase=CyclePhase.END, started_ts=TS - 10**9, duration_s=1)),
            f"cycle,machine=fraiseuse-1,phase=end,site=ecole-demo duration_s=1.0,seq=7i,started_ts={TS - 10**9}i {TS}",
        ),
        (
            _event(EventKind.PART, PartData(count=3, counter=4_294_967_295, wrapped=True)),
            f"part,machine=fraiseuse-1,site=ecole-demo "
            f"count=3i,counter=4294967295i,rebuilt=false,reset=false,seq=7i,wrapped=true {TS}",
        ),
        (
            _event(EventKind.PART, PartData(count=1, reset=True, rebuilt=True)),
            f"part,machine=fraiseuse-1,site=ecole-demo count=1i,rebuilt=true,reset=true,seq=7i,wrapped=false {TS}",
        ),
        (
            _event(EventKind.ALARM, AlarmData(active=True, code="E-42", text='Porte "ouverte" C:\\broche')),
            f'alarm,machine=fraiseuse-1,site=ecole-demo active=true,code="E-42",seq=7i,'
            f'text="Porte \\"ouverte\\" C:\\\\broche" {TS}',
        ),
        (
            _event(EventKind.ALARM, AlarmData(active=False)),
            f"alarm,machine=fraiseuse-1,site=ecole-demo active=false,seq=7i {TS}",
        ),
    ],
    ids=["state", "state-no-previous", "cycle-start", "cycle-end", "cycle-end-int-duration", "part-wrapped",
         "part-reset", "alarm-escaped-text", "alarm-cleared"],
)
def test_every_kind_encodes_to_exact_bytes(event: Event, expected: str) -> None:
    assert event_line(event) == expected
    assert "u " not in expected and not any(part.endswith("u") for part in expected.split(","))


def test_the_same_event_gives_the_same_bytes_after_a_trip_through_json() -> None:
    event = _event(EventKind.ALARM, AlarmData(active=True, code="E1", text="éàü \" \\ , = x"))
    again = decode_event(event.topic, event.encode())
    assert event_line(again) == event_line(event) == event_line(event)


def test_context_tags_are_sorted_in_and_escaped() -> None:
    event = _event(EventKind.PART, PartData(count=2))
    line = event_line(event, context_tags={"order": "OF 12,3", "apprentice": "Zoé=D", "operation": ""})
    assert line.startswith(r"part,apprentice=Zoé\=D,machine=fraiseuse-1,order=OF\ 12\,3,site=ecole-demo ")
    assert "operation" not in line  # an empty value means "no context", not an empty tag InfluxDB would refuse


@pytest.mark.parametrize("key", ["machine", "site", "phase", "outcome", "seq", "count", "time"])
def test_context_tags_cannot_reuse_a_name_the_event_uses(key: str) -> None:
    with pytest.raises(LineProtocolError, match="clash"):
        event_line(_event(EventKind.PART, PartData(count=1)), context_tags={key: "x"})


def test_escaping_of_measurement_tags_and_string_fields() -> None:
    line = encode_line("a b,c", {"k ey,=": "v al,=ue"}, {"f ,=": 'q"uo\\te', "n": 1.5}, 1)
    assert line == r'a\ b\,c,k\ ey\,\==v\ al\,\=ue f\ \,\=="q\"uo\\te",n=1.5 1'


@pytest.mark.parametrize(
    ("measurement", "tags", "fields"),
    [
        ("m", {"k": "a\nb"}, {"f": 1}),
        ("m", {"k": "ends with\\"}, {"f": 1}),
        ("m", {"k\r": "v"}, {"f": 1}),
        ("m\n", {}, {"f": 1}),
        ("m", {"k": ""}, {"f": 1}),
        ("m", {}, {}),
        ("#m", {}, {"f": 1}),
        ("m", {}, {"f": float("nan")}),
        ("m", {}, {"f": float("inf")}),
        ("m", {}, {"f": 2**63}),
        ("m", {}, {"f\\": 1}),
    ],
    ids=["newline-in-tag", "backslash-in-tag", "cr-in-key", "newline-in-measurement", "empty-tag", "no-field",
         "comment", "nan", "inf", "int64-overflow", "backslash-in-field-key"],
)
def test_what_line_protocol_cannot_carry_is_refused(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue]
) -> None:
    with pytest.raises(LineProtocolError):
        encode_line(measurement, tags, fields, 1)


def test_newlines_in_string_fields_are_escaped_not_written() -> None:
    line = encode_line("m", {}, {"text": "ligne 1\nligne 2\r"}, 1)
    assert "\n" not in line and "\r" not in line
    assert parse_line(line)[2]["text"] == "ligne 1\\nligne 2\\r"


def test_the_contract_refuses_events_the_store_cannot_hold() -> None:
    # Found while writing the gateway: each of these would be a 400 (or worse) at InfluxDB.
    with pytest.raises(ContractError, match="duration_s"):
        decode_event(
            "copeau/v1/s/m/cycle",
            b'{"site":"s","machine":"m","kind":"cycle","seq":1,"ts":1700000000000000000,'
            b'"data":{"phase":"end","started_ts":1,"duration_s":Infinity}}',
        )
    with pytest.raises(ValidationError, match="seq"):
        _event(EventKind.PART, PartData(count=1), seq=2**63)
    with pytest.raises(ValidationError, match="a part event carries PartData"):
        _event(EventKind.PART, StateData(state=MachineState.IDLE))


def test_line_protocol_still_refuses_what_bypasses_validation() -> None:
    # model_construct() skips validation: the encoder is the last line of defence.
    mismatched = Event.model_construct(site="s", machine="m", kind=EventKind.PART, seq=1,
                                       ts=1_700_000_000_000_000_000, data=StateData(state=MachineState.IDLE))
    with pytest.raises(LineProtocolError):
        event_line(mismatched)


# -- properties ----------------------------------------------------------------------------------------------

# Text that may appear in names and tag values: anything but a backslash or a line break (refused instead).
_name_text = st.text(st.characters(exclude_characters="\\\n\r", exclude_categories=("Cs",)), min_size=1,
                     max_size=12).filter(lambda s: not s.startswith("#"))
_any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
_field_value = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _any_text,
)


@settings(max_examples=300)
@given(
    measurement=_name_text,
    tags=st.dictionaries(_name_text, _name_text, max_size=4),
    fields=st.dictionaries(_name_text, _field_value, min_size=1, max_size=4),
    ts=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_encoded_points_parse_back_to_what_was_encoded(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], ts: int
) -> None:
    line = encode_line(measurement, tags, fields, ts)
    parsed_measurement, parsed_tags, parsed_fields, parsed_ts = parse_line(line)
    assert parsed_measurement == measurement
    assert parsed_tags == tags
    assert list(parsed_tags) == sorted(tags)
    expected_fields = {
        k: v.replace("\n", "\\n").replace("\r", "\\r") if isinstance(v, str) else v for k, v in fields.items()
    }
    assert parsed_fields == expected_fields
    assert all(type(parsed_fields[k]) is type(v) for k, v in fields.items())  # 5 stays int, 5.0 stays float
    assert parsed_ts == ts


_slug = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,20}\Z")
_ts = st.integers(min_value=946_684_800 * 10**9, max_value=7_258_118_400 * 10**9)
_data = st.one_of(
    st.builds(StateData, state=st.sampled_from(MachineState), previous=st.none() | st.sampled_from(MachineState)),
    st.builds(CycleData, phase=st.just(CyclePhase.START)),
    st.builds(CycleData, phase=st.just(CyclePhase.END), started_ts=_ts,
              duration_s=st.floats(min_value=0, max_value=1e9), outcome=st.none() | st.sampled_from(CycleOutcome)),
    st.builds(PartData, count=st.integers(1, 1_000_000), counter=st.none() | st.integers(0, 2**32 - 1),
              reset=st.booleans(), wrapped=st.booleans(), rebuilt=st.booleans()),
    st.builds(AlarmData, active=st.booleans(), code=st.none() | st.text(max_size=64),
              text=st.none() | st.text(max_size=256)),
)
_KIND_OF = {StateData: EventKind.STATE, CycleData: EventKind.CYCLE, PartData: EventKind.PART,
            AlarmData: EventKind.ALARM}


@settings(max_examples=300)
@given(site=_slug, machine=_slug, seq=st.integers(0, 2**63 - 1), ts=_ts, data=_data)
def test_every_valid_event_encodes_and_parses_back(site: str, machine: str, seq: int, ts: int, data: object) -> None:
    event = Event(site=site, machine=machine, kind=_KIND_OF[type(data)], seq=seq, ts=ts, data=data)  # type: ignore[arg-type]
    line = event_line(event)
    measurement, tags, fields, parsed_ts = parse_line(line)
    assert (measurement, parsed_ts) == (event.kind.value, ts)
    assert tags["site"] == site and tags["machine"] == machine
    assert fields["seq"] == seq
    assert event_line(decode_event(event.topic, event.encode())) == line  # byte-stable through the wire format
    if isinstance(data, PartData):
        assert fields["count"] == data.count
    if isinstance(data, CycleData) and data.phase is CyclePhase.END:
        assert fields["duration_s"] == data.duration_s and fields["started_ts"] == data.started_ts


_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _near_valid_payload() -> st.SearchStrategy[bytes]:
    base = {"site": "s", "machine": "m", "kind": "part", "seq": 1, "ts": TS, "data": {"count": 1}}
    return st.fixed_dictionaries({}, optional={k: _json_like | st.just(v) for k, v in base.items()}).map(
        lambda d: json.dumps(d).encode()
    )


@settings(max_examples=300)
@given(payload=st.binary(max_size=200) | _json_like.map(lambda v: json.dumps(v).encode()) | _near_valid_payload(),
       kind=st.sampled_from(["part", "state", "cycle", "alarm", "nope"]))
def test_any_payload_is_either_encoded_or_refused_with_a_typed_reason(payload: bytes, kind: str) -> None:
    # The gateway handles exactly these two errors; anything else escaping here would stop it.
    try:
        event_line(decode_event(f"copeau/v1/s/m/{kind}", payload))
    except (ContractError, LineProtocolError) as exc:
        refusal: ValueError = exc
    else:
        return
    assert str(refusal)  # a reason a person can read in the dead-letter file

"""InfluxDB line protocol for Copeau events. Pure: no I/O, no clock; the same event always gives the same bytes.

Theory of operation: one event is one point. The measurement is the event kind, the tags say *where* (site,
machine, cycle phase/outcome, later the job context), the fields say *what*, and the timestamp is the event's own
`ts` in nanoseconds, fixed at the source. Because the encoding is deterministic, a redelivered event is
re-written byte for byte and InfluxDB keeps one point (same measurement, tag set and timestamp).

The encoding is the subset that InfluxDB 1.x, 2.x and 3.x all read: integers as `5i` (1.6 rejects `5u`),
tags sorted by key (the order InfluxDB prefers), fields sorted by key (so the bytes are canonical).
Text that line protocol cannot carry faithfully on every version is refused with `LineProtocolError`
(a backslash, a newline or a carriage return in a measurement, a tag key or value, or a field key; a
non-finite float; an integer outside int64): the gateway dead-letters such events rather than store
something else.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from copeau.contract import (
    AlarmData,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventKind,
    MachineState,
    PartData,
    StateData,
)

FieldValue = bool | int | float | str

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# A backslash cannot be written safely in a name or a tag value on InfluxDB 1.x: `\\` is not an escape there,
# so a value ending in a backslash would escape the separator that follows it. Newlines end the line.
_UNSAFE_IN_NAMES = ("\\", "\n", "\r")

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})  # tag keys, tag values, field keys
# In string fields only `\\` and `\"` are escapes. A newline is written as the two characters `\n` (stored as
# such): 1.6 would accept a raw newline inside quotes, but other versions and tools split lines on it.
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})

# Tag keys an event already uses, and field keys (InfluxDB 3 refuses a tag and a field with the same name).
_EVENT_TAG_KEYS = frozenset({"machine", "site", "phase", "outcome"})
_EVENT_FIELD_KEYS = frozenset(
    {"seq", "state", "previous", "duration_s", "started_ts", "count", "good", "counter", "reset", "wrapped",
     "rebuilt", "active", "code", "text"}
)
_DATA_TYPE = {
    EventKind.STATE: StateData,
    EventKind.CYCLE: CycleData,
    EventKind.PART: PartData,
    EventKind.ALARM: AlarmData,
}


class LineProtocolError(ValueError):
    """An event or value that line protocol cannot carry faithfully. The event is dead-lettered, not stored."""


def event_line(event: Event, *, context_tags: Mapping[str, str] | None = None) -> str:
    """Encode one event as one line of line protocol (timestamp in ns; write it with `precision=ns`).

    `context_tags` (reserved for the job context: order, operation, apprentice) are added to the event's own
    tags; a context tag with an empty value is left out (no context), one that reuses an event tag or field
    name is refused. Raises LineProtocolError for an event that cannot be stored as it is.
    """
    data = event.data
    expected = _DATA_TYPE[event.kind]
    if not isinstance(data, expected):
        # The contract checks this when it parses JSON, but not for an Event built in Python.
        raise LineProtocolError(f"a {event.kind.value} event carries {type(data).__name__}, not {expected.__name__}")

    tags: dict[str, str] = {"machine": event.machine, "site": event.site}
    fields: dict[str, FieldValue] = {"seq": event.seq}
    if isinstance(data, StateData):
        fields["state"] = data.state.value
        if data.previous is not None:
            fields["previous"] = data.previous.value
    elif isinstance(data, CycleData):
        tags["phase"] = data.phase.value
        if data.phase is CyclePhase.END:
            if data.outcome is not None:
                tags["outcome"] = data.outcome.value
            if data.duration_s is not None:
                fields["duration_s"] = float(data.duration_s)
            if data.started_ts is not None:
                fields["started_ts"] = data.started_ts
    elif isinstance(data, PartData):
        fields["count"] = data.count
        if data.good is not None:
            fields["good"] = data.good
        if data.counter is not None:
            fields["counter"] = data.counter
        fields["reset"] = data.reset
        fields["wrapped"] = data.wrapped
        fields["rebuilt"] = data.rebuilt
    else:
        fields["active"] = data.active
        if data.code is not None:
            fields["code"] = data.code
        if data.text is not None:
            fields["text"] = data.text

    _add_context(tags, context_tags)
    return encode_line(event.kind.value, tags, fields, event.ts)


def _add_context(tags: dict[str, str], context_tags: Mapping[str, str] | None) -> None:
    for key, value in (context_tags or {}).items():
        if key in _EVENT_TAG_KEYS or key in _EVENT_FIELD_KEYS or key == "time":
            raise LineProtocolError(f"context tag {key!r} would clash with a name the event already uses")
        if value:
            tags[key] = value


def event_fields_line(event: Mapping[str, Any], *, context_tags: Mapping[str, str] | None = None) -> str:
    """`event_line` for an event decoded as plain values (`copeau.contract.decode_event_fields`, the gateway's
    fast path): the same line, byte for byte, and the same refusals (tests/unit/test_fast_decode.py and
    tests/unit/test_lineprotocol_fast.py check it on fuzzed events)."""
    if not context_tags:
        order = operation = apprentice = None
    elif context_tags.keys() <= _CONTEXT_KEYS:  # the job context: no name that could clash (see `_add_context`)
        order = context_tags.get("order") or None  # an empty value means no context, as in `_add_context`
        operation = context_tags.get("operation") or None
        apprentice = context_tags.get("apprentice") or None
    else:
        return _event_fields_line(event, context_tags)
    try:
        line = _fast_event_line(event, order, operation, apprentice)
    except Exception:  # anything unusual: the reference path decides, and words any refusal
        line = None
    return _event_fields_line(event, context_tags) if line is None else line


def event_fields_ctx_line(event: Mapping[str, Any]) -> str:
    """`event_fields_line` with the event's own job context (`event["ctx"]`) as its context tags, as
    `gateway.service.context_tags` gives them for a model: order, operation (as text), apprentice code; an
    absent or empty one left out. The gateway's hot path: no tags dict is built for a message."""
    ctx = event.get("ctx")
    if ctx is None:
        order = operation = apprentice = None
    else:
        order = ctx.get("order") or None
        if (operation := ctx.get("operation")) is not None:
            operation = str(operation) or None  # an empty one is left out too (`_add_context`)
        apprentice = ctx.get("apprentice") or None
    try:
        line = _fast_event_line(event, order, operation, apprentice)
    except Exception:  # anything unusual: the reference path decides, and words any refusal
        line = None
    if line is None:
        tags = {key: value for key, value in (("order", order), ("operation", operation), ("apprentice", apprentice))
                if value is not None}
        line = _event_fields_line(event, tags)
    return line


def _event_fields_line(event: Mapping[str, Any], context_tags: Mapping[str, str] | None) -> str:
    """The reference for `_fast_event_line`: the event's tags and fields as dicts, through `encode_line`."""
    kind = event["kind"]
    data = event["data"]
    tags: dict[str, str] = {"machine": event["machine"], "site": event["site"]}
    fields: dict[str, FieldValue] = {"seq": event["seq"]}
    if kind is EventKind.STATE:
        fields["state"] = data["state"].value
        previous = data.get("previous")
        if previous is not None:
            fields["previous"] = previous.value
    elif kind is EventKind.CYCLE:
        phase = data["phase"]
        tags["phase"] = phase.value
        if phase is CyclePhase.END:
            if (outcome := data.get("outcome")) is not None:
                tags["outcome"] = outcome.value
            if (duration := data.get("duration_s")) is not None:
                fields["duration_s"] = float(duration)
            if (started := data.get("started_ts")) is not None:
                fields["started_ts"] = started
    elif kind is EventKind.PART:
        fields["count"] = data["count"]
        if (good := data.get("good")) is not None:
            fields["good"] = good
        if (counter := data.get("counter")) is not None:
            fields["counter"] = counter
        fields["reset"] = data.get("reset", False)
        fields["wrapped"] = data.get("wrapped", False)
        fields["rebuilt"] = data.get("rebuilt", False)
    elif kind is EventKind.ALARM:
        fields["active"] = data["active"]
        if (code := data.get("code")) is not None:
            fields["code"] = code
        if (text := data.get("text")) is not None:
            fields["text"] = text
    else:
        raise LineProtocolError(f"unknown event kind {kind!r}")
    _add_context(tags, context_tags)
    return encode_line(kind.value, tags, fields, event["ts"])


def encode_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts_ns: int) -> str:
    """Encode one point: `measurement,tag=v,... field=v,... ts`. Tags and fields are written sorted by key.

    Raises LineProtocolError for an empty name or tag value, a name with a backslash or a line break, a
    non-finite float, an integer outside int64, or no fields at all.
    """
    head = _measurement(measurement)
    if not fields:
        raise LineProtocolError(f"a point of {measurement!r} needs at least one field")
    tag_text = "".join([_tag(key, tags[key]) for key in sorted(tags)])
    field_text = ",".join([f"{_field_key(key)}={_field_value(key, fields[key])}" for key in sorted(fields)])
    return f"{head}{tag_text} {field_text} {_int64(ts_ns, 'timestamp')}"


# Speed (bench/README.md): the gateway encodes every message, and the same few names and tag values (site,
# machines, orders, apprentice codes) come back again and again, so their checked, escaped text is remembered.
# Bounded caches: a stream of ever-new values only costs the cache's size. Errors are never cached.


@functools.lru_cache(maxsize=256)
def _measurement(measurement: str) -> str:
    if measurement.startswith("#"):
        raise LineProtocolError(f"measurement {measurement!r} would read as a comment")
    return _name(measurement, _MEASUREMENT_ESCAPES, "measurement")


@functools.lru_cache(maxsize=8192)
def _tag(key: str, value: str) -> str:
    """`,key=value`, escaped."""
    return f",{_name(key, _KEY_ESCAPES, 'tag key')}={_name(value, _KEY_ESCAPES, f'tag {key!r}')}"


@functools.lru_cache(maxsize=1024)
def _field_key(key: str) -> str:
    return _name(key, _KEY_ESCAPES, "field key")


def _name(text: str, escapes: dict[int, str], what: str) -> str:
    if not text:
        raise LineProtocolError(f"{what} is empty")
    for unsafe in _UNSAFE_IN_NAMES:
        if unsafe in text:
            raise LineProtocolError(f"{what} {text!r} contains {unsafe!r}, which line protocol cannot carry")
    return text.translate(escapes)


def _field_value(key: str, value: FieldValue) -> str:
    # bool before int: bool is a subclass of int in Python.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{_int64(value, f'field {key!r}')}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"field {key!r} is {value!r}; InfluxDB stores finite numbers only")
        return repr(value)  # shortest text that reads back as the same float (e.g. 0.5, 1e-05, 1e+16)
    if isinstance(value, str):
        return f'"{value.translate(_STRING_ESCAPES)}"'
    raise LineProtocolError(f"field {key!r} has unsupported type {type(value).__name__}")


def _int64(value: int, what: str) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise LineProtocolError(f"{what} {value} does not fit in a signed 64-bit integer")
    return value


# Speed (issue #7): `_event_fields_line` costs about 5 µs a message on the bench workload (dicts, sorting, a cache
# lookup per tag, a type test chain per field); `_fast_event_line` about 1.3 µs. It writes each kind from a template:
# - the head (measurement, tags and the space after them) is remembered whole, keyed by what it is made of: the
#   kind, phase, outcome and tag values. A head is computed by the reference code (`_measurement`, `_tag`) and
#   only remembered once it was accepted: a refused tag value is refused again every time;
# - field keys are known and need no escaping, and the fields of each kind are written in sorted order;
# - a value of an unexpected type (a bool for an int, an int for a float, text for an enum, ...), an integer
#   outside int64 or a float that is not finite gives None: the caller then takes the reference path, which
#   returns the same line or raises the reference's error in its words (so it does after any exception).
# tests/unit/test_lineprotocol_fast.py compares both paths on fuzzed events, odd values included.

_CONTEXT_KEYS = frozenset({"order", "operation", "apprentice"})
_HEADS: dict[tuple[Any, ...], str] = {}
_HEADS_MAX = 4096  # a stream of ever-new tag values costs at most this many heads (then the cache starts over)
_STATE_TEXT = {state: _field_value("state", state.value) for state in MachineState}  # '"running"'
_STATE = EventKind.STATE
_CYCLE = EventKind.CYCLE
_PART = EventKind.PART
_ALARM = EventKind.ALARM
_START = CyclePhase.START
_END = CyclePhase.END
_isfinite = math.isfinite


def _fast_event_line(event: Mapping[str, Any], order: str | None, operation: str | None,
                     apprentice: str | None) -> str | None:
    """`_event_fields_line(event, context tags)` from per-kind templates; None when the reference should decide.
    `order`, `operation`, `apprentice`: the context tags' values, None for one left out."""
    kind = event["kind"]
    data = event["data"]
    seq = event["seq"]
    ts = event["ts"]
    # `encode_line` writes the timestamp as it is once in range, whatever its type: so does the template.
    if not (type(seq) is int and _INT64_MIN <= seq <= _INT64_MAX and _INT64_MIN <= ts <= _INT64_MAX):
        return None
    phase = outcome = None
    if kind is _STATE:
        fields = _state_fields(data, seq)
    elif kind is _CYCLE:
        phase = data["phase"]
        if phase is _START:
            fields = f"seq={seq}i"
        elif phase is _END:
            outcome = data.get("outcome")
            if outcome is not None and type(outcome) is not CycleOutcome:
                return None
            fields = _cycle_end_fields(data, seq)
        else:
            return None
    elif kind is _PART:
        fields = _part_fields(data, seq)
    elif kind is _ALARM:
        fields = _alarm_fields(data, seq)
    else:
        return None
    if fields is None:
        return None
    key = (kind, phase, outcome, event["machine"], event["site"], order, operation, apprentice)
    head = _HEADS.get(key)
    if head is None:
        head = _head(key)
    return f"{head}{fields} {ts}"


def _head(key: tuple[Any, ...]) -> str:
    """The line's head for a `_HEADS` key, `measurement,tag=value,... `, checked and escaped by the reference
    code; remembered once accepted (an exception leaves nothing behind)."""
    kind, phase, outcome, machine, site, order, operation, apprentice = key
    tags = {"machine": machine, "site": site}
    if phase is not None:
        tags["phase"] = phase.value
    if outcome is not None:
        tags["outcome"] = outcome.value
    for name, value in (("order", order), ("operation", operation), ("apprentice", apprentice)):
        if value is not None:
            tags[name] = value
    head = f"{_measurement(kind.value)}{''.join([_tag(name, tags[name]) for name in sorted(tags)])} "
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    _HEADS[key] = head
    return head


def _state_fields(data: Mapping[str, Any], seq: int) -> str | None:
    """A state event's fields in key order (previous, seq, state); None when the reference should decide."""
    state = data["state"]
    previous = data.get("previous")
    if type(state) is not MachineState:
        return None
    if previous is None:
        return f"seq={seq}i,state={_STATE_TEXT[state]}"
    if type(previous) is not MachineState:
        return None
    return f"previous={_STATE_TEXT[previous]},seq={seq}i,state={_STATE_TEXT[state]}"


def _cycle_end_fields(data: Mapping[str, Any], seq: int) -> str | None:
    """A cycle end's fields in key order (duration_s, seq, started_ts); None when the reference should decide."""
    duration = data.get("duration_s")
    if duration is None:
        duration_text = ""
    elif type(duration) is float and _isfinite(duration):
        duration_text = f"duration_s={duration!r},"
    else:
        return None
    if (started_text := _optional_int("started_ts", data.get("started_ts"))) is None:
        return None
    return f"{duration_text}seq={seq}i{started_text}"


def _part_fields(data: Mapping[str, Any], seq: int) -> str | None:
    """A part event's fields in key order (count, counter, good, rebuilt, reset, seq, wrapped; absent flags are
    false, as in the model); None when the reference should decide."""
    count = data["count"]
    reset = data.get("reset", False)
    wrapped = data.get("wrapped", False)
    rebuilt = data.get("rebuilt", False)
    if not (type(count) is int and _INT64_MIN <= count <= _INT64_MAX
            and type(reset) is bool and type(wrapped) is bool and type(rebuilt) is bool):
        return None
    good_text = _optional_int("good", data.get("good"))
    counter_text = _optional_int("counter", data.get("counter"))
    if good_text is None or counter_text is None:
        return None
    return (f"count={count}i{counter_text}{good_text},rebuilt={'true' if rebuilt else 'false'}"
            f",reset={'true' if reset else 'false'},seq={seq}i,wrapped={'true' if wrapped else 'false'}")


def _alarm_fields(data: Mapping[str, Any], seq: int) -> str | None:
    """An alarm's fields in key order (active, code, seq, text), the texts escaped as `_field_value` does; None
    when the reference should decide."""
    active = data["active"]
    code_text = _optional_text("code", data.get("code"))
    text_text = _optional_text("text", data.get("text"))
    if type(active) is not bool or code_text is None or text_text is None:
        return None
    return f"active={'true' if active else 'false'}{code_text},seq={seq}i{text_text}"


def _optional_int(key: str, value: Any) -> str | None:
    """`,key=<value>i` for an int64, "" for an absent value (None), None when the reference should decide."""
    if value is None:
        return ""
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return f",{key}={value}i"
    return None


def _optional_text(key: str, value: Any) -> str | None:
    """`,key="<value>"` escaped as `_field_value` does, "" for an absent value (None), None when the reference
    should decide."""
    if value is None:
        return ""
    if type(value) is str:
        return f',{key}="{value.translate(_STRING_ESCAPES)}"'
    return None

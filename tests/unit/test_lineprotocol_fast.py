"""The gateway's template path for event lines (`gateway.lineprotocol.event_fields_line`, `event_fields_ctx_line`,
`_fast_event_line`) against the reference, the models' `event_line`: the same line byte for byte, or the same
error (type and words), on fuzzed events. Valid events go through the contract; hostile ones bypass it
(`model_construct`, hand-built dicts) to reach the encoder with what it must refuse or escape: empty tag values,
spaces, commas, '=', backslashes, line breaks, integers outside int64, non-finite floats, values of the wrong
type. The remembered heads (tag sections) are checked too: a refused value is refused every time, and the cache
stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copeau.contract import (
    AlarmData,
    CycleData,
    CycleOutcome,
    CyclePhase,
    Event,
    EventContext,
    EventKind,
    MachineState,
    PartData,
    StateData,
    decode_event,
    decode_event_fields,
)
from gateway import lineprotocol
from gateway.lineprotocol import (
    _fast_event_line,
    event_fields_ctx_line,
    event_fields_line,
    event_line,
)
from gateway.service import context_tags
from tests.unit.test_fuzz_contract import FUZZ, events

TS = 1_700_000_000_123_456_789


def _outcome(encode: Callable[..., str], *args: Any, **kwargs: Any) -> tuple[str, str]:
    try:
        return "line", encode(*args, **kwargs)
    except Exception as exc:  # the same type and the same words, whatever it is
        return type(exc).__name__, str(exc)


# -- valid events, through the contract


@FUZZ
@given(event=events())
def test_a_valid_event_takes_the_template_path_and_gives_the_reference_line(event: Event) -> None:
    decoded = decode_event(event.topic, event.encode())
    tags = context_tags(decoded)
    fields = decode_event_fields(event.topic, event.encode())
    expected = _outcome(event_line, decoded, context_tags=tags)
    for _ in range(2):  # the second time from the remembered head
        assert _outcome(event_fields_ctx_line, fields) == expected
        assert _outcome(event_fields_line, fields, context_tags=tags) == expected
    if expected[0] == "line":  # taken by the template path itself, not handed to the reference
        assert _fast_event_line(fields, tags.get("order"), tags.get("operation"), tags.get("apprentice")) == expected[1]


def test_the_bench_like_event_is_written_from_the_template() -> None:
    event = Event(site="ecole-demo", machine="p-01", kind=EventKind.PART, seq=3, ts=TS,
                  data=PartData(count=2, good=1, counter=77, wrapped=True),
                  ctx=EventContext(order="OF 12,3=a", operation=10, apprentice="AP-0001"))
    fields = decode_event_fields(event.topic, event.encode())
    line = (r"part,apprentice=AP-0001,machine=p-01,operation=10,order=OF\ 12\,3\=a,site=ecole-demo "
            f"count=2i,counter=77i,good=1i,rebuilt=false,reset=false,seq=3i,wrapped=true {TS}")
    assert _fast_event_line(fields, "OF 12,3=a", "10", "AP-0001") == line
    assert event_fields_ctx_line(fields) == line == event_line(event, context_tags=context_tags(event))


@pytest.mark.parametrize(
    ("data", "ctx"),
    [
        (AlarmData(active=True, code='E"1\\', text='ligne 1\nligne "2"\r\\'), None),
        (AlarmData(active=False, code="", text=""), EventContext(order="OF 7,3=b", operation=0)),
        (CycleData(phase=CyclePhase.END, started_ts=2**63 - 1, duration_s=1e-05), EventContext(order="a\\b")),
        (CycleData(phase=CyclePhase.END, started_ts=0, duration_s=1e16, outcome=CycleOutcome.ABORTED),
         EventContext(apprentice="AP-7", order=" ")),
        (StateData(state=MachineState.ALARM), EventContext(order="x\r")),
    ],
    ids=["alarm-escaped-text", "alarm-empty-text", "backslash-in-order", "cycle-end-space-order", "cr-in-order"],
)
def test_escaping_and_refusals_through_the_contract(data: AlarmData | CycleData | StateData,
                                                    ctx: EventContext | None) -> None:
    kind = EventKind.ALARM if isinstance(data, AlarmData) else EventKind.CYCLE if isinstance(data, CycleData) \
        else EventKind.STATE
    event = Event(site="s", machine="m", kind=kind, seq=2**63 - 1, ts=TS, data=data, ctx=ctx)
    fields = decode_event_fields(event.topic, event.encode())
    expected = _outcome(event_line, event, context_tags=context_tags(event))
    assert _outcome(event_fields_ctx_line, fields) == expected
    if expected[0] == "line":
        assert _fast_event_line(fields, *(context_tags(event).get(k) for k in ("order", "operation", "apprentice")))\
            == expected[1]


# -- hostile events, bypassing the contract

# Each value as (a valid example, valid values, odd values). Valid tag text still needs escaping (space, comma, '=');
# odd values are what must be refused (empty, backslash, line breaks, outside int64, not finite) or are of a type
# the template path does not write itself (0 and False are "empty" to the reference; 1, 1.0, True are equal keys).
_Value = tuple[Any, st.SearchStrategy[Any], list[Any]]
_TAG: _Value = ("m-1", st.text(st.sampled_from(list('ab ,="#é-')), min_size=1, max_size=6),
                ["", "end\\", "two\nlines", "cr\r", None, 0, 1, False, True, 1.0])
_INT: _Value = (5, st.integers(0, 2**63 - 1) | st.sampled_from([-(2**63), 2**63 - 1, -1, 0]),
                [2**63, -(2**63) - 1, True, False, 1.0, "1", None])
_BOOL: _Value = (True, st.booleans(), [0, 1, None, "true", 1.0])
_FLOAT: _Value = (1.5, st.floats(0, 1e300) | st.sampled_from([-0.0, 1e16, 1e-5, 0.1]),
                  [float("nan"), float("inf"), -float("inf"), 0, 3, True, "1.5"])
_TEXT: _Value = ("E1", st.text(max_size=20) | st.sampled_from(['q"uo\\te', "a\nb\r", "", "é,= x"]), [0, True, b"x"])
_STATE: _Value = (MachineState.IDLE, st.sampled_from(MachineState), ["idle", "running", None, 1])


def _optional(value: _Value) -> _Value:
    return value[0], st.none() | value[1], value[2]


_Values = dict[str, _Value]
_COMMON: _Values = {"site": _TAG, "machine": _TAG, "seq": _INT, "ts": (TS, st.just(TS), _INT[2])}
_CTX: _Values = {"order": _optional(_TAG), "apprentice": _optional(_TAG),
                 "operation": (10, st.none() | st.integers(0, 10_000), [True, False, "", "a b", 1.5])}
_DATA: dict[EventKind, _Values] = {
    EventKind.STATE: {"state": _STATE, "previous": _optional(_STATE)},
    EventKind.CYCLE: {
        "phase": (CyclePhase.END, st.sampled_from(CyclePhase), ["end", "start", None, EventKind.CYCLE]),
        "outcome": (CycleOutcome.COMPLETED, st.none() | st.sampled_from(CycleOutcome), ["completed", "aborted", 1]),
        "duration_s": _optional(_FLOAT), "started_ts": _optional(_INT),
    },
    EventKind.PART: {"count": _INT, "good": _optional(_INT), "counter": _optional(_INT), "reset": _BOOL,
                     "wrapped": _BOOL, "rebuilt": _BOOL},
    EventKind.ALARM: {"active": _BOOL, "code": _optional(_TEXT), "text": _optional(_TEXT)},
}
_DATA_MODEL: dict[EventKind, type[StateData | CycleData | PartData | AlarmData]] = {
    EventKind.STATE: StateData, EventKind.CYCLE: CycleData, EventKind.PART: PartData, EventKind.ALARM: AlarmData}


def _both(kind: EventKind, common: dict[str, Any], data: dict[str, Any],
          ctx: dict[str, Any] | None) -> tuple[Event, dict[str, Any]]:
    """The same unvalidated event as a model (for the reference) and as `decode_event_fields` would give it."""
    common = {**common, "kind": kind}
    model = Event.model_construct(**common, data=_DATA_MODEL[kind].model_construct(**data),
                                  ctx=None if ctx is None else EventContext.model_construct(**ctx))
    return model, {**common, "data": data, "ctx": ctx}


@st.composite
def _hostile(draw: st.DrawFn) -> tuple[Event, dict[str, Any]]:
    """Random valid values, and most of the time one odd value among them."""
    kind = draw(st.sampled_from(EventKind))
    parts: dict[str, _Values] = {"common": _COMMON, "data": _DATA[kind], "ctx": _CTX}
    odd = draw(st.none() | st.sampled_from([(part, name) for part, values in parts.items() for name in values]))
    drawn = {part: {name: draw(st.sampled_from(value[2]) if odd == (part, name) else value[1])
                    for name, value in values.items()} for part, values in parts.items()}
    ctx = None if odd is None and draw(st.booleans()) else drawn["ctx"]
    return _both(kind, drawn["common"], drawn["data"], ctx)


def _each_odd_value() -> list[tuple[Event, dict[str, Any]]]:
    """A typical event of each kind (first, so that its head is remembered: an odd value equal to a valid one,
    "completed" for CycleOutcome.COMPLETED, must not find it), then the same with one value replaced by each odd
    value, one at a time."""
    cases = []
    for kind in EventKind:
        parts: dict[str, _Values] = {"common": _COMMON, "data": _DATA[kind], "ctx": _CTX}
        cases.append(_both(kind, *({n: value[0] for n, value in v.items()} for v in parts.values())))
        for part, values in parts.items():
            for name, (_, _, odd_values) in values.items():
                for odd in odd_values:
                    typical = {p: {n: value[0] for n, value in v.items()} for p, v in parts.items()}
                    typical[part][name] = odd
                    cases.append(_both(kind, typical["common"], typical["data"], typical["ctx"]))
    return cases


def _same_as_the_models(case: tuple[Event, dict[str, Any]]) -> None:
    model, fields = case
    tags = context_tags(model)
    expected = _outcome(event_line, model, context_tags=tags)
    for _ in range(2):  # a refused head is refused again; an accepted one is reused
        assert _outcome(event_fields_ctx_line, fields) == expected
        assert _outcome(event_fields_line, fields, context_tags=tags) == expected


@pytest.mark.parametrize("case", _each_odd_value())
def test_each_odd_value_alone_gets_the_reference_line_or_refusal(case: tuple[Event, dict[str, Any]]) -> None:
    _same_as_the_models(case)


@FUZZ
@given(case=_hostile())
def test_a_hostile_event_gets_the_reference_line_or_refusal(case: tuple[Event, dict[str, Any]]) -> None:
    _same_as_the_models(case)


@FUZZ
@given(case=_hostile(), extra=st.dictionaries(
    st.sampled_from(["order", "operation", "apprentice", "machine", "seq", "phase", "time", "shift"]),
    _TAG[1] | st.sampled_from(_TAG[2]), max_size=3))
def test_any_context_tags_get_the_reference_answer(case: tuple[Event, dict[str, Any]], extra: dict[str, Any]) -> None:
    model, fields = case
    assert _outcome(event_fields_line, fields, context_tags=extra) == _outcome(event_line, model, context_tags=extra)


def test_an_unknown_kind_is_refused_in_the_same_words() -> None:
    fields = {"site": "s", "machine": "m", "kind": "part", "seq": 1, "ts": TS, "data": {"count": 1}}
    assert _outcome(event_fields_line, fields) == ("LineProtocolError", "unknown event kind 'part'")


# -- the remembered heads


def test_a_refused_tag_value_is_refused_every_time_and_never_remembered() -> None:
    event = Event(site="s", machine="m", kind=EventKind.CYCLE, seq=1, ts=TS, data=CycleData(phase=CyclePhase.START),
                  ctx=EventContext(order="OF\n1"))
    fields = decode_event_fields(event.topic, event.encode())
    for _ in range(3):
        assert _outcome(event_fields_ctx_line, fields) == (
            "LineProtocolError", "tag 'order' 'OF\\n1' contains '\\n', which line protocol cannot carry")
    assert not any("OF\n1" in key for key in lineprotocol._HEADS)


def test_the_heads_cache_stays_bounded() -> None:
    for i in range(lineprotocol._HEADS_MAX + 10):
        fields = {"site": "s", "machine": f"m{i}", "kind": EventKind.STATE, "seq": i, "ts": TS,
                  "data": {"state": MachineState.IDLE}}
        assert event_fields_line(fields) == f'state,machine=m{i},site=s seq={i}i,state="idle" {TS}'
        assert len(lineprotocol._HEADS) <= lineprotocol._HEADS_MAX

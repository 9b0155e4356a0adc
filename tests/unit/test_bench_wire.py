"""The benchmark's load: pre-encoded MQTT packets (bench/mqttwire.py), event templates (bench/workload.py), and
the profile summary (bench/profile.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.latency import acknowledged
from bench.mqttwire import PubackCounter, connack_ok, connect_packet, publish_packet, remaining_length
from bench.profile import summarize_collapsed
from bench.workload import KINDS, event_message, stream
from copeau.contract import decode_event


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"), (16_384, b"\x80\x80\x01"),
     (268_435_455, b"\xff\xff\xff\x7f")],
)
def test_remaining_length_matches_the_mqtt_spec_examples(n: int, encoded: bytes) -> None:
    assert remaining_length(n) == encoded


def _decode_remaining(data: bytes) -> tuple[int, int]:
    value, shift, i = 0, 0, 1
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


@given(topic=st.text(min_size=1, max_size=40), payload=st.binary(max_size=400), packet_id=st.integers(1, 0xFFFF))
def test_publish_packet_reads_back(topic: str, payload: bytes, packet_id: int) -> None:
    packet = publish_packet(topic, payload, packet_id)
    assert packet[0] == 0x32  # PUBLISH, QoS 1
    length, i = _decode_remaining(packet)
    assert len(packet) == i + length
    topic_len = int.from_bytes(packet[i : i + 2], "big")
    assert packet[i + 2 : i + 2 + topic_len].decode() == topic
    j = i + 2 + topic_len
    assert int.from_bytes(packet[j : j + 2], "big") == packet_id
    assert packet[j + 2 :] == payload


def test_connect_and_connack() -> None:
    packet = connect_packet("bench-1")
    assert packet[:2] == b"\x10\x13" and b"MQTT\x04\x02" in packet and packet.endswith(b"bench-1")
    assert connack_ok(b"\x20\x02\x00\x00")
    assert not connack_ok(b"\x20\x02\x00\x05")  # not authorised


def test_pubacks_are_counted_across_any_split() -> None:
    stream_bytes = b"".join(b"\x40\x02" + i.to_bytes(2, "big") for i in range(1, 6))
    counter = PubackCounter()
    done = [counter.feed(stream_bytes[k : k + 3]) for k in range(0, len(stream_bytes), 3)]
    assert sum(done) == counter.count == 5
    with pytest.raises(ValueError, match="PUBACK"):
        PubackCounter().feed(b"\x30\x02\x00\x01")


@pytest.mark.parametrize("seq", range(8))
def test_templates_give_exactly_what_the_contract_encodes(seq: int) -> None:
    msg = event_message("m-07", seq, 1_795_796_061_123_456_789 + seq)
    event = decode_event(msg.topic, msg.payload)  # valid: the gateway will store it, not dead-letter it
    assert event.encode() == msg.payload
    assert event.kind.value == KINDS[seq % 4]
    assert event.ctx is not None and event.ctx.apprentice is not None
    assert 150 <= len(msg.payload) <= 280  # "about 200 bytes"


def test_a_stream_has_distinct_points() -> None:
    msgs = list(stream("p0", machines=3, count=30, ts0=1_795_796_061_000_000_000))
    assert len({(m.machine, m.ts) for m in msgs}) == 30
    assert [m.seq for m in msgs if m.machine == "p0-01"] == list(range(10))


def test_a_machine_keeps_its_job_context_for_job_messages_messages() -> None:
    def contexts(job_messages: int) -> list[bytes]:
        msgs = stream("p0", machines=2, count=24, ts0=1_795_796_061_000_000_000, job_messages=job_messages)
        return [m.payload[m.payload.index(b'"ctx"'):] for m in msgs if m.machine == "p0-01"]

    per_job = contexts(4)
    assert len(per_job) == 12
    assert [len(set(per_job[i:i + 4])) for i in range(0, 12, 4)] == [1, 1, 1]  # one context per job
    assert len(set(per_job)) == 3  # three jobs, three contexts
    assert len(set(contexts(1))) == 12  # the worst case: a new context on every message


def test_collapsed_stacks_are_summarised_per_thread_and_function() -> None:
    text = (
        "thread (0x1): writer;run (t.py:1);encode (lp.py:5);_name (lp.py:9) 6\n"
        "thread (0x1): writer;run (t.py:1);write (influx.py:3) 2\n"
        "thread (0x2): paho;loop (client.py:7) 2\n"
    )
    s = summarize_collapsed(text)
    assert s["samples"] == 10
    assert s["threads"] == {"thread (…): writer": 80.0, "thread (…): paho": 20.0}
    assert s["inclusive_pct"]["run (t.py)"] == 80.0
    assert s["self_pct"]["_name (lp.py)"] == 60.0


def test_the_tap_finds_each_seq_of_a_machine_in_the_writes() -> None:
    writes = [
        (10, b'state,machine=l-00,site=s seq=0i,state="idle" 1\npart,machine=l-000,site=s count=1i,seq=9i 2'),
        (20, b"part,apprentice=A,machine=l-00,site=s count=1i,seq=1i 3\npart,machine=l-00 seq=0i 4"),
    ]
    assert acknowledged(writes, "l-00") == {0: 10, 1: 20}  # l-000 is another machine; a re-write keeps the first

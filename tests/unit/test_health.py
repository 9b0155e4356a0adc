"""Health reports: their topic never mixes with events, the contract refuses what does not follow it, and a report
becomes `copeau_health` points whose fields keep one type each; the collector's report says what its outbox holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from paho.mqtt.client import topic_matches_sub

from collectors.outbox import Message, ShedClass
from collectors.runner import Collector
from collectors.source import FunctionSource
from copeau.contract import (
    EVENT_SUBSCRIPTION,
    HEALTH_SUBSCRIPTION,
    CollectorHealth,
    CollectorMachineHealth,
    CollectorMetrics,
    ContractError,
    GatewayHealth,
    GatewayMachineHealth,
    GatewayMetrics,
    ServiceKind,
    SpoolLevel,
    control_topic,
    decode_health,
    event_topic,
    health_topic,
    is_control_topic,
    is_health_topic,
    status_topic,
)
from gateway.service import health_lines
from tests.conftest import make_workshop, modbus_machine

TS = 1_800_000_000_123_456_789


def collector_report(**changes: object) -> CollectorHealth:
    metrics = CollectorMetrics(
        outbox_events=12, outbox_bytes=3400, outbox_file_bytes=90_000, outbox_limit_bytes=512_000_000,
        disk_free_bytes=10**10, spool_level=SpoolLevel.LIMIT, shed_events=7, unsaved_events=0, published=40,
        acknowledged=28, mqtt_connected=False, mqtt_reconnects=2, uptime_s=61.5,
    )
    machine = CollectorMachineHealth(readable=True, next_seq=52, reconnects=1, polls=600, missed_intervals=0,
                                     last_read_ts=TS, last_event_ts=None, last_read_age_s=2.5, shed_state=7)
    fields = {"site": "ecole", "service": "collector-1", "ts": TS, "interval_s": 10.0, "metrics": metrics,
              "machines": {"fraiseuse-1": machine}}
    return CollectorHealth.model_validate({**fields, **changes})


def test_health_topics_never_match_the_event_subscription_and_back() -> None:
    health = health_topic("ecole", ServiceKind.COLLECTOR, "collector-1")
    assert health == "copeau/v1/ecole/health/collector/collector-1"
    assert topic_matches_sub(HEALTH_SUBSCRIPTION, health)
    assert not topic_matches_sub(EVENT_SUBSCRIPTION, health)
    assert is_health_topic(health) and not is_control_topic(health)
    # A machine that happens to be called "health" is still a machine.
    for other in (event_topic("ecole", "health", "part"), control_topic("ecole", "health", "context"),
                  status_topic("ecole", "collector-1")):
        assert not topic_matches_sub(HEALTH_SUBSCRIPTION, other)
        assert not is_health_topic(other)


def test_a_report_round_trips_and_its_topic_must_agree() -> None:
    report = collector_report()
    assert decode_health(report.topic, report.encode()) == report
    gateway = GatewayHealth(
        site="ecole", service="copeau-gateway", ts=TS, interval_s=10,
        metrics=GatewayMetrics(received=5, stored=5, dead_letters=0, write_retries=0, batches=1, queue_depth=0,
                               health_stored=2, mqtt_connected=True, mqtt_reconnects=0, influx_ok=True, uptime_s=3),
        machines={"fraiseuse-1": GatewayMachineHealth(received=5, last_event_ts=TS, last_received_ts=TS)},
    )
    assert decode_health(gateway.topic, gateway.encode()) == gateway
    with pytest.raises(ContractError, match="topic says ecole/collector/other"):
        decode_health(health_topic("ecole", "collector", "other"), report.encode())
    with pytest.raises(ContractError, match="topic says ecole/gateway/collector-1"):
        decode_health(health_topic("ecole", "gateway", "collector-1"), report.encode())
    with pytest.raises(ContractError, match=r"metrics\.outbox_events"):
        decode_health(report.topic, report.encode().replace(b'"outbox_events":12', b'"outbox_events":-1'))
    with pytest.raises(ContractError, match="topic is not"):
        decode_health("copeau/v1/ecole/fraiseuse-1/part", report.encode())
    with pytest.raises(ContractError):
        decode_health(report.topic, b'{"v":1}')


def test_a_report_becomes_one_point_for_the_service_and_one_per_machine() -> None:
    lines = health_lines(collector_report())
    assert lines == [
        "copeau_health,kind=collector,service=collector-1,site=ecole acknowledged=28i,disk_free_bytes=10000000000i,"
        "mqtt_connected=false,mqtt_reconnects=2i,outbox_bytes=3400i,outbox_events=12i,outbox_file_bytes=90000i,"
        "outbox_limit_bytes=512000000i,published=40i,shed_events=7i,spool_level=1i,unsaved_events=0i,"
        f"uptime_s=61.5 {TS}",
        "copeau_health,kind=collector,machine=fraiseuse-1,service=collector-1,site=ecole last_read_age_s=2.5,"
        f"last_read_ts={TS}i,missed_intervals=0i,next_seq=52i,polls=600i,readable=true,reconnects=1i,shed_cycle_end=0i,"
        f"shed_cycle_start=0i,shed_state=7i {TS}",
    ]
    # A float stays a float even when it is whole (InfluxDB refuses a field that changes type).
    whole = collector_report(metrics=collector_report().metrics.model_copy(update={"uptime_s": 60.0}))
    assert "uptime_s=60.0 " in health_lines(whole)[0]


def test_the_collector_report_says_what_its_outbox_holds(tmp_path: Path) -> None:
    workshop = make_workshop(tmp_path, mqtt_port=1, machines=[modbus_machine("m1", 1), modbus_machine("m2", 2)],
                             collector={"outbox_max_mb": 0.0004, "health_interval_s": 5})
    collector = Collector(workshop, sources={m: FunctionSource(m, lambda: None) for m in ("m1", "m2")},  # type: ignore[arg-type, misc]
                          outbox=tmp_path / "o.sqlite", clock_ns=lambda: TS)
    box = collector.outbox
    state = "copeau/v1/test-site/m1/state"
    box.commit("m1", next_seq=3, snapshot={}, messages=[Message(state, b"x" * 150, ShedClass.STATE)] * 3)
    report = collector.health()
    assert report.ts == TS and report.interval_s == 5 and report.topic.endswith("/health/collector/collector-1")
    assert report.metrics.outbox_events == box.depth() == 2
    assert report.metrics.outbox_bytes == 2 * (len(state) + 150)
    assert report.metrics.outbox_limit_bytes == 400
    assert report.metrics.spool_level is SpoolLevel.LIMIT
    assert report.metrics.shed_events == 1
    assert report.metrics.mqtt_connected is False
    assert report.machines["m1"].shed_state == 1
    assert report.machines["m2"].shed_state == 0
    assert report.machines["m1"].readable is False  # never read yet
    box.close()

"""Broker sessions for the benchmark: subscriptions made before a run starts, and removed after it.

Theory of operation: a subscriber that connects after the publishers start would miss messages, and waiting for it
to connect would time its start-up. So each subscriber's persistent session (with its QoS 1 subscription) is made
beforehand: the broker then queues every message for it from the first one, whenever the subscriber process
connects. After the run the session is removed (a clean connection with the same client id), so that the broker
does not keep queuing for it during the next run.

The raw broker pipe is `mosquitto_sub -q 1` into /dev/null: the C client, acknowledging each message, measured the
same way as the gateway (count of messages in, time until the last one).
"""

from __future__ import annotations

import shutil
import subprocess
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

EVENTS = "copeau/v1/+/+/+"


def mosquitto_sub() -> str:
    found = shutil.which("mosquitto_sub")
    if not found:
        raise RuntimeError("mosquitto_sub is missing: apt-get install mosquitto-clients (scripts/setup-system.sh)")
    return found


def v5_session(port: int, client_id: str, *, subscribe: str | None, expiry_s: int, timeout_s: float = 10) -> None:
    """Connect as `client_id` (MQTT 5, clean start), optionally subscribe at QoS 1, and disconnect. With
    `expiry_s` > 0 the session, and so the subscription, stays on the broker; with 0 any old session is gone."""
    done = threading.Event()
    failure: list[str] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)

    def on_connect(c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            failure.append(str(reason))
            done.set()
        elif subscribe:
            c.subscribe(subscribe, qos=1)
        else:
            done.set()

    def on_subscribe(_c: object, _u: object, _mid: int, reasons: list[object], _p: object) -> None:
        if any(getattr(r, "is_failure", False) for r in reasons):
            failure.append(f"SUBSCRIBE {subscribe} refused: {reasons}")
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry_s
    client.connect("127.0.0.1", port, clean_start=True, properties=props)
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise TimeoutError(f"broker did not answer {client_id} within {timeout_s} s")
        if failure:
            raise RuntimeError(failure[0])
    finally:
        client.disconnect()
        client.loop_stop()


def raw_session(port: int, client_id: str, *, subscribe: bool) -> None:
    """mosquitto_sub's persistent session (MQTT 3.1.1): made with its QoS 1 subscription, or removed."""
    argv = [mosquitto_sub(), "-h", "127.0.0.1", "-p", str(port), "-i", client_id, "-t", EVENTS, "-q", "1", "-E"]
    if subscribe:
        argv.append("-c")  # persistent: the broker queues for it until it comes back
    subprocess.run(argv, check=True, timeout=10, stdout=subprocess.DEVNULL)


def raw_subscriber(port: int, client_id: str, count: int) -> subprocess.Popen[bytes]:
    """mosquitto_sub resuming its session, exiting after `count` messages, printing them into /dev/null."""
    argv = [mosquitto_sub(), "-h", "127.0.0.1", "-p", str(port), "-i", client_id, "-t", EVENTS, "-q", "1", "-c",
            "-C", str(count)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

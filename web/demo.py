"""The web service as `copeau demo` runs it: in a thread of the demo's process, with demo data, kiosk keys made
for this run, and simulated apprentices who badge in through the MQTT badge-reader topic (the same path as a
hardware reader at the machine)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as paho
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from copeau.config import Workshop
from copeau.contract import BadgeScan, ControlKind, control_topic
from copeau.errors import ServiceError
from copeau.i18n import t
from copeau.services import port_is_free
from orders import catalog
from orders.seed import APPRENTICES, DEMO_LOGIN, DEMO_PASSWORD, seed_demo
from web.access import new_kiosk_key
from web.app import create_app
from web.live import StreamingServer

# Who works where in the demo: (machine, apprentice badge, job card). The jobs fit the machines' kinds.
ASSIGNMENTS = [
    ("fraiseuse-1", APPRENTICES[0][2], "CMD-DEMO-001/10"),
    ("fraiseuse-2", APPRENTICES[1][2], "CMD-DEMO-002/10"),
    ("tour-1", APPRENTICES[2][2], "CMD-DEMO-003/20"),
    ("fraiseuse-3", APPRENTICES[3][2], "CMD-DEMO-003/10"),
]


class DemoWebService:
    """Start, seed, badge in, stop."""

    def __init__(self, workshop: Workshop) -> None:
        self.workshop = workshop
        machines = {m.id for m in workshop.machines}
        self.assignments = [a for a in ASSIGNMENTS if a[0] in machines]
        self.keys = {m.id: new_kiosk_key() for m in workshop.machines}
        self.app = create_app(workshop, kiosk_keys=self.keys)
        settings = workshop.web
        self.base_url = f"http://{settings.host}:{settings.port}"
        self._server = StreamingServer(  # uvicorn's, ending the live board's streams when it stops
            uvicorn.Config(self.app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                           timeout_graceful_shutdown=5)
        )
        # Off the main thread, uvicorn leaves the demo's Ctrl-C handling alone.
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        if not port_is_free(self.workshop.web.host, self.workshop.web.port):
            raise ServiceError(
                t(
                    "services.port_busy",
                    port=self.workshop.web.port,
                    what="web",
                    field="web.port",
                    host=self.workshop.web.host,
                    config="workshop.yaml",
                )
            )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServiceError(f"le service web n'a pas démarré sur {self.base_url}")
            time.sleep(0.05)
        web = self.app.state.copeau
        now = datetime.now(UTC)
        with web.transaction() as db:
            self.data = seed_demo(db)
            left_open = [s.id for s in catalog.list_sessions(db, open_only=True)]
        for session_id in left_open:  # from an earlier demo run: its machines start again from scratch
            web.stations.close_session(session_id=session_id, now=now)

    def badge_in_apprentices(self, timeout_s: float = 15.0) -> None:
        """Each simulated apprentice scans a badge, then a job card, on a reader at the machine (MQTT)."""
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        client.connect(self.workshop.mqtt.host, self.workshop.mqtt.port)
        client.loop_start()
        try:
            site = self.workshop.site.id
            for machine, badge, job in self.assignments:
                for code in (badge, job):
                    payload = BadgeScan(code=code, ts=time.time_ns()).model_dump_json(exclude_none=True).encode()
                    client.publish(control_topic(site, machine, ControlKind.BADGE), payload, qos=1).wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()
        stations = self.app.state.copeau.stations
        deadline = time.monotonic() + timeout_s
        while not all(stations.view(machine=m, now=datetime.now(UTC)).job for m, _, _ in self.assignments):
            if time.monotonic() > deadline:
                raise ServiceError("les apprentis simulés n'ont pas pu badger (voir le journal du service web)")
            time.sleep(0.05)

    def addresses(self) -> list[str]:
        lines = [t("demo.web", url=self.base_url, login=DEMO_LOGIN, password=DEMO_PASSWORD)]
        for machine, key in self.keys.items():
            lines.append(f"  {machine:<13} {self.base_url}/kiosque/{machine}?cle={key}")
        lines.append(t("demo.board", url=f"{self.base_url}/tableau"))
        return lines

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

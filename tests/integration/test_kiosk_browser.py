"""The kiosk in headless Chromium (Debian's `chromium` and `chromium-driver`), as an apprentice uses it: the USB
reader types the badge and Enter, then the job card and Enter; parts appear as the machine makes them (written to
the real InfluxDB exactly as the gateway writes them); the apprentice declares good and scrap parts, and the
session closes. A screenshot of the running job is saved to test-output/kiosk.png (and of the other steps next to
it: kiosk-badge.png, kiosk-declaration.png, kiosk-end.png).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select

from copeau.services import ManagedProcess, free_port
from orders.models import QualityDeclaration
from orders.progress import NS
from tests.conftest import Influx, wait_until
from tests.integration.test_web_api import KEYS, MILL, Harness, seed, web_workshop
from web.app import create_app

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
WAIT_S = 20.0

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):  # pragma: no cover - depends on the machine
    pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup-system.sh installs them)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only once chromium is known to be there)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@dataclass
class Served:
    url: str
    harness: Harness


@pytest.fixture
def served(tmp_path: Path, broker: ManagedProcess, influx: Influx) -> Iterator[Served]:
    """The app under uvicorn on a free loopback port, in a thread."""
    database = influx.new_database("kiosk")
    workshop = web_workshop(tmp_path, broker=broker, influx=influx, database=database)
    app = create_app(workshop, database_url=f"sqlite:///{tmp_path / 'copeau.sqlite'}", mqtt=True, progress=False,
                     kiosk_keys=KEYS)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=WAIT_S, what="uvicorn to start")
        codes = seed(app)
        yield Served(f"http://127.0.0.1:{port}", Harness(app, None, workshop, database, influx, codes))
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT_S)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def visible(driver: Any, element_id: str) -> bool:
    return bool(driver.find_element(By.ID, element_id).is_displayed())


def test_badge_job_parts_declaration_in_chromium(served: Served, browser: Any) -> None:
    driver = browser
    driver.get(f"{served.url}/kiosque/{MILL}?cle={KEYS[MILL]}")  # the key becomes a cookie, the address is clean
    wait_until(lambda: driver.current_url == f"{served.url}/kiosque/{MILL}", timeout=WAIT_S,
               what="the redirect to the kiosk without its key")
    wait_until(lambda: visible(driver, "step-idle"), timeout=WAIT_S, what="the idle kiosk")
    assert "Scannez votre badge" in text_of(driver, "step-idle")

    # The reader types into whatever has the focus: the kiosk keeps it on its scan field.
    driver.switch_to.active_element.send_keys("BADGE-ZOE" + Keys.ENTER)
    wait_until(lambda: text_of(driver, "greeting") == "Bonjour Zoé !", timeout=WAIT_S, what="the greeting")
    assert "CMD-2026-017/10" in text_of(driver, "planned") and "CMD-2026-017/20" not in text_of(driver, "planned")
    OUTPUT.mkdir(exist_ok=True)
    driver.save_screenshot(str(OUTPUT / "kiosk-badge.png"))
    driver.switch_to.active_element.send_keys("CMD-2026-017/10" + Keys.ENTER)
    wait_until(lambda: visible(driver, "step-running"), timeout=WAIT_S, what="the running job")
    assert text_of(driver, "job-title") == "Zoé — travail CMD-2026-017/10"
    session = served.harness.app.state.copeau.stations.view(machine=MILL, now=datetime.now(UTC))
    assert session.started_at is not None

    # The machine makes 3 parts (two part events, one second apart, after the session started).
    served.harness.write_parts(machine=MILL, order="CMD-2026-017", operation=10,
                               apprentice=served.harness.codes["BADGE-ZOE"], counts=[1, 2],
                               start_ns=int(session.started_at.timestamp() * NS) + NS, every_s=1.0, cycle_s=41.5)
    wait_until(lambda: text_of(driver, "session-parts") == "3", timeout=WAIT_S,
               what="the 3 parts on the kiosk (polled every 2 s)")
    assert text_of(driver, "job-good") == "3"
    assert text_of(driver, "job-target") == "objectif 20"
    assert text_of(driver, "last-cycle") == "41,5 s" and text_of(driver, "standard-cycle") == "standard 42,5 s"
    assert driver.save_screenshot(str(OUTPUT / "kiosk.png"))

    # End of job: 3 counted, one of them out of tolerance.
    driver.find_element(By.ID, "end-job").click()
    wait_until(lambda: visible(driver, "step-declare"), timeout=WAIT_S, what="the declaration form")
    assert driver.find_element(By.ID, "good").get_attribute("value") == "3"
    driver.find_element(By.CSS_SELECTOR, "button.step-btn[data-target='scrap-COTE'][data-step='1']").click()
    assert driver.find_element(By.ID, "good").get_attribute("value") == "2"
    assert text_of(driver, "declare-total") == "Déclarées : 3 — comptées par la machine : 3"
    driver.save_screenshot(str(OUTPUT / "kiosk-declaration.png"))
    driver.find_element(By.ID, "declare-submit").click()
    wait_until(lambda: visible(driver, "step-idle") and "Travail terminé, merci !" in text_of(driver, "message"),
               timeout=WAIT_S, what="the end of the session")
    driver.save_screenshot(str(OUTPUT / "kiosk-end.png"))

    with served.harness.app.state.copeau.sessions() as db:
        (declaration,) = db.scalars(select(QualityDeclaration)).all()
        assert (declaration.good, declaration.scrap, [(c.reason.code, c.count) for c in declaration.scrap_counts]) == (
            2, 1, [("COTE", 1)])
        assert declaration.session.ended_at is not None


def test_a_refusal_is_shown_in_plain_french(served: Served, browser: Any) -> None:
    driver = browser
    driver.get(f"{served.url}/kiosque/{MILL}?cle={KEYS[MILL]}")
    wait_until(lambda: visible(driver, "step-idle"), timeout=WAIT_S, what="the idle kiosk")
    driver.switch_to.active_element.send_keys("BADGE-PERDU" + Keys.ENTER)
    wait_until(lambda: visible(driver, "message"), timeout=WAIT_S, what="the refusal")
    assert text_of(driver, "message") == (
        "Badge inconnu (BADGE-PERDU). Demandez à votre maître professionnel de l'enregistrer.")
    assert visible(driver, "step-idle")

"""The pages in a real browser (Debian's headless Chromium) against a real daemon behind TLS
and basic auth, with targets whose failures the test controls: what a person sees on the
dashboard, a check's page, an incident's page, the public status page and the badges; that a
target's markup is shown, never run; that the public page shows nothing internal and that
everything else asks for credentials. The screenshots in docs/ are taken here
(scripts/screenshots)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.harness import browser
from tests.harness.certs import CertFactory
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.ports import free_port
from tests.harness.proc import PROBE

PASSWORD = "correct horse"
# What a sick target answers: shown as text on every page, never run.
HOSTILE = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2><b>bold</b>"


@pytest.fixture
async def banner() -> AsyncIterator[int]:
    """A TCP service whose banner is markup: the check expects SSH and fails saying what it
    got."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HOSTILE.encode() + b"\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
def site(tmp_path: Path, certs: CertFactory, target: Target, banner: int) -> ProbeProcess:
    browser.require()
    port = free_port()
    server = certs.issue(("127.0.0.1", "localhost"))
    shutil.copy(server.cert_file, tmp_path / "server.pem")
    shutil.copy(server.key_file, tmp_path / "server.key")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (tmp_path / "web.yml").write_text(f"""
tls_server_config: {{cert_file: server.pem, key_file: server.key}}
basic_auth_users: {{ops: {hashed}}}
""")
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent:
  name: pages
  state_dir: {tmp_path}/state
  listen: "127.0.0.1:{port}"
  web_config: {tmp_path}/web.yml
defaults: {{interval: 1s, retry_interval: 1s, timeout: 900ms, failure_threshold: 2,
           success_threshold: 1}}
ticketing: {{routes: {{local: {{backend: local}}}}}}
services:
  shop: {{description: The web shop, sla: 99.9%}}
  edge: {{description: The front door}}
status_page: {{title: Acme status, description: How our services are doing., public: true,
              services: [shop, edge]}}
checks:
  - name: storefront
    service: shop
    sla: 99.5%
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
  - name: gateway-ssh
    service: edge
    tcp: {{host: 127.0.0.1, port: {banner}, expect: "^SSH-2\\\\.0-"}}
""")
    return ProbeProcess(config, port, tmp_path / "state")


def url(probe: ProbeProcess, path: str, *, login: bool = True) -> str:
    credentials = f"ops:{PASSWORD.replace(' ', '%20')}@" if login else ""
    return f"https://{credentials}127.0.0.1:{probe.port}{path}"


def fetch(probe: ProbeProcess, path: str) -> tuple[int, str]:
    """Without credentials."""
    context = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(url(probe, path, login=False), context=context,
                                    timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def text(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def look_at_the_incident(probe: ProbeProcess, shots: Path) -> None:
    with browser.browser(insecure=True) as driver:
        driver.get(url(probe, "/"))
        seen = text(driver)
        assert "pages/shop/1" in seen and "pages/edge/1" in seen
        row = driver.find_element(By.XPATH, "//tr[.//a[normalize-space()='storefront']]")
        assert "down" in row.text  # a word, not only a colour
        # The target's markup is on the page as text, and nothing of it ran.
        assert "<script>window.pwned=1</script>" in seen
        assert driver.find_elements(By.TAG_NAME, "script") == []
        assert driver.find_elements(By.TAG_NAME, "img") == []
        assert driver.execute_script("return window.pwned === undefined")
        # The filters work without JavaScript: a plain form.
        Select(driver.find_element(By.NAME, "state")).select_by_value("down")
        driver.find_element(By.CSS_SELECTOR, "form button, form input[type=submit]").click()
        WebDriverWait(driver, 10).until(lambda d: "state=down" in d.current_url)
        assert "storefront" in text(driver)
        browser.screenshot(driver, "dashboard", shots)

        driver.get(url(probe, "/checks/storefront"))
        seen = text(driver)
        assert "99.5 %" in seen  # the SLA target
        # Fresh to the result: the minute being counted is in the figure already, some of
        # the time up and some down (never 0 % because nothing was written yet).
        day = driver.find_element(By.XPATH, "//tr[th[normalize-space()='24h']]").text
        figure = float(day.split()[1])
        assert 1 < figure < 99, day
        assert "%" in seen and "pages/shop/1" in seen
        browser.screenshot(driver, "check", shots)

        driver.find_element(By.LINK_TEXT, "pages/shop/1").click()
        seen = text(driver)
        assert "ticket opened" in seen and "first failed result" in seen


def look_at_the_status_page(probe: ProbeProcess, shots: Path) -> None:
    with browser.browser(insecure=True, width=390, height=800) as phone:
        phone.get(url(probe, "/status", login=False))
        seen = text(phone)
        assert "Acme status" in seen and "shop" in seen and "edge" in seen
        assert "outage" in seen.lower()  # edge is still failing: said in words
        browser.screenshot(phone, "status-phone", shots)
    with browser.browser(insecure=True) as driver:
        driver.get(url(probe, "/status", login=False))
        browser.screenshot(driver, "status", shots)


def look_at_the_report(report: Path, shots: Path) -> None:
    with browser.browser() as driver:
        driver.get(report.as_uri())
        seen = text(driver)
        assert "storefront" in seen and "shop" in seen
        assert "<script>" not in driver.page_source.split("</title>")[0]
        browser.screenshot(driver, "report", shots)


async def test_what_people_see_of_an_incident_in_a_browser(
        site: ProbeProcess, target: Target, tmp_path: Path) -> None:
    probe = site
    probe.start()
    await probe.wait("the daemon", lambda: "probe started" in probe.log_text())
    await probe.wait("the edge's incident", lambda: "incident opened group=edge"
                     in probe.log_text())
    await asyncio.sleep(3)
    target.down = True
    await probe.wait("the shop's ticket", lambda: "ticket opened route=local key=pages/shop/1"
                     in probe.log_text())
    shots = tmp_path / "shots"
    # Selenium blocks: in a thread, so that the targets in this event loop go on answering.
    await asyncio.to_thread(look_at_the_incident, probe, shots)

    target.down = False
    await probe.wait("the shop's recovery", lambda: "incident resolved group=shop"
                     in probe.log_text() or "ticket resolved route=local key=pages/shop/1"
                     in probe.log_text())

    # The public status page: no credentials, nothing internal.
    status, page = fetch(probe, "/status")
    assert status == 200
    for internal in ("127.0.0.1", "storefront", "gateway-ssh", "pwned", "HTTP 503",
                     "pages/shop", "expected"):
        assert internal not in page, internal
    await asyncio.to_thread(look_at_the_status_page, probe, shots)

    # Everything else asks for credentials; the listed services' badges do not.
    for path in ("/", "/checks/storefront", "/incidents/pages%2Fshop%2F1", "/metrics",
                 "/badges/checks/storefront/health.svg"):
        assert fetch(probe, path)[0] == 401, path
    status, svg = fetch(probe, "/badges/services/shop/uptime/24h.svg")
    assert status == 200
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "uptime 24h" in "".join(root.itertext())

    # The report's HTML form, as a browser prints it.
    today = await asyncio.to_thread(
        subprocess.run, [*PROBE, "report", "--config", str(probe.config), "--from",
                         time.strftime("%Y-%m-%d", time.gmtime()), "--format", "html"],
        capture_output=True, text=True, timeout=60)
    assert today.returncode == 0, today.stderr
    report = tmp_path / "report.html"
    report.write_text(today.stdout)
    await asyncio.to_thread(look_at_the_report, report, shots)

"""Debian's headless Chromium, driven by Debian's chromedriver through Selenium: pages tested
as a person sees them. Nothing is downloaded: the browser and the driver are the packages'
(scripts/test installs them), and Selenium is told where both are."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def available() -> bool:
    return Path(CHROMIUM).exists() and Path(DRIVER).exists()


def require() -> None:
    """Skip without the browser, unless the run requires it (CI: PROBE_REQUIRE_BROWSER=1)."""
    if available():
        return
    if os.environ.get("PROBE_REQUIRE_BROWSER"):
        pytest.fail("Debian's chromium and chromium-driver are required (scripts/test "
                    "installs them)")
    pytest.skip("Debian's chromium and chromium-driver are not installed")


@contextmanager
def browser(*, width: int = 1280, height: int = 1000, dark: bool = False,
            insecure: bool = False) -> Iterator[webdriver.Chrome]:
    require()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    if dark:
        options.add_argument("--force-dark-mode")
        options.add_argument("--blink-settings=preferredColorScheme=0")
    if insecure:  # the test's own CA, for a daemon behind TLS
        options.add_argument("--ignore-certificate-errors")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, name: str, directory: Path) -> Path:
    """The whole page as a PNG: the window grown to the page's height first. Into
    $PROBE_SCREENSHOTS when set (scripts/screenshots: docs/screenshots), else `directory`."""
    wanted = os.environ.get("PROBE_SCREENSHOTS")
    target = Path(wanted) if wanted else directory
    target.mkdir(parents=True, exist_ok=True)
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 20, 4000))
    path = target / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


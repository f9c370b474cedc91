"""Fixtures every test module may use. Peers (servers) live in their own modules under tests/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import checks
import probe
from tests.certs import CertFactory
from tests.proc import REPO
from tests.test_daemon import target  # noqa: F401 - the flaky HTTP target every daemon test uses


def pytest_configure(config: pytest.Config) -> None:
    """The suite tests the product people install, the wheel: probe must come from the
    virtualenv, not from this checkout (scripts/test builds and installs it). While working on
    the code, PROBE_TEST_FROM_CHECKOUT=1 with an editable install allows the checkout."""
    if os.environ.get("PROBE_TEST_FROM_CHECKOUT") == "1":
        return
    for package in (probe, checks):
        where = Path(package.__file__ or "").resolve()
        if where.is_relative_to(REPO / package.__name__):
            pytest.exit(f"{package.__name__} is imported from the checkout ({where}), not from "
                        "an installed wheel: run scripts/test, or scripts/install .venv --test "
                        "and then .venv/bin/pytest", returncode=4)


@pytest.fixture(autouse=True)
def no_daemon_left_behind() -> Iterator[None]:
    """Kill every `probe run` a test started and did not stop itself."""
    from tests.test_daemon import Probe

    yield
    while Probe.started:
        proc = Probe.started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFactory:
    return CertFactory(tmp_path_factory.mktemp("certs"))

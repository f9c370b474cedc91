"""The suite's guards: probe under test is the installed wheel, and no daemon outlives the test
that started it. The fixtures test modules share, and the peers (servers), are in
tests/harness/, registered here once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import checks
import probe
from tests.harness.daemon import ProbeProcess
from tests.harness.proc import REPO

pytest_plugins = ("tests.harness.fixtures", "tests.harness.rtpeer", "tests.harness.redminepeer",
                  "tests.harness.dnsserver", "tests.harness.postgres")


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
    yield
    while ProbeProcess.started:
        proc = ProbeProcess.started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

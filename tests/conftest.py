"""Fixtures every test module may use. Peers (servers) live in their own modules under tests/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.certs import CertFactory
from tests.test_daemon import target  # noqa: F401 - the flaky HTTP target every daemon test uses


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

"""Fixtures every test module may use. Peers (servers) live in their own modules under tests/."""

from __future__ import annotations

import pytest

from tests.certs import CertFactory


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFactory:
    return CertFactory(tmp_path_factory.mktemp("certs"))

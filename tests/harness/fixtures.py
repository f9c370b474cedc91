"""The fixtures many test modules share, registered once by tests/conftest.py (pytest_plugins);
a test asks for one by name and imports nothing for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.harness.certs import CertFactory
from tests.harness.daemon import Target
from tests.harness.httpserver import serve_app
from tests.harness.inloop import Runner


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """The flaky HTTP target, at http://127.0.0.1:{target.port}/health."""
    t = Target()
    app = web.Application()
    app.router.add_get("/health", t.handle)
    async with serve_app(app) as port:
        t.port = port
        yield t


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Runner]:
    """Daemons in the test's event loop, with their configuration in tmp_path; each one still
    running at the end is stopped."""
    runner = Runner(tmp_path)
    yield runner
    for daemon in list(runner.tasks):
        await runner.stop(daemon)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFactory:
    """A CA for the session, and certificates it issues."""
    return CertFactory(tmp_path_factory.mktemp("certs"))

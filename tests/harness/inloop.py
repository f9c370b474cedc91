"""The daemon run inside the test's own event loop (not a subprocess): the test reads its
engine and store directly, and ends it as SIGTERM would."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from probe.config import load
from probe.daemon import Daemon
from probe.store import Store
from tests.harness.configs import dumped
from tests.harness.helpdesk import Helpdesk
from tests.harness.ports import free_port


class Runner:
    """Starts daemons on a configuration in `directory`; `stop` ends one as SIGTERM would.

    `runner(body)` writes the agent section (name `t`, state in directory/state, a free port)
    followed by `body`, YAML text or a mapping, and starts a daemon on it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tasks: dict[Daemon, asyncio.Task[None]] = {}

    async def __call__(self, body: str | Mapping[str, Any]) -> tuple[Daemon, Helpdesk]:
        config = self.directory / "probe.yaml"
        text = body if isinstance(body, str) else dumped(body)
        config.write_text(f"""
agent: {{name: t, state_dir: {self.directory}/state, listen: "127.0.0.1:{free_port()}"}}
{text}
""")
        daemon = Daemon(config, load(config))
        self.tasks[daemon] = asyncio.create_task(daemon.serve())
        return daemon, Helpdesk(daemon.database)

    async def stop(self, daemon: Daemon) -> None:
        daemon.stopping.set()
        await asyncio.wait_for(self.tasks.pop(daemon), 10)


def sqlite(daemon: Daemon) -> Store:
    """The state file of a daemon that runs alone (no cluster)."""
    assert daemon.store is not None, "a cluster's daemon keeps no SQLite state"
    return daemon.store

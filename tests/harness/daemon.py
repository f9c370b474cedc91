"""`probe run` as a subprocess, the way an operator runs it (the installed console script), and
the flaky HTTP target most daemon tests point it at."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web

from tests.harness.proc import PROBE
from tests.harness.wait import until, until_blocking


class ProbeProcess:
    """One `probe run` process on `config`, listening on `port`, with its state in `state`
    (beside the configuration unless given) and its output in probe.log beside the state."""

    # Every process a test started: tests/conftest.py kills them after each test, so that a
    # failed test, or one that forgets, leaves no daemon running. A module-scoped fixture's
    # daemon serves several tests: it is made with `reaped=False`, and that fixture stops it.
    started: ClassVar[list[subprocess.Popen[bytes]]] = []

    def __init__(self, config: Path, port: int, state: Path | None = None, *,
                 env: dict[str, str] | None = None, reaped: bool = True) -> None:
        self.config, self.port = config, port
        self.state = state if state is not None else config.parent / "state"
        self.log = self.state.parent / "probe.log"
        self.env = {**os.environ, **(env or {})}
        self.reaped = reaped
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProbeProcess:
        """Starts the daemon and returns at once: wait for what the test needs to see."""
        return self.launch([*PROBE, "run", "--config", str(self.config)])

    def launch(self, command: list[str]) -> ProbeProcess:
        """Starts `command` as this daemon's process (a wrapper that execs probe in the end)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env)
        if self.reaped:
            ProbeProcess.started.append(self.proc)
        return self

    def start_blocking(self) -> ProbeProcess:
        """Starts the daemon and returns once it logged that it started (outside a loop)."""
        self.start()
        self.wait_blocking("the daemon to start", lambda: "probe started" in self.log_text())
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _running_and(self, condition: Callable[[], Any]) -> Callable[[], Any]:
        def check() -> Any:
            assert self.proc is not None and self.proc.poll() is None, self.log_text()
            return condition()

        return check

    async def wait(self, what: str, condition: Callable[[], Any], timeout: float = 20) -> Any:
        """`until` the condition holds while the daemon runs; its log if it never does. Not
        listening yet (OSError) counts as not yet; the daemon exiting ends the wait at once."""
        return await until(what, self._running_and(condition), timeout,
                           context=self.log_text, tolerate=(OSError,))

    def wait_blocking(self, what: str, condition: Callable[[], Any], timeout: float = 30) -> Any:
        """`wait` for code outside an event loop."""
        return until_blocking(what, self._running_and(condition), timeout,
                              context=self.log_text, tolerate=(OSError,))

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            body: bytes = r.read()
        return body.decode()

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.get("/api/status"))
        return data

    def metric(self, line_start: str) -> float | None:
        for line in self.get("/metrics").splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def command(self, *args: str) -> str:
        """Another probe command on this daemon's configuration: its stdout and stderr."""
        done = subprocess.run(
            [*PROBE, *args, "--config", str(self.config)],
            capture_output=True, text=True, env=self.env, timeout=60,
        )
        return done.stdout + done.stderr

    def db(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.state / "probe.sqlite3") as db:
            return db.execute(sql).fetchall()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def hup(self) -> None:
        self.signal(signal.SIGHUP)

    def reload_blocking(self) -> None:
        """SIGHUP, and return once the daemon logged the reload."""
        reloads = self.log_text().count("configuration reloaded")
        self.hup()
        self.wait_blocking("the reload",
                           lambda: self.log_text().count("configuration reloaded") > reloads)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, as systemd stops it; kill -9 if it has not gone in 15 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Target:
    """An HTTP target on /health that answers 200, or 503 while `down` is set."""

    def __init__(self) -> None:
        self.down = False
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503, text="broken")
        return web.Response(text="ok")

"""The daemon's loops under supervision, seen the way an operator sees them: /-/ready and
/-/healthy, probe_loop_failures_total, the log, the pings a stand-in for systemd receives on
$NOTIFY_SOCKET, and the exit status. Each fault is made from the test: a collaborator of a loop
made to raise or to hang, or a row in the state database that no release of probe writes."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from probe.daemon import Daemon
from probe.engine import Transition
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.inloop import Runner, sqlite
from tests.harness.ports import free_port
from tests.harness.wait import until

LOOPS = ("watchdog", "scheduler", "flusher", "ticker", "historian", "dispatcher", "watcher")
WATCHDOG = 4.0  # the WatchdogSec the tests' systemd asks for: a ping every 2 s

CONFIG = """
defaults: {{interval: 200ms, retry_interval: 100ms, timeout: 100ms}}
ticketing:
  poll_interval: 200ms
  routes: {{desk: {{backend: local}}}}
checks:
  - {{name: web, service: shop, http: {{url: "http://127.0.0.1:{port}/health"}}}}
"""


class Systemd:
    """A datagram socket where $NOTIFY_SOCKET points, as systemd binds it for a Type=notify
    service with WatchdogSec=, and every message probe sent it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[str] = []

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.messages.append((await loop.sock_recv(self.sock, 4096)).decode())

    def pings(self) -> int:
        return self.messages.count("WATCHDOG=1")


@pytest.fixture
async def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Systemd]:
    """The environment systemd gives the service, for the daemon run in the test's own loop
    and for a `probe run` the test starts (which inherits it)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG * 1_000_000)))
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        systemd = Systemd(sock)
        receiving = asyncio.create_task(systemd.receive())
        yield systemd
        receiving.cancel()


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[Runner]:
    runner = Runner(tmp_path)
    yield runner
    for daemon in list(runner.tasks):
        await runner.stop(daemon)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def answer(url: str, wanted: Callable[[int, str], bool], timeout: float = 30,
                 ) -> tuple[int, str]:
    """The first answer of `url` that is `wanted` (not listening yet counts as not yet)."""
    found: list[tuple[int, str]] = []

    async def look() -> bool:
        found[:] = [await get(url)]
        return wanted(*found[0])

    await until(f"an answer of {url} as wanted (last: {found})", look, timeout,
                tolerate=(aiohttp.ClientError, OSError))
    return found[0]


def endpoint(daemon: Daemon) -> str:
    return f"http://{daemon.config.agent.listen}"


def loop_failures(metrics: str) -> dict[str, float]:
    return {name: float(value) for name, value in re.findall(
        r'^probe_loop_failures_total\{loop="(\w+)"\} (\S+)$', metrics, re.MULTILINE)}


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "probe" and r.getMessage().startswith(message)]


async def test_a_loop_that_fails_is_logged_counted_and_named_by_readiness_until_it_runs_again(
    target: Target, daemons: Runner, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon, _ = await daemons(CONFIG.format(port=target.port))
    url = endpoint(daemon)
    await answer(f"{url}/-/ready", lambda status, body: body == "Ready\n")
    _, metrics = await get(f"{url}/metrics")
    assert loop_failures(metrics) == dict.fromkeys(LOOPS, 0.0)  # every series, from the start

    broken = True
    tick = daemon.engine.tick

    def clock_broke(now: float) -> list[Transition]:
        if broken:
            raise RuntimeError("the engine's clock broke")
        return tick(now)

    monkeypatch.setattr(daemon.engine, "tick", clock_broke)
    _, body = await answer(f"{url}/-/ready", lambda status, body: status == 503)
    assert body == ("Not ready: loop ticker failed (RuntimeError: the engine's clock broke): "
                    "restarting\n")
    # Being restarted is no reason for systemd, or a liveness probe, to restart probe.
    assert await get(f"{url}/-/healthy") == (200, "Healthy\n")

    broken = False
    await answer(f"{url}/-/ready", lambda status, body: body == "Ready\n")
    failures = records(caplog, "loop failed, restarting")
    assert failures
    for record in failures:
        assert record.levelno == logging.ERROR
        assert "loop=ticker" in record.getMessage()
        assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    _, metrics = await get(f"{url}/metrics")
    assert loop_failures(metrics) == {**dict.fromkeys(LOOPS, 0.0), "ticker": len(failures)}


async def test_a_stuck_loop_stops_the_watchdog_and_fails_health_until_it_moves_again(
    target: Target, systemd: Systemd, daemons: Runner, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon, _ = await daemons(CONFIG.format(port=target.port))
    url = endpoint(daemon)
    await until("the watchdog pinged", lambda: systemd.pings() >= 2, timeout=30)
    assert await get(f"{url}/-/healthy") == (200, "Healthy\n")

    # The dispatcher's next look at the outbox never comes back, as on a hung disk.
    released = threading.Event()
    run = sqlite(daemon).run

    def hung(work: Callable[[sqlite3.Connection], Any]) -> Any:
        released.wait()
        return run(work)

    monkeypatch.setattr(sqlite(daemon), "run", hung)
    try:
        # Stuck once late by WatchdogSec on top of its 5 s between looks.
        _, body = await answer(f"{url}/-/healthy", lambda status, body: status == 503,
                               timeout=60)
        assert re.fullmatch(r"Unhealthy: loop dispatcher makes no progress: none for \d+s, "
                            r"expected every 5s\n", body), body
        status, body = await get(f"{url}/-/ready")
        assert status == 503
        assert body.startswith("Not ready: loop dispatcher makes no progress: none for ")
        (stuck,) = await until("the log line", lambda: records(caplog, "loop makes no progress"))
        assert stuck.levelno == logging.ERROR
        assert "loop=dispatcher" in stuck.getMessage()
        assert 'watchdog="no longer pinged"' in stuck.getMessage()
        pings = systemd.pings()
        # A whole WatchdogSec without a ping: systemd would kill probe now. (Absence takes
        # the time it claims; nothing faster can show it.)
        await asyncio.sleep(WATCHDOG)
        assert systemd.pings() == pings
    finally:
        released.set()

    await answer(f"{url}/-/healthy", lambda status, body: body == "Healthy\n")
    await until("the watchdog pinged again", lambda: systemd.pings() > pings)
    (moving,) = await until("the log line", lambda: records(caplog, "loop makes progress again"))
    assert "loop=dispatcher" in moving.getMessage()
    _, metrics = await get(f"{url}/metrics")
    assert loop_failures(metrics) == dict.fromkeys(LOOPS, 0.0)  # stuck is not failed


async def test_a_loop_that_keeps_failing_stops_probe_with_exit_status_70_for_systemd_to_restart(
    target: Target, systemd: Systemd, tmp_path: Path,
) -> None:
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{name: a, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
{CONFIG.format(port=target.port)}""")
    probe = ProbeProcess(config, port).start()
    assert probe.proc is not None
    url = f"http://127.0.0.1:{port}"
    try:
        await answer(f"{url}/-/ready", lambda status, body: body == "Ready\n", timeout=60)
        await until("the watchdog pinged", lambda: systemd.pings() >= 1, timeout=30)

        # A row no release of probe writes (a hand edit, a restore from elsewhere): its due
        # time is text, which the dispatcher cannot compare with a time. Every look fails.
        with sqlite3.connect(tmp_path / "state" / "probe.sqlite3") as db:
            db.execute("INSERT INTO outbox (incident_key, action, route, created_at, payload,"
                       " next_attempt_at) VALUES ('a/ghost/1', 'open', 'desk', 0, '{}', 'soon')")
        _, body = await answer(f"{url}/-/ready", lambda status, body: status == 503)
        assert re.fullmatch(r"Not ready: loop dispatcher failed \(TypeError: .*\): restarting\n",
                            body), body
        _, metrics = await get(f"{url}/metrics")
        assert loop_failures(metrics)["dispatcher"] >= 1

        # Restarted after 1 s, 2 s and 4 s, it fails a fourth time: probe stops.
        assert await asyncio.to_thread(probe.proc.wait, 60) == 70
    finally:
        probe.stop()
    log = probe.log_text()
    assert log.count("ERROR loop failed, restarting loop=dispatcher error=\"TypeError: ") == 3
    assert "ERROR loop failed again, probe stops loop=dispatcher" in log
    assert log.count("Traceback (most recent call last):") == 4
    assert systemd.messages[-1] == "STOPPING=1\nSTATUS=stopping: loop dispatcher keeps failing"

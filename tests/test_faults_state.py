"""The state directory fills up under a running daemon, or is read-only when it starts: a clear
error, a metric and /-/ready failing (or nothing served until the state can be opened), no
crash and no crash loop — and when it takes writes again, the decisions taken meanwhile are
saved and their tickets delivered, once.

The state directory is a small tmpfs in a mount namespace of the daemon's own (unshare -m),
which the test fills, or mounts read-only, from inside that namespace (nsenter). (Linux will
not remount a filesystem read-only while the daemon holds its database open for writing, so a
state directory that turns read-only at run time reaches the daemon as failed writes, the path
the full disk takes too.)"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.daemon import ProbeProcess, Target
from tests.harness.ports import free_port
from tests.harness.proc import PROBE
from tests.harness.wait import until
from tests.reliability import record


class Jailed(ProbeProcess):
    """`probe run` with its state directory on a 4 MiB tmpfs in a mount namespace of its own."""

    read_only = False

    def start(self) -> Jailed:
        self.state.mkdir(parents=True, exist_ok=True)
        ro = f" && mount -o remount,ro {self.state}" if self.read_only else ""
        script = (f"mount -t tmpfs -o size=4m tmpfs {self.state}{ro} && "
                  f"exec {PROBE[0]} run --config {self.config}")
        self.launch(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
        return self

    def inside(self, *command: str) -> subprocess.CompletedProcess[str]:
        assert self.proc is not None
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", *command],
                              capture_output=True, text=True, timeout=60, check=False)

    def tickets(self) -> list[str]:
        done = self.inside(*PROBE, "tickets", "--config",
                           str(self.config))
        return [line for line in done.stdout.splitlines() if line.startswith("#")]


@pytest.fixture
def jailed(tmp_path: Path, target: Target) -> Jailed:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root, unshare and nsenter (util-linux) for a private tmpfs")
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{name: jail, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
defaults: {{interval: 1s, retry_interval: 200ms, timeout: 1s, failure_threshold: 3,
            success_threshold: 2}}
ticketing: {{routes: {{desk: {{backend: local}}}}}}
checks:
  - name: web
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
""")
    return Jailed(config, port, tmp_path / "state")


def ready(probe: ProbeProcess) -> int:
    try:
        probe.get("/-/ready")
    except OSError as err:
        return int(getattr(err, "code", 0))
    return 200


async def test_a_full_state_directory_and_its_recovery(jailed: Jailed, target: Target) -> None:
    jailed.start()
    await jailed.wait("the daemon", lambda: ready(jailed) == 200)
    await jailed.wait("a first result", lambda: jailed.status()["checks"][0]["state"] == "up")
    jailed.inside("dd", "if=/dev/zero", f"of={jailed.state}/filler", "bs=64k")
    target.down = True
    await jailed.wait("the incident", lambda: bool(jailed.status()["incidents"]))
    await jailed.wait("ready to fail", lambda: ready(jailed) == 503)
    assert jailed.metric("probe_state_writable") == 0
    errors = jailed.metric("probe_state_write_errors_total") or 0
    await asyncio.sleep(2)  # still alive, still trying, not crashing in a loop
    assert jailed.proc is not None and jailed.proc.poll() is None
    assert (jailed.metric("probe_state_write_errors_total") or 0) > errors
    log = jailed.log.read_text()
    assert log.count("state not saved, retrying") == 1  # said once, not at every retry
    assert "database or disk is full" in log
    assert jailed.tickets() == []  # the decision waits in memory with its ticket action

    jailed.inside("rm", f"{jailed.state}/filler")
    await jailed.wait("ready again", lambda: ready(jailed) == 200, 20)
    assert jailed.metric("probe_state_writable") == 1
    tickets = await until("the ticket", jailed.tickets, 20)
    assert len(tickets) == 1 and "jail/web" not in tickets[0]  # the title, not the key
    target.down = False
    await jailed.wait("the resolve", lambda: not jailed.status()["incidents"])
    await until("the ticket resolved",
                lambda: [t for t in jailed.tickets() if "resolved" in t], 20)
    assert len(jailed.tickets()) == 1
    record("process faults", "state directory full, then freed", expected=1,
           found=len(jailed.tickets()),
           outcome="/-/ready 503 and probe_state_writable 0 meanwhile; no crash; "
                   "one ticket after, resolved")


async def test_a_read_only_state_directory_at_start_is_waited_for(
    jailed: Jailed, target: Target
) -> None:
    jailed.read_only = True
    target.down = True
    jailed.start()
    await until("the error", lambda: "cannot open the state, retrying" in jailed.log.read_text(),
                20)
    assert f"cannot write the state directory {jailed.state}: Read-only file system" in (
        jailed.log.read_text())
    await asyncio.sleep(2)
    assert jailed.proc is not None and jailed.proc.poll() is None  # waiting, not crashing
    assert ready(jailed) != 200
    assert jailed.inside("mount", "-o", "remount,rw", str(jailed.state)).returncode == 0
    await jailed.wait("the daemon", lambda: ready(jailed) == 200, 30)
    tickets = await until("the ticket", jailed.tickets, 20)
    record("process faults", "state directory read-only at start, then writable",
           expected=1, found=len(tickets),
           outcome="a clear error, retried every 10s without exiting; starts when writable")
    assert len(tickets) == 1


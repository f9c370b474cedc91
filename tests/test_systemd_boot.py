"""systemd/probe.service under a real systemd 252: a minimal Debian 12 booted in a container,
probe installed by the README's "Running it as a service" commands, run as written.

Where tests/test_systemd.py reads the unit file offline, this module watches systemd run it:
readiness (Type=notify), the state directory of a dynamic user across restarts, a reload that
returns once the new configuration runs and fails on a broken file, the watchdog, a credential
handed to a route, a quick stop, and the exposure systemd-analyze rates online.

The container's network is its own, loopback only: probe's 127.0.0.1:9469 and the ssh check's
127.0.0.1:22 are the container's, whatever the host runs; the test talks to them from inside
(tests/nspawn.py). Only pip, in the README's install block, reaches out, to PyPI.

The tests run in the order written, each on what the ones before left: a boot and the install
take about 20 s (the root file system is built once, in about a minute, and cached under
.cache/systemd-boot), and the unit's story (start, restart, reload, hang, stop) is one
machine's.
Root only; skipped where debootstrap or systemd-nspawn are missing, unless
PROBE_REQUIRE_SYSTEMD=1 (CI), where that fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests import nspawn

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "systemd-boot"
CHECKOUT = "/root/probe"  # the README runs "as root, from a clone of this repository"
PORT = 9469  # config/service.yaml's agent.listen, on the container's own loopback
MAX_EXPOSURE = 2.0  # as tests/test_systemd.py; the unit rates 1.5 offline


def service_install_block(readme: str) -> list[str]:
    """The commands of the first ```sh block after the heading "## Running it as a service",
    a line ending in a backslash joined to the next."""
    _, found, section = readme.partition("\n## Running it as a service\n")
    assert found, "README.md has no section '## Running it as a service'"
    block = re.search(r"^```sh\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert block, "no ```sh block in README.md's 'Running it as a service'"
    joined = block[1].replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def machine() -> Iterator[nspawn.Container]:
    """A booted Debian 12 where the README's install block has run: probe installed in
    /opt/probe, configured in /etc/probe, its unit enabled and started."""
    why = nspawn.missing()
    if why:
        if os.environ.get("PROBE_REQUIRE_SYSTEMD") == "1":
            pytest.fail(f"PROBE_REQUIRE_SYSTEMD=1, but {why}")
        pytest.skip(why)
    tarball = nspawn.pristine_root(CACHE)
    # pip in the container trusts what the host trusts: on a network that inspects TLS, the
    # host's store holds the inspecting authority, which a fresh Debian's lacks.
    binds = [nspawn.HOST_CA_BUNDLE] if nspawn.HOST_CA_BUNDLE.exists() else []
    with nspawn.boot(tarball, binds) as box:
        nspawn.copy_checkout(REPO, box.path(CHECKOUT))
        # One command at a time, each its exit status checked: in a script under `set -e`,
        # `scripts/install ... && ln ...` that fails on its left does not stop the script,
        # and the next line would fail instead, for the wrong reason.
        for command in service_install_block((REPO / "README.md").read_text(encoding="utf-8")):
            done = box.run("bash", "-euo", "pipefail", "-c", f"cd {CHECKOUT} && {command}",
                           network="host", env=nspawn.host_environment(), timeout=600,
                           check=False)
            if done.returncode:
                journal = box.run("journalctl", "--no-pager", "-n", "40", "-u", "probe",
                                  check=False).stdout
                pytest.fail(f"README.md's `{command}` exited {done.returncode}:\n"
                            f"{done.stdout}{done.stderr}\njournal:\n{journal}")
        yield box


# --- what the tests read and do --------------------------------------------------------------

def show(box: nspawn.Container, *properties: str) -> dict[str, str]:
    done = box.run("systemctl", "show", "probe", *(f"--property={p}" for p in properties))
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def systemctl(box: nspawn.Container, *args: str) -> None:
    box.run("systemctl", *args, "probe")


def get(box: nspawn.Container, path: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        # http.client rather than urllib: a proxy in the test's environment must not be asked
        # for the container's loopback.
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    return box.in_network(fetch)


def status(box: nspawn.Container) -> dict[str, Any]:
    code, body = get(box, "/api/status")
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def check_names(box: nspawn.Container) -> list[str]:
    return sorted(c["name"] for c in status(box)["checks"])


# "#1     new       urgent  -          2026-12-03 15:25  [probe] ssh DOWN — ..."
TICKET = re.compile(r"^#(\d+)\s+\S+\s+\S+\s+\S+\s+\d{4}-\d\d-\d\d \d\d:\d\d  (.*)$")


def tickets(box: nspawn.Container) -> list[tuple[int, str]]:
    """`probe tickets`, as the README has root read them: (number, title) of each."""
    listing = box.run("probe", "tickets", "--config", "/etc/probe").stdout
    return [(int(m[1]), m[2]) for m in map(TICKET.match, listing.splitlines()) if m]


def journal_cursor(box: nspawn.Container) -> str:
    shown = box.run("journalctl", "--no-pager", "-n", "0", "--show-cursor").stdout
    return shown.rsplit("-- cursor: ", 1)[1].strip()


def journal_after(box: nspawn.Container, cursor: str, wanted: str) -> str:
    """probe's journal since `cursor`, once it holds `wanted` (or after 5 s). journald reads a
    service's output from a stream: a line written before systemctl returned may be read just
    after."""
    deadline = time.monotonic() + 5
    while True:
        text = box.run("journalctl", "--no-pager", "-o", "cat", "-u", "probe",
                       f"--after-cursor={cursor}").stdout
        if wanted in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def write(box: nspawn.Container, path: str, text: str, mode: int = 0o644) -> None:
    target = box.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    target.chmod(mode)


def drop_in(box: nspawn.Container, name: str, text: str) -> None:
    """A drop-in for probe.service, taken by systemd now. The start limit is reset too: the
    module starts probe about as often as StartLimitBurst= allows in its interval, which is the
    point of the limit, not of these tests."""
    write(box, f"/etc/systemd/system/probe.service.d/{name}.conf", text)
    box.run("systemctl", "daemon-reload")
    systemctl(box, "reset-failed")


def wait_for(what: str, condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ssh_ticket(machine: nspawn.Container) -> int:
    """The number of the local ticket for the ssh check's outage (no SSH server listens in
    the container): it opens after failure_threshold 3 checks, retry_interval 10s apart."""
    wait_for("the ssh ticket", lambda: tickets(machine), timeout=60)
    [(number, title)] = tickets(machine)
    assert "ssh DOWN" in title, title
    return number


# --- the unit, under systemd -------------------------------------------------------------------

def test_systemctl_start_returns_once_probe_says_it_is_ready(
        machine: nspawn.Container) -> None:
    assert machine.run("systemctl", "is-active", "probe").stdout.strip() == "active"
    # Type=notify: the STATUS= that probe sends with READY=1 is the unit's StatusText.
    state = show(machine, "StatusText", "Type", "NotifyAccess")
    assert re.fullmatch(r"2 checks, \d+ open incidents", state["StatusText"]), state
    assert (state["Type"], state["NotifyAccess"]) == ("notify", "main")


def test_metrics_answer_on_the_loopback_the_configuration_names(
        machine: nspawn.Container) -> None:
    code, metrics = get(machine, "/metrics")
    assert code == 200
    assert "probe_config_last_reload_successful 1.0" in metrics
    assert re.search(r'^probe_build_info\{.*\} 1\.0$', metrics, re.MULTILINE), metrics[:2000]


def test_the_ssh_outage_opens_one_local_ticket(machine: nspawn.Container,
                                              ssh_ticket: int) -> None:
    assert [n for n, _ in tickets(machine)] == [ssh_ticket]
    [incident] = status(machine)["incidents"]
    assert incident["checks"] == ["ssh"]


def test_a_restart_keeps_the_dynamic_users_state_and_the_same_ticket(
        machine: nspawn.Container, ssh_ticket: int) -> None:
    before = show(machine, "MainPID")["MainPID"]
    systemctl(machine, "restart")
    after = show(machine, "MainPID")["MainPID"]
    assert after != before
    # DynamicUser=yes: a user systemd allocates, not root; its state directory outlives it.
    process = machine.run("cat", f"/proc/{after}/status").stdout
    uid = int(re.findall(r"^Uid:\s+(\d+)", process, re.MULTILINE)[0])
    assert 61184 <= uid <= 65519, f"probe runs as uid {uid}, not a dynamic user"
    assert [n for n, _ in tickets(machine)] == [ssh_ticket]
    [incident] = status(machine)["incidents"]
    assert incident["checks"] == ["ssh"]


def test_systemctl_reload_returns_once_the_new_configuration_runs(
        machine: nspawn.Container) -> None:
    before = check_names(machine)
    write(machine, "/etc/probe/reloaded.yaml",
          "checks:\n"
          "  - name: added-by-reload\n"
          f'    http: {{url: "http://127.0.0.1:{PORT}/-/healthy"}}\n')
    done = machine.run("systemctl", "reload", "probe", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # No wait here: `probe reload` (ExecReload) returns once the daemon runs the new files.
    assert show(machine, "StatusText")["StatusText"].startswith(f"{len(before) + 1} checks, ")
    assert check_names(machine) == sorted([*before, "added-by-reload"])


def test_systemctl_reload_of_a_broken_file_fails_and_keeps_the_running_configuration(
        machine: nspawn.Container) -> None:
    before = check_names(machine)
    running = show(machine, "MainPID", "StatusText")
    cursor = journal_cursor(machine)
    write(machine, "/etc/probe/broken.yaml",
          "checks:\n"
          "  - name: broken\n"
          "    interval: soon\n"
          "    tcp: {host: 127.0.0.1, port: 9}\n")
    try:
        done = machine.run("systemctl", "reload", "probe", check=False)
        error = "/etc/probe/broken.yaml:3: checks[0].interval: 'soon' is not a duration"
        journal = journal_after(machine, cursor, error)
    finally:
        machine.path("/etc/probe/broken.yaml").unlink()
    assert done.returncode != 0
    assert error in journal, journal
    assert machine.run("systemctl", "is-active", "probe").stdout.strip() == "active"
    assert show(machine, "MainPID", "StatusText") == running
    assert check_names(machine) == before


def test_the_watchdog_restarts_a_hung_probe_without_a_second_ticket(
        machine: nspawn.Container, ssh_ticket: int) -> None:
    # The unit's 30 s would make this test wait half a minute for the kill; probe pings at half
    # of whatever WatchdogSec= says (WATCHDOG_USEC, read at start: hence the restart), so 3 s
    # takes the same path.
    drop_in(machine, "watchdog", "[Service]\nWatchdogSec=3s\n")
    systemctl(machine, "restart")
    hung = show(machine, "MainPID", "NRestarts", "WatchdogUSec")
    assert hung["WatchdogUSec"] == "3s"
    cursor = journal_cursor(machine)
    machine.run("systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", "probe")

    def restarted() -> bool:
        now = show(machine, "MainPID", "ActiveState", "SubState")
        return now["MainPID"] not in ("0", hung["MainPID"]) and \
            (now["ActiveState"], now["SubState"]) == ("active", "running")

    # 3 s to notice, the kill, RestartSec=5s, a start: about 10 s.
    wait_for("systemd to restart the hung probe", restarted, timeout=40)
    assert int(show(machine, "NRestarts")["NRestarts"]) == int(hung["NRestarts"]) + 1
    journal = journal_after(machine, cursor, "Scheduled restart job")
    assert "probe.service: Watchdog timeout (limit 3s)!" in journal, journal
    assert "probe.service: Failed with result 'watchdog'." in journal, journal
    assert [n for n, _ in tickets(machine)] == [ssh_ticket]


async def test_a_route_reads_its_secret_through_load_credential(
        machine: nspawn.Container) -> None:
    secret = secrets.token_hex(16)
    received: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # The helpdesk listens on the container's loopback, where probe can reach it.
    listener = machine.in_network(lambda: socket.create_server(("127.0.0.1", 0)))
    await web.SockSite(runner, listener).start()
    port = listener.getsockname()[1]
    try:
        # Root's file, 0600: the dynamic user cannot read it. Only systemd's copy under
        # /run/credentials can have given probe the key that signs the body.
        write(machine, "/etc/probe/credentials/hook", secret, mode=0o600)
        machine.path("/etc/probe/credentials").chmod(0o700)
        write(machine, "/etc/probe/hook.yaml",
              "ticketing:\n"
              "  routes:\n"
              f'    hook: {{backend: webhook, url: "http://127.0.0.1:{port}/hook",\n'
              "           secret_file: /run/credentials/probe.service/hook}\n"
              "checks:\n"
              "  - name: hook-target\n"
              "    description: a port nothing listens on, its outage sent to the webhook\n"
              "    interval: 1s\n"
              "    timeout: 1s\n"
              "    failure_threshold: 1\n"
              "    ticket: {route: hook}\n"
              "    tcp: {host: 127.0.0.1, port: 9}\n")
        await asyncio.to_thread(drop_in, machine, "credential",
                                "[Service]\nLoadCredential=hook:/etc/probe/credentials/hook\n")
        # A credential is handed over at start: a reload cannot add one.
        await asyncio.to_thread(systemctl, machine, "restart")
        headers, body = await asyncio.wait_for(received.get(), timeout=30)
    finally:
        await runner.cleanup()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Probe-Signature-256"] == signature
    assert headers["X-Probe-Event"] == "open"
    assert json.loads(body)["key"].startswith("first-service/hook-target/")


def test_systemd_analyze_security_rates_the_running_unit_at_most_2(
        machine: nspawn.Container) -> None:
    done = machine.run("systemd-analyze", "security", "--no-pager", "probe.service",
                       check=False)
    found = re.search(r"Overall exposure level for probe\.service: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    weak = "\n".join(line for line in done.stdout.splitlines() if line.startswith("✗"))
    assert float(found[1]) <= MAX_EXPOSURE, f"exposure {found[1]}, what costs it:\n{weak}"


def test_systemctl_stop_is_quick_and_leaves_the_unit_inactive_not_failed(
        machine: nspawn.Container) -> None:
    started = time.monotonic()
    systemctl(machine, "stop")
    took = time.monotonic() - started
    # TimeoutStopSec=10s is the limit; a probe that needs half of it to stop is hanging.
    assert took < 5, f"systemctl stop took {took:.1f}s"
    assert show(machine, "ActiveState", "Result") == {"ActiveState": "inactive",
                                                      "Result": "success"}

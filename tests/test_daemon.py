"""`probe run` for real, as a subprocess, against a target the test turns off and on: the
incident opens after exactly failure_threshold failures, resolves after success_threshold
successes, survives kill -9 in between, and the metrics endpoint shows each step."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemon import ProbeProcess, Target
from tests.harness.ports import free_port
from tests.harness.proc import PROBE


@pytest.fixture
def make_probe(tmp_path: Path) -> Iterator[Callable[[str], ProbeProcess]]:
    made: list[ProbeProcess] = []

    def make(checks_yaml: str) -> ProbeProcess:
        port = free_port()
        config = tmp_path / "probe.yaml"
        config.write_text(f"""
agent: {{name: test-agent, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
defaults:
  interval: 300ms
  retry_interval: 200ms
  timeout: 200ms
  failure_threshold: 3
  success_threshold: 2
ticketing: {{routes: {{local: {{backend: local}}}}}}
{checks_yaml}
""")
        probe = ProbeProcess(config, port, tmp_path / "state")
        made.append(probe)
        return probe

    yield make
    for probe in made:
        if probe.proc is not None and probe.proc.poll() is None:
            probe.proc.kill()
            probe.proc.wait(10)


def web_check(target: Target) -> str:
    return f"""
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
"""


def open_incident(probe: ProbeProcess) -> dict[str, Any] | None:
    incidents = probe.status()["incidents"]
    return incidents[0] if incidents else None


async def test_an_incident_opens_after_exactly_the_threshold_and_survives_kill_9(
    target: Target, make_probe: Callable[[str], ProbeProcess]
) -> None:
    probe = make_probe(web_check(target))
    probe.start()
    await probe.wait("the first successful check",
                     lambda: probe.metric('probe_success{check="web",kind="http",service="shop"}')
                     == 1)
    assert probe.metric('probe_incident_open{group="shop"}') == 0

    target.down = True
    down_at = time.time()
    await probe.wait("the incident", lambda: open_incident(probe) is not None)
    incident = open_incident(probe)
    assert incident is not None
    assert (incident["group"], incident["why"]) == ("shop", "3 consecutive failures")
    assert incident["reason"] == "HTTP 503 (expected 2xx)"
    assert incident["key"] == "test-agent/shop/1"
    assert probe.metric('probe_incident_open{group="shop"}') == 1
    # exactly three failed results came before the decision
    await probe.wait("the incident on disk", lambda: bool(probe.db("SELECT * FROM incidents")))
    ((opened_at,),) = probe.db("SELECT opened_at FROM incidents")
    failed_before = probe.db(
        f"SELECT COUNT(*) FROM results WHERE state = 'down' AND at >= {down_at - 1}"
        f" AND at < {opened_at}"
    )[0][0]
    assert failed_before == 3

    probe.kill9()
    probe.start()
    await probe.wait("the restarted daemon",
                     lambda: probe.metric('probe_incident_open{group="shop"}') == 1)
    assert open_incident(probe) == incident | {"reason": incident["reason"]}

    target.down = False
    await probe.wait("the recovery", lambda: open_incident(probe) is None)
    assert probe.metric('probe_incident_open{group="shop"}') == 0
    assert probe.metric('probe_incidents_resolved_total{group="shop"}') == 1
    # one incident in all, opened once and resolved once, despite the kill -9
    await probe.wait("the resolve on disk",
                     lambda: probe.db("SELECT resolved_at FROM incidents")[0][0] is not None)
    assert probe.db("SELECT key FROM incidents") == [("test-agent/shop/1",)]
    assert probe.db("SELECT incident_key, action, route FROM outbox ORDER BY id") == [
        ("test-agent/shop/1", "open", "local"),
        ("test-agent/shop/1", "resolve", "local"),
    ]
    # the resolve came after exactly two successes
    ((resolved_at,),) = probe.db("SELECT resolved_at FROM incidents")
    last_down = probe.db("SELECT MAX(at) FROM results WHERE state = 'down'")[0][0]
    ups = probe.db(f"SELECT COUNT(*) FROM results WHERE state = 'up' AND at > {last_down}"
                   f" AND at < {resolved_at}")[0][0]
    assert ups == 2

    started = time.monotonic()
    probe.signal(signal.SIGTERM)
    assert probe.proc is not None
    assert probe.proc.wait(10) == 0
    assert time.monotonic() - started < 5


async def test_a_reload_with_a_broken_file_keeps_the_old_configuration(
    target: Target, make_probe: Callable[[str], ProbeProcess]
) -> None:
    probe = make_probe(web_check(target))
    probe.start()
    await probe.wait("the daemon", lambda: probe.metric("probe_config_last_reload_successful")
                     == 1)
    good = probe.config.read_text()
    probe.config.write_text(good + "  - name: broken\n    tcp: {host: h, port: 0}\n")
    probe.signal(signal.SIGHUP)
    await probe.wait("the refused reload",
                     lambda: probe.metric("probe_config_last_reload_successful") == 0)
    assert [c["name"] for c in probe.status()["checks"]] == ["web"]
    assert "reload refused" in probe.log.read_text()
    assert "checks[1].tcp.port: 0 is not a port (1-65535)" in probe.log.read_text()

    probe.config.write_text(good + f"""  - name: second
    tcp: {{host: 127.0.0.1, port: {target.port}}}
""")
    body = await asyncio.to_thread(_post, f"http://127.0.0.1:{probe.port}/-/reload")
    assert body == "Reloaded\n"
    assert probe.metric("probe_config_last_reload_successful") == 1
    assert [c["name"] for c in probe.status()["checks"]] == ["web", "second"]
    await probe.wait("the new check's first result",
                     lambda: probe.status()["checks"][1]["state"] == "up")


def reload(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROBE, "reload", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=90, check=False)


async def test_probe_reload_returns_once_the_daemon_runs_the_new_files_or_says_why_not(
    target: Target, make_probe: Callable[[str], ProbeProcess]
) -> None:
    probe = make_probe(web_check(target))
    probe.start()
    await probe.wait("the daemon", lambda: probe.metric("probe_config_last_reload_successful")
                     == 1)
    assert probe.proc is not None
    good = probe.config.read_text()
    probe.config.write_text(good + f"""  - name: second
    tcp: {{host: 127.0.0.1, port: {target.port}}}
""")
    done = await asyncio.to_thread(reload, probe.config)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"reloaded: process {probe.proc.pid} runs the new configuration\n", "")
    # no wait: when `probe reload` (systemctl reload) returns, the new configuration runs
    assert [c["name"] for c in probe.status()["checks"]] == ["web", "second"]

    # A broken file is refused before the daemon hears of it, with file, line and key.
    running = probe.config.read_text()
    probe.config.write_text(good + "  - name: broken\n    tcp: {host: h, port: 0}\n")
    done = await asyncio.to_thread(reload, probe.config)
    assert done.returncode == 1
    assert f"{probe.config}:17: checks[1].tcp.port: 0 is not a port (1-65535)" in done.stderr
    assert [c["name"] for c in probe.status()["checks"]] == ["web", "second"]

    # A file that breaks between the check and the daemon's own reading: the daemon's refusal
    # is the answer (the same state directory, a valid copy validated).
    valid = probe.config.with_name("valid.yaml")
    valid.write_text(running)
    done = await asyncio.to_thread(reload, valid, "--pid", str(probe.proc.pid))
    assert done.returncode == 1
    assert done.stderr.splitlines()[:2] == [
        "reload refused, the running configuration stays:",
        f"{probe.config}:17: checks[1].tcp.port: 0 is not a port (1-65535)"]
    assert probe.metric("probe_config_last_reload_successful") == 0
    assert [c["name"] for c in probe.status()["checks"]] == ["web", "second"]

    probe.signal(signal.SIGTERM)
    assert probe.proc.wait(10) == 0
    done = await asyncio.to_thread(reload, valid)
    assert done.returncode == 2
    assert done.stderr == (f"reload: probe is not running: {probe.state}/daemon.json does not "
                           "exist (give --pid PID to signal a daemon that cannot write it)\n")
    done = await asyncio.to_thread(reload, valid, "--pid", str(probe.proc.pid))
    assert (done.returncode, done.stderr) == (
        2, f"reload: probe is not running: no process {probe.proc.pid}\n")


async def test_a_check_removed_with_an_open_incident_resolves_and_its_series_go(
    target: Target, make_probe: Callable[[str], ProbeProcess]
) -> None:
    probe = make_probe(web_check(target) + f"""
  - name: closed
    tcp: {{host: 127.0.0.1, port: {free_port()}}}
""")
    probe.start()
    await probe.wait("the incident", lambda: open_incident(probe) is not None)
    assert open_incident(probe)["group"] == "closed"  # type: ignore[index]
    assert 'check="closed"' in probe.get("/metrics")
    probe.config.write_text(probe.config.read_text().split("  - name: closed")[0])
    probe.signal(signal.SIGHUP)
    await probe.wait("the resolve", lambda: open_incident(probe) is None)
    assert 'check="closed"' not in probe.get("/metrics")
    await probe.wait("the resolve on disk", lambda: len(probe.db("SELECT * FROM outbox")) == 2)
    assert probe.db("SELECT action, route FROM outbox ORDER BY id") == [
        ("open", "local"), ("resolve", "local"),
    ]
    assert "removed from the configuration" in probe.db("SELECT facts FROM incidents")[0][0]


async def test_health_readiness_and_promtool(
    target: Target, make_probe: Callable[[str], ProbeProcess]
) -> None:
    probe = make_probe(web_check(target) + """
  - {name: ping, icmp: {host: 127.0.0.1, interval: 10ms}}
  - {name: cert, tls: {host: 127.0.0.1, port: 1}}
""")
    probe.start()
    await probe.wait("readiness", lambda: probe.get("/-/ready") == "Ready\n")
    assert probe.get("/-/healthy") == "Healthy\n"
    await probe.wait("every check's first result",
                     lambda: all(c["state"] for c in probe.status()["checks"]))
    # every kind runs on the daemon's own event loop (uvloop) as it does under `probe check`
    states = {c["name"]: (c["state"], c["reason"]) for c in probe.status()["checks"]}
    assert states["ping"] == ("up", "")
    assert states["cert"][0] == "down"
    text = probe.get("/metrics")
    for expected in (
        'probe_http_duration_seconds{check="web",kind="http",service="shop",phase="processing"}',
        'probe_http_status_code{check="web",kind="http",service="shop"} 200.0',
        "probe_check_schedule_lag_seconds_bucket",
        "probe_build_info{",
        "process_resident_memory_bytes",
    ):
        assert expected in text
    # what probe is built from, as `probe --version` says it
    (build,) = [line for line in text.splitlines() if line.startswith("probe_build_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', build))
    version = (await asyncio.to_thread(
        subprocess.run, [*PROBE, "--version"], capture_output=True, text=True, timeout=30,
        check=True)).stdout.splitlines()
    shown = dict(line.split(None, 1) for line in version[1:])
    assert labels["version"] == version[0].removeprefix("probe ") == "0.2.0"
    assert labels["pythonversion"] == shown["python"].split()[0]
    for name in ("openssl", "uvloop", "aiohttp", "aiosmtplib", "cryptography", "pyyaml"):
        assert labels[name] == shown[name], name
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    lint = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True,
        text=True, timeout=30,
    )
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")


async def test_metrics_count_the_checks_running_right_now(
    make_probe: Callable[[str], ProbeProcess]
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, and never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    probe = make_probe(f"""
checks:
  - {{name: hangs, timeout: 2s, interval: 2s, http: {{url: "http://127.0.0.1:{port}/"}}}}
""")
    probe.start()
    await probe.wait("the hanging check to be counted",
                     lambda: "probe_checks_in_flight 1.0" in probe.get("/metrics"))
    server.close()


def _post(url: str) -> str:
    request = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def test_status_prints_checks_and_incidents(tmp_path: Path) -> None:
    """`probe status` against a daemon that is not running says so and exits 2."""
    result = subprocess.run(
        [*PROBE, "status", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30, env=os.environ.copy(),
    )
    assert result.returncode == 2
    assert "cannot read the status from" in result.stderr

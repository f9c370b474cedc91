"""`probe report` on what a real daemon recorded: a scenario whose downtime the test knows to
the second (a target it turns off and on), a blip under the threshold that is no outage, the
time before monitoring began as n/a, and the CSV's exact columns."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.daemon import ProbeProcess, Target
from tests.harness.ports import free_port
from tests.harness.proc import PROBE

INTERVAL = 1.0
COLUMNS = ["kind", "name", "service", "from", "to", "availability_percent", "downtime_seconds",
           "maintenance_seconds", "na_seconds", "incidents", "mtta_seconds", "mttr_seconds",
           "sla_percent", "sla_met"]


def report(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROBE, "report", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, cwd="/")


@pytest.fixture
def scenario(tmp_path: Path, target: Target) -> ProbeProcess:
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{name: sla, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
defaults:
  interval: {INTERVAL}s
  retry_interval: {INTERVAL}s
  timeout: 500ms
  failure_threshold: 2
  success_threshold: 1
ticketing: {{routes: {{local: {{backend: local}}}}, poll_interval: 1s}}
services:
  shop: {{sla: 99.9%}}
checks:
  - name: web
    service: shop
    sla: 50%
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
""")
    return ProbeProcess(config, port, tmp_path / "state")


async def test_the_report_gives_the_scenarios_availability_within_one_interval(
        scenario: ProbeProcess, target: Target) -> None:
    probe = scenario
    probe.start()
    await probe.wait("the daemon", lambda: "probe started" in probe.log_text())
    await probe.wait("the first results", lambda: len(probe.db("SELECT * FROM results")) >= 3)
    # A blip: one failed result, under failure_threshold: no incident, no downtime.
    target.down = True
    await probe.wait("the blip", lambda: probe.db(
        "SELECT count(*) FROM results WHERE state = 'down'")[0][0] == 1, timeout=5)
    target.down = False
    await asyncio.sleep(4 * INTERVAL)
    # The outage the test knows to the second.
    target.down = True
    down_at = time.time()
    await probe.wait("the incident", lambda: bool(probe.status()["incidents"]))
    await probe.wait("its ticket", lambda: bool(probe.db("SELECT * FROM tickets")))
    await asyncio.sleep(3)
    # Someone takes the ticket in the helpdesk; the watcher sees it at its next poll.
    acked = await asyncio.to_thread(subprocess.run, [*PROBE, "tickets", "--config",
                                    str(probe.config), "ack", "1", "--owner", "alice"],
                                    capture_output=True, timeout=30)
    assert acked.returncode == 0, acked.stderr
    acked_at = time.time()
    await probe.wait("the acknowledgement", lambda: probe.db(
        "SELECT acknowledged_at FROM tickets")[0][0] is not None)
    ((ticket_opened,),) = probe.db("SELECT opened_at FROM tickets")
    await asyncio.sleep(4)
    target.down = False
    up_at = time.time()
    await probe.wait("the recovery", lambda: not probe.status()["incidents"])
    await asyncio.sleep(3 * INTERVAL)
    probe.signal(signal.SIGTERM)
    assert probe.proc is not None and probe.proc.wait(15) == 0

    ((first, last),) = probe.db("SELECT min(at), max(at) FROM results")
    today = dt.datetime.fromtimestamp(first, dt.UTC).date().isoformat()
    done = report(probe.config, "--from", today, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == COLUMNS
    by_name = {(row[0], row[1]): dict(zip(COLUMNS, row, strict=True)) for row in rows[1:]}
    assert set(by_name) == {("service", "shop"), ("check", "web")}
    web = by_name[("check", "web")]

    outage = up_at - down_at
    down = float(web["downtime_seconds"])
    assert abs(down - outage) <= INTERVAL + 0.5, (down, outage)
    monitored = last - first
    expected = (monitored - outage) / monitored * 100
    shown = float(web["availability_percent"])
    assert abs(shown - expected) <= INTERVAL / monitored * 100 + 0.5, (shown, expected)
    assert web["incidents"] == "1"  # the blip opened none
    # Time before monitoring began that day is n/a, not up.
    day_start = dt.datetime.fromisoformat(today).replace(tzinfo=dt.UTC).timestamp()
    assert float(web["na_seconds"]) >= first - day_start - 2
    assert (web["sla_percent"], web["sla_met"]) == ("50", "true")
    assert float(web["mttr_seconds"]) == pytest.approx(outage, abs=INTERVAL + 0.5)
    # from the ticket's opening to the first poll that saw it taken
    assert ticket_opened + 2 < float(web["mtta_seconds"]) + ticket_opened < acked_at + 2
    shop = by_name[("service", "shop")]
    assert (shop["sla_percent"], shop["sla_met"]) == ("99.9", "false")
    assert shop["downtime_seconds"] == web["downtime_seconds"]

    as_json = json.loads(report(probe.config, "--from", today, "--format", "json").stdout)
    (incident,) = as_json["rows"][1]["incidents"]
    assert incident["key"] == "sla/shop/1"
    assert incident["tickets"][0]["ref"] == "1"
    assert incident["tickets"][0]["acknowledged_at"] is not None
    assert "failure that opened no incident is not down" in as_json["rule"]
    markdown = report(probe.config, "--from", today).stdout
    assert "| check | web |" in markdown and "How it is computed" in markdown
    html = report(probe.config, "--from", today, "--format", "html").stdout
    assert "<html" in html and web["availability_percent"] in html


def test_a_bad_period_or_service_is_said_plainly(scenario: ProbeProcess) -> None:
    done = report(scenario.config, "--from", "yesterday")
    assert done.returncode == 2
    assert "'yesterday' is not a date (2026-11-01)" in done.stderr
    done = report(scenario.config, "--from", "2026-12-02", "--to", "2026-12-01")
    assert (done.returncode, done.stderr) == (2, "probe report: --to is not after --from\n")
    done = report(scenario.config, "--from", "2026-12-01", "--service", "cart")
    assert done.stderr == "probe report: no check has service 'cart' (services: shop)\n"
    done = report(scenario.config, "--from", "2026-12-01")
    assert done.returncode == 1
    assert "no state database at" in done.stderr

"""Alertmanager feeding probe, for real: Debian's Prometheus scrapes a target the test controls
and evaluates a real alerting rule, Debian's Alertmanager routes the alerts to probe's
POST /api/alertmanager with a bearer token, and probe tickets them in a local server speaking
Zendesk's API. Everything is checked in the helpdesk's own records: how many tickets, with
what priority and words, which notes, whether it was solved.

And what probe refuses: a payload of another version, fields missing or of the wrong type, a
10 MB body, no token or a wrong one: a 4xx, nothing stored, the daemon still healthy."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web

from tests.harness.alertmanager import Alertmanager
from tests.harness.daemon import ProbeProcess
from tests.harness.fake_zendesk import EMAIL, TOKEN, FakeZendesk, serve_zendesk
from tests.harness.fakes import basic
from tests.harness.httpserver import serve_app
from tests.harness.ports import free_port
from tests.harness.prometheus import Prometheus

TOKEN_VALUE = "am-webhook-secret-0123456789"
RULES = """
groups:
  - name: disks
    interval: 1s
    rules:
      - alert: DiskFull
        expr: disk_used_ratio > 0.9
        labels: {severity: critical}
        annotations:
          summary: "disk of {{ $labels.host }} is {{ $value | humanizePercentage }} full"
          description: "{{ $labels.host }} stops writing when it is full"
          runbook_url: https://wiki.example.net/runbooks/disk-full
"""


class Disks:
    """The target Prometheus scrapes: each host's disk_used_ratio, as the test sets it."""

    def __init__(self) -> None:
        self.used = {"db1": 0.5, "db2": 0.5}

    async def metrics(self, request: web.Request) -> web.Response:
        text = "".join(f'disk_used_ratio{{host="{h}"}} {v}\n' for h, v in self.used.items())
        return web.Response(text=text, content_type="text/plain")


@pytest.fixture
async def zendesk() -> AsyncIterator[FakeZendesk]:
    async with serve_zendesk() as fake:
        yield fake


@pytest.fixture
async def disks() -> AsyncIterator[tuple[Disks, int]]:
    target = Disks()
    app = web.Application()
    app.router.add_get("/metrics", target.metrics)
    async with serve_app(app) as port:
        yield target, port


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "alertmanager-token"
    path.write_text(TOKEN_VALUE + "\n")
    return path


@pytest.fixture
def make_probe(tmp_path: Path, token_file: Path) -> Iterator[Callable[[dict[str, Any]],
                                                                      ProbeProcess]]:
    made: list[ProbeProcess] = []

    def make(route: dict[str, Any]) -> ProbeProcess:
        port = free_port()
        config = tmp_path / "probe.yaml"
        config.write_text(json.dumps({
            "agent": {"name": "am-test", "state_dir": str(tmp_path / "state"),
                      "listen": f"127.0.0.1:{port}"},
            "ticketing": {"routes": {"desk": route}, "poll_interval": "1s"},
            "alertmanager": {"receivers": {"ops": {"route": "desk",
                                                   "token_file": str(token_file)}}},
        }))
        probe = ProbeProcess(config, port, tmp_path / "state")
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.stop()


def zendesk_route(zendesk: FakeZendesk, tmp_path: Path) -> dict[str, Any]:
    token = tmp_path / "zendesk-token"
    token.write_text(TOKEN + "\n")
    return {"backend": "zendesk", "url": zendesk.url, "email": EMAIL,
            "token_file": str(token), "timeout": "2s"}


@contextlib.asynccontextmanager
async def fed(tmp_path: Path, probe: ProbeProcess, disks_port: int, token_file: Path,
              replicas: int) -> AsyncIterator[tuple[list[Alertmanager], Prometheus]]:
    """probe started, then `replicas` Alertmanagers (a cluster when more than one) routing to
    it, and a Prometheus scraping the disks and sending its alerts to all of them."""
    probe.start()
    await probe.wait("the daemon to start", lambda: "probe started" in probe.log_text())
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    (tmp_path / "prometheus").mkdir()
    managers: list[Alertmanager] = []
    prometheus = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{disks_port}"], [rules],
                            alertmanagers=[])
    try:
        for i in range(replicas):
            manager = Alertmanager(tmp_path / f"alertmanager{i}",
                                   f"http://127.0.0.1:{probe.port}/api/alertmanager",
                                   token_file, peers=[m.cluster_port for m in managers])
            managers.append(manager)
            await asyncio.to_thread(manager.start, clustered=replicas > 1)
        prometheus.alertmanagers = [m.address for m in managers]
        await asyncio.to_thread(prometheus.start)
        yield managers, prometheus
    finally:
        await asyncio.to_thread(prometheus.stop)
        for manager in managers:
            await asyncio.to_thread(manager.stop)


def live(zendesk: FakeZendesk) -> list[dict[str, Any]]:
    return [t for t in zendesk.tickets.values() if t["status"] != "deleted"]


def notifications(probe: ProbeProcess, status: str) -> float:
    return probe.metric(f'probe_alertmanager_notifications_total{{receiver="ops",'
                        f'status="{status}"}}') or 0.0


async def test_a_firing_rule_is_one_ticket_kept_informed_and_closed(
        tmp_path: Path, zendesk: FakeZendesk, disks: tuple[Disks, int], token_file: Path,
        make_probe: Callable[[dict[str, Any]], ProbeProcess]) -> None:
    target, port = disks
    probe = make_probe(zendesk_route(zendesk, tmp_path))
    async with fed(tmp_path, probe, port, token_file, replicas=1) as (managers, prometheus):
        target.used["db1"] = 0.97
        (ticket,) = await probe.wait("the ticket", lambda: live(zendesk) or None, timeout=30)
        comments = zendesk.comments(ticket["id"])
        body = comments[0][1]
        assert ticket["priority"] == "urgent"  # severity critical
        assert ticket["subject"].startswith("[probe] DiskFull FIRING — DiskFull {")
        for text in ("summary: disk of db1 is 97% full",
                     "description: db1 stops writing when it is full",
                     "runbook: https://wiki.example.net/runbooks/disk-full",
                     f"source: http://127.0.0.1:{prometheus.port}/graph?g0.expr=disk_used_ratio",
                     "Receiver:     ops", "labels: host=db1, instance=127.0.0.1:",
                     f"Silence:      http://{managers[0].address}/#/silences/new?filter="):
            assert text in body, body
        incident = (await asyncio.to_thread(probe.status))["incidents"][0]
        assert incident["receiver"] == "ops" and incident["group_labels"] == {
            "alertname": "DiskFull"}

        target.used["db2"] = 0.99  # a second alert joins the group: one note
        await probe.wait("the note", lambda: len(zendesk.comments(ticket["id"])) >= 2,
                         timeout=30)
        note = zendesk.comments(ticket["id"])[1]
        assert note[0] is False  # internal
        assert "firing: DiskFull {host=db2" in note[1] and "Firing now (2):" in note[1]

        # Repeats over several repeat_intervals (2s): heard, and nothing more in the helpdesk.
        heard = notifications(probe, "firing")
        await probe.wait("three repeats", lambda: notifications(probe, "firing") >= heard + 3,
                         timeout=30)
        assert len(live(zendesk)) == 1 and len(zendesk.comments(ticket["id"])) == 2

        target.used.update(db1=0.5, db2=0.5)  # the rule stops firing: solved
        await probe.wait("the ticket solved",
                         lambda: zendesk.tickets[ticket["id"]]["status"] == "solved", timeout=40)
        closing = zendesk.comments(ticket["id"])[-1][1]
        assert closing.startswith("Resolved: Alertmanager says every alert of the group has "
                                  "ended."), closing
        assert len(live(zendesk)) == 1
        assert (await asyncio.to_thread(probe.status))["incidents"] == []
        assert probe.metric('probe_incidents_resolved_total{group="alertmanager/ops/'
                            + incident["group"].rsplit("/", 1)[1] + '"}') == 1


async def test_two_alertmanagers_and_a_kill_9_make_one_ticket_that_resolves(
        tmp_path: Path, zendesk: FakeZendesk, disks: tuple[Disks, int], token_file: Path,
        make_probe: Callable[[dict[str, Any]], ProbeProcess]) -> None:
    target, port = disks
    probe = make_probe(zendesk_route(zendesk, tmp_path))
    async with fed(tmp_path, probe, port, token_file, replicas=2):
        target.used["db1"] = 0.97
        # killed as the first notification is taken: Alertmanager sends it again meanwhile
        await probe.wait("a notification", lambda: probe.db(
            "SELECT COUNT(*) FROM alert_groups")[0][0] > 0, timeout=30)
        await asyncio.to_thread(probe.kill9)
        await asyncio.sleep(1)
        probe.start()
        await probe.wait("the ticket", lambda: live(zendesk) or None, timeout=30)
        heard = notifications(probe, "firing")
        await probe.wait("repeats from both", lambda: notifications(probe, "firing")
                         >= heard + 4, timeout=30)
        (ticket,) = live(zendesk)
        assert len(zendesk.comments(ticket["id"])) == 1  # the body: no note, nothing changed

        target.used["db1"] = 0.5
        await probe.wait("the ticket solved",
                         lambda: zendesk.tickets[ticket["id"]]["status"] == "solved", timeout=40)
        # Both replicas go on sending the resolved group for a while, and the firing one late:
        # neither reopens it nor opens another.
        await asyncio.sleep(5)
        assert len(live(zendesk)) == 1
        assert zendesk.tickets[ticket["id"]]["status"] == "solved"
        assert sum("Reopened" in c for _, c in zendesk.comments(ticket["id"])) == 0


def payload(**change: Any) -> dict[str, Any]:
    data = {"version": "4", "receiver": "ops", "status": "firing", "groupKey": "{}:{a=\"b\"}",
            "groupLabels": {"a": "b"}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093", "truncatedAlerts": 0,
            "alerts": [{"status": "firing", "labels": {"alertname": "A"}, "annotations": {},
                        "startsAt": "2027-01-15T08:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "", "fingerprint": "f1"}]}
    data.update(change)
    return data


BEARER = {"Authorization": f"Bearer {TOKEN_VALUE}"}


REFUSED: list[tuple[dict[str, str], Any, int, str]] = [
    ({}, payload(), 401, "bearer token"),
    ({"Authorization": "Bearer wrong-token"}, payload(), 401, "bearer token"),
    ({"Authorization": "Basic b3BzOm9wcw=="}, payload(), 401, "bearer token"),
    (BEARER, payload(version="3"), 400, 'version: expected "4"'),
    (BEARER, {k: v for k, v in payload().items() if k != "groupKey"}, 400,
     "groupKey: expected a non-empty string"),
    (BEARER, payload(alerts=[{"status": "firing"}]), 400, "alerts[0].fingerprint"),
    (BEARER, payload(groupLabels=["a"]), 400, "groupLabels: expected an object of strings"),
    (BEARER, payload(status=True), 400, "status: expected"),
    (BEARER, payload(receiver="someone-else"), 422, "'someone-else' is not in"),
    (BEARER, "{not json", 400, ""),
    (BEARER, "x" * 10_000_000, 413, ""),
]


async def test_what_probe_cannot_take_is_refused_and_nothing_is_stored(
        make_probe: Callable[[dict[str, Any]], ProbeProcess]) -> None:
    probe = make_probe({"backend": "local"}).start()
    await probe.wait("the daemon to start", lambda: "probe started" in probe.log_text())
    url = f"http://127.0.0.1:{probe.port}/api/alertmanager"
    async with aiohttp.ClientSession() as session:
        for headers, body, code, words in REFUSED:
            data = body if isinstance(body, str) else json.dumps(body)
            async with session.post(url, data=data, headers={
                    "Content-Type": "application/json", **headers}) as answer:
                text = await answer.text()
                assert (answer.status, words) == (code, words), text
            if words:
                assert words in json.loads(text)["error"]
        assert probe.db("SELECT COUNT(*) FROM alert_groups") == [(0,)]
        assert probe.db("SELECT COUNT(*) FROM outbox") == [(0,)]
        assert probe.get("/-/healthy") == "Healthy\n"
        assert probe.metric('probe_alertmanager_notifications_total{receiver="",'
                            'status="invalid"}') == 7
        # and the token is taken when it is right: the daemon was refusing, not broken
        async with session.post(url, json=payload(), headers=BEARER) as answer:
            assert answer.status == 200, await answer.text()
    assert probe.db("SELECT action FROM outbox") == [("open",)]


async def test_notes_escalation_a_human_close_and_every_view_of_an_alert_incident(
        tmp_path: Path, token_file: Path) -> None:
    """Posted as Alertmanager posts, on the local helpdesk: the status note every
    update_interval, the escalation of an untaken ticket, a ticket closed by hand while the
    group fires reopened, and the incident in `probe status`, the dashboard, its own page and
    `probe report`."""
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(json.dumps({
        "agent": {"name": "am-test", "state_dir": str(tmp_path / "state"),
                  "listen": f"127.0.0.1:{port}"},
        "ticketing": {"routes": {"desk": {"backend": "local", "escalate_to": "oncall"},
                                 "oncall": {"backend": "local"}},
                      "poll_interval": "1s"},
        "alertmanager": {"receivers": {"ops": {
            "route": "desk", "token_file": str(token_file), "update_interval": "2s",
            "escalate_after": "1s"}}},
    }))
    probe = ProbeProcess(config, port, tmp_path / "state").start()
    await probe.wait("the daemon to start", lambda: "probe started" in probe.log_text())
    url = f"http://127.0.0.1:{port}/api/alertmanager"
    firing = payload(groupLabels={"alertname": "Disk<b>Full</b>"})
    firing["alerts"][0]["labels"] = {"alertname": "Disk<b>Full</b>", "severity": "warning"}
    firing["alerts"][0]["annotations"] = {"summary": "<script>alert(1)</script> is full"}

    def notes(ticket: int) -> list[str]:
        return [text for (text,) in probe.db(
            f"SELECT text FROM local_notes WHERE ticket_id = {ticket} ORDER BY rowid")]

    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=firing, headers=BEARER) as answer:
                assert answer.status == 200
            ((ref, key, priority),) = await probe.wait("the ticket", lambda: probe.db(
                "SELECT id, key, priority FROM local_tickets WHERE follows IS NULL"
                " AND key NOT LIKE '%/escalation'"))
            assert priority == "high"  # severity warning
            out = await asyncio.to_thread(probe.command, "status")
            assert "OPEN alertmanager/ops/" in out
            assert "  firing: Disk<b>Full</b> {severity=warning} — <script>" in out
            await probe.wait("the escalation", lambda: probe.db(
                "SELECT 1 FROM local_tickets WHERE key LIKE '%/escalation'"))
            await probe.wait("a status note", lambda: any(
                n.startswith("Still firing after") for n in notes(ref)))

            await asyncio.to_thread(probe.command, "tickets", "close", str(ref))
            await probe.wait("the reopen", lambda: any(
                n.startswith("Reopened by probe") for n in notes(ref)))

            page = await asyncio.to_thread(probe.get, "/")
            assert "Alertmanager ops: alertname=Disk&lt;b&gt;Full&lt;/b&gt;" in page
            assert "<script>alert(1)" not in page and "<b>Full" not in page
            incident = await asyncio.to_thread(probe.get, f"/incidents/{key}")
            assert "Alertmanager group" in incident

            resolved = json.loads(json.dumps(firing))
            resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
            async with session.post(url, json=resolved, headers=BEARER) as answer:
                assert answer.status == 200
            await probe.wait("the ticket resolved", lambda: probe.db(
                f"SELECT status FROM local_tickets WHERE id = {ref}") == [("resolved",)])
        report = json.loads(await asyncio.to_thread(
            probe.command, "report", "--from", "2020-01-01", "--format", "json"))
        (row,) = [r for r in report["rows"] if r["kind"] == "alertmanager"]
        assert (row["name"], len(row["incidents"]), row["availability_text"]) == ("ops", 1, "n/a")
    finally:
        probe.stop()


async def test_web_config_basic_auth_and_each_receivers_token(tmp_path: Path,
                                                              token_file: Path) -> None:
    """With web_config's users, Alertmanager may send their basic auth (for any receiver); a
    receiver's token is good for that receiver only."""
    password = "alertmanager-password"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users: {{alertmanager: {hashed}}}\n")
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(json.dumps({
        "agent": {"name": "am-test", "state_dir": str(tmp_path / "state"),
                  "listen": f"127.0.0.1:{port}", "web_config": str(tmp_path / "web.yml")},
        "ticketing": {"routes": {"desk": {"backend": "local"}}},
        "alertmanager": {"receivers": {"ops": {}, "pager": {"token_file": str(token_file)}}},
    }))
    probe = ProbeProcess(config, port, tmp_path / "state").start()
    await probe.wait("the daemon to start", lambda: "probe started" in probe.log_text())
    good = {"Authorization": basic("alertmanager", password)}
    wrong = {"Authorization": basic("alertmanager", "guess")}
    url = f"http://127.0.0.1:{port}/api/alertmanager"
    try:
        async with aiohttp.ClientSession() as session:
            for receiver, headers, code in [
                    ("ops", {}, 401), ("ops", wrong, 401),
                    ("ops", BEARER, 401),  # the token is pager's
                    ("ops", good, 200), ("pager", BEARER, 200), ("pager", good, 200)]:
                async with session.post(url, json=payload(receiver=receiver),
                                        headers=headers) as answer:
                    assert answer.status == code, (receiver, headers, await answer.text())
        assert probe.db("SELECT COUNT(*) FROM alert_groups") == [(2,)]
        assert probe.db("SELECT COUNT(*) FROM outbox WHERE action = 'open'") == [(2,)]
    finally:
        probe.stop()

"""The ticket lifecycle as a helpdesk sees it, with the daemon running in the test against a
real flaky target and the local backend: which tickets exist, with what priority and text,
after which sequence of results. The helpdesk's records (the local_tickets and local_notes
tables) are read directly, not through probe's own view of them."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from probe.daemon import Daemon
from tests.harness.certs import CertFactory
from tests.harness.configs import merged
from tests.harness.daemon import Target
from tests.harness.helpdesk import Helpdesk
from tests.harness.httpserver import serve_app
from tests.harness.inloop import Runner
from tests.harness.ports import free_port
from tests.harness.proc import PROBE
from tests.harness.tlsserver import serve
from tests.harness.wait import until


def fast(port: int, *changes: dict[str, Any]) -> dict[str, Any]:
    """Short intervals, a local route `desk`, one http check `web` of service `shop` on `port`;
    with `changes` merged in."""
    return merged({
        "defaults": {
            "interval": "200ms",
            "retry_interval": "100ms",
            "timeout": "100ms",
            "failure_threshold": 3,
            "success_threshold": 2,
            "ticket": {"priority": "high", "update_interval": "1s"},
        },
        "ticketing": {"poll_interval": "200ms", "routes": {"desk": {"backend": "local"}}},
        "checks": [{
            "name": "web",
            "service": "shop",
            "runbook": "https://wiki.example.net/shop",
            "http": {"url": f"http://127.0.0.1:{port}/health"},
        }],
    }, *changes)


async def test_one_ticket_opens_informs_and_closes_itself(target: Target, run: Runner) -> None:
    daemon, desk = await run(fast(target.port))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True
    (ticket,) = await until("the ticket", desk.tickets)
    ticket_id, key, priority, status, title = ticket
    assert (key, priority, status) == ("t/shop/1", "high", "new")
    assert title == (f"[probe] shop DOWN — HTTP 503 (expected 2xx) from "
                     f"http://127.0.0.1:{target.port}/health")
    ((body,),) = desk.rows("SELECT body FROM local_tickets")
    assert "Why:        3 consecutive failures" in body
    assert "Runbook:    https://wiki.example.net/shop" in body
    assert body.count("DOWN    HTTP 503 (expected 2xx)") == 3  # the three that decided

    triage = await until("the triage note", lambda: [
        t for k, t in desk.notes(ticket_id) if t.startswith("Triage at open time")])
    assert "HTTP 503 in" in triage[0] and "'broken'" in triage[0]
    assert f"{target.port} open" in triage[0]

    notes = await until("a status note", lambda: [
        t for k, t in desk.notes(ticket_id) if t.startswith("Still failing")], timeout=5)
    assert "Latest: HTTP 503 (expected 2xx) — unchanged since the last note." in notes[0]

    target.down = False
    await until("the resolve", lambda: desk.tickets()[0][3] == "resolved")
    kind, text = desk.notes(ticket_id)[-1]
    assert kind == "resolve"
    assert text.startswith(f"Recovered: web (http http://127.0.0.1:{target.port}/health) OK.")
    assert "failed checks." in text and "Down from " in text
    assert len(desk.tickets()) == 1


CERTIFICATES = """
defaults:
  interval: 1s
  retry_interval: 100ms
  timeout: 1s
  failure_threshold: 2
  ticket: {{update_interval: 1h}}
ticketing:
  routes:
    desk: {{backend: local}}
checks:
  - name: {name}
    tls: {{host: 127.0.0.1, port: {port}, ca_file: {ca}, min_days_left: 14}}
"""


@pytest.mark.parametrize(("days", "priority", "title"), [
    (5, "normal", "EXPIRING — certificate expires in 5 days"),
    (-2, "urgent", "DOWN — certificate expired 2 days ago"),
], ids=["expiring", "expired"])
async def test_a_certificate_about_to_expire_is_a_warning_and_an_expired_one_an_outage(
    certs: CertFactory, run: Runner, days: int, priority: str, title: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    leaf = certs.issue(("127.0.0.1",), not_before=now - dt.timedelta(days=60),
                       not_after=now + dt.timedelta(days=days, hours=1))
    async with serve(tls=leaf.server_context()) as port:
        await run(CERTIFICATES.format(name="shop-cert", port=port, ca=certs.ca.cert_file))
        desk = Helpdesk(run.directory / "state" / "probe.sqlite3")
        ((_, key, got_priority, status, got_title),) = await until("the ticket", desk.tickets)
        ((body,),) = desk.rows("SELECT body FROM local_tickets")

    assert (key, got_priority, status) == ("t/shop-cert/1", priority, "new")
    assert got_title.startswith(f"[probe] shop-cert {title}")
    assert got_title.endswith(f"from 127.0.0.1:{port}")
    expected = "needs a new certificate" if priority == "normal" else "is DOWN"
    assert body.startswith(f"shop-cert {expected}: certificate ")


@pytest.mark.parametrize("policy", ["reopen", "new", "leave"])
async def test_a_ticket_closed_by_a_human_during_the_outage(
    target: Target, run: Runner, policy: str
) -> None:
    daemon, desk = await run(fast(target.port,
                                  {"defaults": {"ticket": {"on_human_close": policy}}}))
    target.down = True
    await until("the ticket", desk.tickets)
    desk.set("UPDATE local_tickets SET status = 'resolved' WHERE id = 1", ())
    if policy == "reopen":
        await until("the reopen", lambda: desk.tickets()[0][3] == "open")
        assert any(k == "reopen" and t.startswith("Reopened by probe") for k, t in
                   desk.notes(1))
    elif policy == "new":
        second = await until("a new ticket", lambda: desk.tickets()[1:])
        assert second[0][1] == "t/shop/1+1"
        assert desk.rows("SELECT follows FROM local_tickets WHERE id = 2") == [("1",)]
    else:
        await asyncio.sleep(1.5)  # a note interval and more: nothing may happen
        assert len(desk.tickets()) == 1
        assert desk.tickets()[0][3] == "resolved"
        before = desk.notes(1)
    target.down = False
    await until("the incident to resolve", lambda: not daemon.engine.groups["shop"].incident)
    # The resolve written (the engine decides before the writer writes), then delivered.
    await until("the resolve delivered", lambda: desk.rows(
        "SELECT 1 FROM outbox WHERE action = 'resolve'") and not desk.rows(
        "SELECT 1 FROM outbox WHERE status = 'pending'"))
    if policy == "leave":
        assert desk.notes(1) == before  # left alone: no notes, no resolve of ours
    else:
        assert all(status == "resolved" for _, _, _, status, _ in desk.tickets())


def escalating(port: int, escalate_after: str) -> dict[str, Any]:
    """The web check's tickets go to route `desk`, escalated to route `oncall` when untaken
    after `escalate_after`."""
    config = fast(port, {
        "defaults": {"ticket": {"update_interval": "1h", "escalate_after": escalate_after}},
        "ticketing": {"routes": {"desk": {"escalate_to": "oncall"},
                                 "oncall": {"backend": "local"}}},
    })
    config["checks"][0]["ticket"] = {"route": "desk"}
    return config


async def test_an_untaken_ticket_is_escalated_and_a_taken_one_is_not(
    target: Target, run: Runner
) -> None:
    _daemon, desk = await run(escalating(target.port, "500ms"))
    target.down = True
    escalation = await until("the escalation ticket", lambda: desk.tickets()[1:])
    assert escalation[0][1] == "t/shop/1/escalation"
    # the escalation ticket first, then the note on the untaken one
    await until("the escalation note", lambda: any(
        "probe escalated it to the oncall route" in t for _, t in desk.notes(1)))
    # At the recovery, the escalation ticket is resolved with the first: none stays open.
    target.down = False
    await until("both tickets resolved", lambda: [status for *_, status, _ in desk.tickets()]
                == ["resolved", "resolved"])
    assert len(desk.tickets()) == 2  # and the escalation ticket was never escalated itself


async def test_a_taken_ticket_is_not_escalated(target: Target, run: Runner) -> None:
    _daemon, desk = await run(escalating(target.port, "1s"))
    target.down = True
    await until("the ticket", desk.tickets)
    desk.set("UPDATE local_tickets SET owner = 'alice', status = 'open' WHERE id = 1", ())
    await asyncio.sleep(2)
    assert len(desk.tickets()) == 1


async def test_a_child_of_a_failing_parent_gets_no_ticket_and_is_listed(
    target: Target, run: Runner
) -> None:
    dead = free_port()
    config = fast(target.port)
    config["checks"] += [
        {"name": "backend", "depends_on": ["gateway"], "failure_threshold": 1,
         "tcp": {"host": "127.0.0.1", "port": dead}},
        {"name": "gateway", "tcp": {"host": "127.0.0.1", "port": dead}},
    ]
    _daemon, desk = await run(config)
    ticket = await until("the gateway's ticket", desk.tickets)
    await asyncio.sleep(1)
    assert [t[1] for t in desk.tickets()] == ["t/gateway/1"]
    ((body,),) = desk.rows("SELECT body FROM local_tickets")
    assert "Unreachable because of it (no tickets of their own):\n  backend" in body
    assert ticket


async def test_no_ticket_in_a_maintenance_window_and_one_when_it_ends(
    target: Target, run: Runner
) -> None:
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    daemon, desk = await run(fast(target.port, {"maintenance": [
        {"services": ["shop"], "start": "2020-01-01T00:00:00Z", "end": end}]}))
    target.down = True
    await asyncio.sleep(1.5)
    assert desk.tickets() == []
    assert daemon.engine.checks["web"].in_maintenance
    await until("the ticket after the window", desk.tickets, timeout=10)


async def api(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://{daemon.config.agent.listen}{path}"
    async with aiohttp.ClientSession() as session, session.request(
        method, url, json=body, timeout=aiohttp.ClientTimeout(total=10)
    ) as response:
        return response.status, await response.json()


async def test_maintenance_set_at_run_time_holds_the_ticket_until_it_is_ended(
    target: Target, run: Runner
) -> None:
    daemon, desk = await run(fast(target.port))
    await until("the endpoint", lambda: daemon.ready)
    status, window = await api(daemon, "POST", "/api/maintenance",
                               {"services": ["shop"], "duration": "1h", "reason": "db upgrade"})
    assert status == 201, window
    target.down = True
    await until("failures past the threshold", lambda: daemon.engine.checks["web"].failures > 4)
    assert desk.tickets() == []
    _, listed = await api(daemon, "GET", "/api/maintenance")
    assert [(w["id"], w["set_by"], w["active"], w["services"], w["reason"])
            for w in listed["windows"]] == [(window["id"], "api", True, ["shop"], "db upgrade")]

    assert await api(daemon, "DELETE", f"/api/maintenance/{window['id']}") == (
        200, {"ended": window["id"]})
    await until("the ticket once it ended", desk.tickets, timeout=5)
    assert (await api(daemon, "GET", "/api/maintenance"))[1] == {"windows": []}


async def test_maintenance_set_at_run_time_outlives_a_restart(target: Target, run: Runner) -> None:
    daemon, _desk = await run(fast(target.port))
    await until("a first result", lambda: "web" in daemon.results)
    _, window = await api(daemon, "POST", "/api/maintenance",
                          {"checks": ["we*"], "end": "2099-01-01T00:00:00Z"})
    await run.stop(daemon)
    again, desk = await run(fast(target.port))
    target.down = True
    await until("failures past the threshold", lambda: again.engine.checks["web"].failures > 4)
    assert desk.tickets() == []
    _, listed = await api(again, "GET", "/api/maintenance")
    assert [(w["id"], w["checks"], w["end"]) for w in listed["windows"]] == [
        (window["id"], ["we*"], "2099-01-01T00:00:00Z")]


@pytest.mark.parametrize(("body", "error"), [
    ({"services": ["cart"], "duration": "1h"}, "names no check or service that probe runs"),
    ({"services": ["shop"]}, "give duration (like 2h) or end, one of them"),
    ({"services": ["shop"], "duration": "2"},
     "duration: '2' is not a duration (like 250ms, 30s, 5m, 1h, 1d)"),
    ({"duration": "1h"}, "names no checks and no services"),
    ({"services": ["shop"], "end": "2020-01-01T00:00:00Z"}, "end is not after start"),
    ({"services": ["shop"], "duration": "1h", "silence": True}, "unknown key 'silence'"),
    (["shop"], "expected a JSON object"),
])
async def test_a_maintenance_request_that_cannot_be_taken_says_why(
    target: Target, run: Runner, body: Any, error: str
) -> None:
    daemon, _desk = await run(fast(target.port))
    await until("a first result", lambda: "web" in daemon.results)
    assert await api(daemon, "POST", "/api/maintenance", body) == (400, {"error": error})
    assert await api(daemon, "DELETE", "/api/maintenance/7") == (
        404, {"error": "no maintenance window 7 set at run time"})


async def test_a_maintenance_window_is_not_taken_from_a_form_or_plain_text(
    target: Target, run: Runner
) -> None:
    # What a web page can make a browser send to 127.0.0.1 without a CORS preflight.
    daemon, _desk = await run(fast(target.port))
    await until("a first result", lambda: "web" in daemon.results)
    url = f"http://{daemon.config.agent.listen}/api/maintenance"
    body = '{"services": ["shop"], "duration": "1h"}'
    async with aiohttp.ClientSession() as session:
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            async with session.post(url, data=body,
                                    headers={"Content-Type": content_type}) as response:
                assert response.status == 415
    assert daemon.adhoc == {}


async def test_probe_maintenance_adds_lists_and_ends_windows(target: Target, run: Runner) -> None:
    daemon, _desk = await run(fast(target.port))
    await until("a first result", lambda: "web" in daemon.results)

    async def probe(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *PROBE, "maintenance", "--config",
            str(run.directory / "probe.yaml"), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    code, said = await probe("add", "--service", "shop", "--for", "2h", "--reason", "db upgrade")
    assert code == 0, said
    assert said.startswith("maintenance 1 set until ") and said.endswith(": services shop\n")
    code, said = await probe("list")
    assert code == 0
    header, row = said.splitlines()
    assert header.split() == ["ID", "ACTIVE", "WHEN", "FOR", "REASON"]
    assert row.startswith("1   yes ") and row.endswith("services shop  db upgrade")
    assert await probe("end", "1") == (0, "maintenance 1 ended\n")
    assert await probe("end", "1") == (
        1, f"maintenance end: http://{daemon.config.agent.listen} says: "
           "no maintenance window 1 set at run time\n")
    assert await probe("add", "--service", "cart", "--for", "1h") == (
        1, f"maintenance add: http://{daemon.config.agent.listen} says: "
           "names no check or service that probe runs\n")


async def test_a_flapping_target_gets_one_ticket(target: Target, run: Runner) -> None:
    _daemon, desk = await run(fast(target.port, {"defaults": {
        "failure_threshold": 5, "flapping": {"window": 11, "high": "30%", "low": "20%"}}}))

    async def flap() -> None:
        for _ in range(40):
            target.down = not target.down
            await asyncio.sleep(0.15)

    await flap()
    tickets = desk.tickets()
    assert len(tickets) == 1
    assert tickets[0][4].startswith("[probe] shop FLAPPING")


def forget_state(database: Path) -> None:
    """What a restore from an old backup, or a lost state directory, leaves: the helpdesk's
    tickets, and no memory of them."""
    with sqlite3.connect(database) as db:
        for table in ("check_state", "group_state", "tickets", "outbox", "incidents", "results"):
            db.execute(f"DELETE FROM {table}")


@pytest.mark.parametrize("still_down", [True, False])
async def test_tickets_probe_lost_track_of_are_adopted_or_resolved(
    target: Target, run: Runner, still_down: bool
) -> None:
    daemon, desk = await run(fast(target.port))
    target.down = True
    await until("the ticket", desk.tickets)
    await run.stop(daemon)
    forget_state(desk.database)
    target.down = still_down
    daemon, desk = await run(fast(target.port))
    if still_down:
        note = await until("the adoption note", lambda: [
            t for _, t in desk.notes(1) if t.startswith("probe had lost track")])
        assert note
        await until("a status note on the adopted ticket", lambda: [
            t for _, t in desk.notes(1) if t.startswith("Still failing")][1:])
        target.down = False
        await until("the resolve", lambda: desk.tickets()[0][3] == "resolved")
    else:
        await until("the stray ticket resolved", lambda: desk.tickets()[0][3] == "resolved")
        assert "no outage of shop is going on" in desk.notes(1)[-1][1]
    assert len(desk.tickets()) == 1


class Receiver:
    """A webhook receiver that answers what the test says and records what it accepted."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []  # taken one per request
        self.accepted: list[dict[str, Any]] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.answers:
            status, headers = self.answers.pop(0)
            return web.Response(status=status, headers=headers, text=f"answer {status}")
        self.accepted.append(await request.json())
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    async with serve_app(app) as port:
        r.port = port
        yield r


def hooked(port: int, hook: int) -> dict[str, Any]:
    """Route `desk` is a webhook to the receiver on `hook`."""
    return fast(port, {"ticketing": {"routes": {"desk": {
        "backend": "webhook", "url": f"http://127.0.0.1:{hook}/hook"}}}})


async def test_a_failing_webhook_delays_actions_and_keeps_their_order(
    target: Target, run: Runner, receiver: Receiver
) -> None:
    receiver.answers = [(503, {}), (429, {"Retry-After": "1"}), (500, {}), (503, {})]
    daemon, desk = await run(hooked(target.port, receiver.port))
    target.down = True
    await until("the incident", lambda: daemon.engine.groups["shop"].incident)
    await asyncio.sleep(1.2)
    target.down = False
    await until("every action delivered", lambda: desk.rows(
        "SELECT 1 FROM outbox WHERE action = 'resolve'") and not desk.rows(
        "SELECT 1 FROM outbox WHERE status = 'pending'"), timeout=30)
    actions = [a["action"] for a in receiver.accepted]
    assert actions[0] == "open" and actions[-1] == "resolve"
    assert actions.count("open") == 1 and actions.count("resolve") == 1
    assert receiver.answers == []  # every refusal was met with a retry


async def test_a_permanent_refusal_is_kept_visible_and_can_be_retried(
    target: Target, run: Runner, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answers = [(400, {})]
    daemon, desk = await run(hooked(target.port, receiver.port))
    target.down = True
    await until("the failed open", lambda: desk.rows(
        "SELECT last_error FROM outbox WHERE status = 'failed'"))
    ((error,),) = desk.rows("SELECT last_error FROM outbox WHERE status = 'failed'")
    assert error == "POST /hook: HTTP 400: answer 400"
    status = await daemon.snapshot()
    assert status["ticket_actions_failed"][0]["error"] == error
    proc = await asyncio.create_subprocess_exec(
        *PROBE, "tickets", "--config", str(tmp_path / "probe.yaml"),
        "retry", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert out.decode().startswith("1 failed actions queued again")
    daemon.dispatcher.wake()
    await until("the open after the retry", lambda: [
        a for a in receiver.accepted if a["action"] == "open"])

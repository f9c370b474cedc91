"""End to end against a real Request Tracker: the daemon (a subprocess) watches a flaky target
and files its tickets in RT through a proxy the test controls, which can hold, drop or refuse
requests. What counts is what RT itself holds afterwards, read through its REST API: exactly
one ticket per incident, with the mapped priority, the key, the evidence, the notes, and the
resolution — through kill -9 at each point of the ticket's life, and through a helpdesk
outage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemon import ProbeProcess, Target
from tests.harness.ports import free_port
from tests.harness.rtpeer import KEY_FIELD, RtApi, RtPeer
from tests.harness.rtproxy import Proxy
from tests.harness.wait import until

PATIENCE = 30  # seconds for what RT itself must show: RT is slow under load


@pytest.fixture
async def proxy(rt_peer: RtPeer) -> AsyncIterator[Proxy]:
    async with Proxy(rt_peer.url) as p:
        yield p


@pytest.fixture
def daemon(
    tmp_path: Path, target: Target, proxy: Proxy, rt_peer: RtPeer
) -> Callable[..., ProbeProcess]:
    agent = f"rt-{uuid.uuid4().hex[:10]}"  # RT keeps its tickets between runs: keys must differ
    (tmp_path / "rt-token").write_text(rt_peer.token)

    def make(extra: str = "") -> ProbeProcess:
        port = free_port()
        config = tmp_path / "probe.yaml"
        config.write_text(f"""
agent: {{name: {agent}, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
defaults:
  interval: 300ms
  retry_interval: 200ms
  timeout: 200ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{update_interval: 1s{extra}}}
ticketing:
  poll_interval: 500ms
  routes:
    netops:
      backend: rt
      url: "http://127.0.0.1:{proxy.port}"
      token_file: {tmp_path}/rt-token
      queue: General
      key_field: {KEY_FIELD}
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
""")
        return ProbeProcess(config, port, tmp_path / "state")

    make.agent = agent  # type: ignore[attr-defined]
    return make


async def rt_tickets(rt: RtApi, key: str) -> list[dict[str, Any]]:
    query = f"'CF.{{{KEY_FIELD}}}'='{key}'"
    found = await rt.call("GET", "/tickets", query=query, fields="Subject,Status,Priority")
    return list(found["items"])


async def test_a_ticket_in_rt_opens_informs_and_resolves(
    daemon: Callable[..., ProbeProcess], target: Target, rt_api: RtApi
) -> None:
    probe = daemon()
    probe.start()
    key = f"{daemon.agent}/shop/1"  # type: ignore[attr-defined]
    await probe.wait("the daemon", lambda: probe.status()["checks"][0]["state"] == "up")
    target.down = True
    (found,) = await until("the RT ticket", lambda: rt_tickets(rt_api, key), PATIENCE)
    ticket = await rt_api.ticket(found["id"])
    assert ticket["Priority"] == "99"  # urgent, mapped
    assert ticket["Subject"].startswith("[probe] shop DOWN — HTTP 503 (expected 2xx) from")
    assert ticket["Queue"]["id"] == "1" or ticket["Queue"].get("Name", "General") == "General"

    async def comments() -> list[str]:
        return [text for kind, text in await rt_api.transactions(found["id"])
                if kind == "Comment"]

    await until("the triage and a status note", lambda: _both(comments), PATIENCE)
    target.down = False
    await until("the resolve", lambda: _status_is(rt_api, found["id"], "resolved"), PATIENCE)
    texts = await comments()
    assert texts[-1].startswith("Recovered: web")
    assert len(await rt_tickets(rt_api, key)) == 1


async def _both(comments: Callable[[], Any]) -> bool:
    texts = await comments()
    return any(t.startswith("Triage at open time") for t in texts) and any(
        t.startswith("Still failing") for t in texts)


async def _status_is(rt: RtApi, ref: str, status: str) -> bool:
    return bool((await rt.ticket(ref))["Status"] == status)


@pytest.mark.parametrize("point", ["before-create", "during-create", "after-create",
                                   "during-resolve"])
async def test_kill_9_at_each_point_leaves_exactly_one_resolved_ticket(
    daemon: Callable[..., ProbeProcess], target: Target, proxy: Proxy, rt_api: RtApi, point: str
) -> None:
    probe = daemon()
    key = f"{daemon.agent}/shop/1"  # type: ignore[attr-defined]
    if point == "before-create":
        proxy.mode = "drop"
    elif point == "during-create":
        proxy.hold = ("POST", "/REST/2.0/ticket")
    probe.start()
    await probe.wait("the daemon", lambda: probe.status()["checks"][0]["state"] == "up")
    target.down = True
    if point in ("before-create", "during-create"):
        await asyncio.wait_for(proxy.arrived.wait(), 30)
        probe.kill9()
        proxy.mode, proxy.hold = "forward", None
        expected_before_restart = 0 if point == "before-create" else 1
        assert len(await rt_tickets(rt_api, key)) == expected_before_restart
    elif point == "after-create":
        await until("the RT ticket", lambda: rt_tickets(rt_api, key), PATIENCE)
        probe.kill9()
    else:
        await until("the RT ticket", lambda: rt_tickets(rt_api, key), PATIENCE)
        proxy.hold = ("PUT", "/REST/2.0/ticket/")
        target.down = False
        await asyncio.wait_for(proxy.arrived.wait(), 30)
        probe.kill9()
        proxy.hold = None
    probe.start()
    target.down = False
    (found,) = await until("one ticket", lambda: rt_tickets(rt_api, key), PATIENCE)
    await until("the resolve", lambda: _status_is(rt_api, found["id"], "resolved"), PATIENCE)
    await asyncio.sleep(1)  # a duplicate, if any, would have been created by now
    assert len(await rt_tickets(rt_api, key)) == 1


async def test_a_helpdesk_outage_delays_tickets_and_loses_nothing(
    daemon: Callable[..., ProbeProcess], target: Target, proxy: Proxy, rt_api: RtApi
) -> None:
    probe = daemon()
    probe.start()
    key = f"{daemon.agent}/shop/1"  # type: ignore[attr-defined]
    await probe.wait("the daemon", lambda: probe.status()["checks"][0]["state"] == "up")
    proxy.mode = "refuse503"
    target.down = True
    await until("refused creates", lambda: any(s == 503 for _, _, s in proxy.seen), PATIENCE)
    proxy.mode = "limit429"
    await until("rate limited creates", lambda: any(s == 429 for _, _, s in proxy.seen), PATIENCE)
    target.down = False
    await probe.wait("the incident to resolve", lambda: not probe.status()["incidents"])
    assert await rt_tickets(rt_api, key) == []  # nothing reached RT yet
    proxy.mode = "forward"
    (found,) = await until("the ticket after the outage", lambda: rt_tickets(rt_api, key), PATIENCE)
    await until("its resolve", lambda: _status_is(rt_api, found["id"], "resolved"), PATIENCE)
    # RT shows the new status before it has written the transaction that records it: read the
    # history once RT has answered probe's last request.
    await probe.wait("the outbox to drain", lambda: not probe.db(
        "SELECT 1 FROM outbox WHERE status = 'pending'"), 30)
    history = await rt_api.call("GET", f"/ticket/{found['id']}/history",
                                fields="Type,NewValue", per_page="100")
    kinds = [(h["Type"], h.get("NewValue")) for h in history["items"]]
    assert kinds[0][0] == "Create"
    assert kinds[-1] == ("Status", "resolved")
    assert len(await rt_tickets(rt_api, key)) == 1

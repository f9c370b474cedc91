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

import aiohttp
import pytest
from aiohttp import web

from tests.rtpeer import KEY_FIELD, RtApi, RtPeer, rt_api_fixture, rt_peer_fixture  # noqa: F401
from tests.test_daemon import Probe, Target, free_port


class Proxy:
    """Forwards to RT, unless told to drop a request, hold its answer, or answer for RT."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = 0
        self.mode = "forward"  # forward | drop | refuse503 | limit429 | slow
        self.hold: tuple[str, str] | None = None  # (method, path prefix) whose answer waits
        self.seen: list[tuple[str, str, int]] = []
        self.arrived = asyncio.Event()  # a held request reached RT
        self._session: aiohttp.ClientSession | None = None
        self._released = asyncio.Event()  # set at the end: held requests may go
        self._runner: web.AppRunner

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path_qs
        if self.mode == "drop" and request.method == "POST" and path.endswith("/ticket"):
            self.arrived.set()
            await self._released.wait()  # the client is killed while it waits
            return web.Response(status=503)
        if self.mode == "refuse503":
            self.seen.append((request.method, path, 503))
            return web.Response(status=503, text="<html><body>Service Unavailable</body></html>",
                                content_type="text/html")
        if self.mode == "slow":
            await asyncio.sleep(1.0)  # past the route's timeout: RT still does the work
        if self.mode == "limit429":
            self.seen.append((request.method, path, 429))
            return web.json_response({"message": "slow down"}, status=429,
                                     headers={"Retry-After": "1"})
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + path, data=body or None,
            headers={k: v for k, v in request.headers.items()
                     if k.lower() in ("authorization", "content-type")},
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
        self.seen.append((request.method, path, status))
        if self.hold and request.method == self.hold[0] and request.path.startswith(
            self.hold[1]
        ):
            self.arrived.set()
            await self._released.wait()  # RT did it; the client never hears
        return web.Response(status=status, body=payload, content_type="application/json")

    async def start(self, port: int = 0) -> None:
        """Listen (again) on `port`, or a free one the first time."""
        self._released.clear()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Close the port: connections to it are refused."""
        self._released.set()
        await self._runner.cleanup()

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        assert self._session is not None
        await self._session.close()


@pytest.fixture
async def proxy(rt_peer: RtPeer) -> AsyncIterator[Proxy]:
    async with Proxy(rt_peer.url) as p:
        yield p


@pytest.fixture
def daemon(
    tmp_path: Path, target: Target, proxy: Proxy, rt_peer: RtPeer
) -> Callable[..., Probe]:
    agent = f"rt-{uuid.uuid4().hex[:10]}"  # RT keeps its tickets between runs: keys must differ
    (tmp_path / "rt-token").write_text(rt_peer.token)

    def make(extra: str = "") -> Probe:
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
        return Probe(config, port, tmp_path / "state")

    make.agent = agent  # type: ignore[attr-defined]
    return make


async def rt_tickets(rt: RtApi, key: str) -> list[dict[str, Any]]:
    query = f"'CF.{{{KEY_FIELD}}}'='{key}'"
    found = await rt.call("GET", "/tickets", query=query, fields="Subject,Status,Priority")
    return list(found["items"])


async def until(what: str, condition: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_ticket_in_rt_opens_informs_and_resolves(
    daemon: Callable[..., Probe], target: Target, rt_api: RtApi
) -> None:
    probe = daemon()
    probe.start()
    key = f"{daemon.agent}/shop/1"  # type: ignore[attr-defined]
    await probe.wait("the daemon", lambda: probe.status()["checks"][0]["state"] == "up")
    target.down = True
    (found,) = await until("the RT ticket", lambda: rt_tickets(rt_api, key))
    ticket = await rt_api.ticket(found["id"])
    assert ticket["Priority"] == "99"  # urgent, mapped
    assert ticket["Subject"].startswith("[probe] shop DOWN — HTTP 503 (expected 2xx) from")
    assert ticket["Queue"]["id"] == "1" or ticket["Queue"].get("Name", "General") == "General"

    async def comments() -> list[str]:
        return [text for kind, text in await rt_api.transactions(found["id"])
                if kind == "Comment"]

    await until("the triage and a status note", lambda: _both(comments))
    target.down = False
    await until("the resolve", lambda: _status_is(rt_api, found["id"], "resolved"))
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
    daemon: Callable[..., Probe], target: Target, proxy: Proxy, rt_api: RtApi, point: str
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
        await until("the RT ticket", lambda: rt_tickets(rt_api, key))
        probe.kill9()
    else:
        await until("the RT ticket", lambda: rt_tickets(rt_api, key))
        proxy.hold = ("PUT", "/REST/2.0/ticket/")
        target.down = False
        await asyncio.wait_for(proxy.arrived.wait(), 30)
        probe.kill9()
        proxy.hold = None
    probe.start()
    target.down = False
    (found,) = await until("one ticket", lambda: rt_tickets(rt_api, key))
    await until("the resolve", lambda: _status_is(rt_api, found["id"], "resolved"))
    await asyncio.sleep(1)  # a duplicate, if any, would have been created by now
    assert len(await rt_tickets(rt_api, key)) == 1


async def test_a_helpdesk_outage_delays_tickets_and_loses_nothing(
    daemon: Callable[..., Probe], target: Target, proxy: Proxy, rt_api: RtApi
) -> None:
    probe = daemon()
    probe.start()
    key = f"{daemon.agent}/shop/1"  # type: ignore[attr-defined]
    await probe.wait("the daemon", lambda: probe.status()["checks"][0]["state"] == "up")
    proxy.mode = "refuse503"
    target.down = True
    await until("refused creates", lambda: _true(any(s == 503 for _, _, s in proxy.seen)))
    proxy.mode = "limit429"
    await until("rate limited creates", lambda: _true(any(s == 429 for _, _, s in proxy.seen)))
    target.down = False
    await probe.wait("the incident to resolve", lambda: not probe.status()["incidents"])
    assert await rt_tickets(rt_api, key) == []  # nothing reached RT yet
    proxy.mode = "forward"
    (found,) = await until("the ticket after the outage", lambda: rt_tickets(rt_api, key))
    await until("its resolve", lambda: _status_is(rt_api, found["id"], "resolved"))
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


async def _true(value: bool) -> bool:
    return value

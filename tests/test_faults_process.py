"""Faults of probe's own world: the daemon killed with kill -9 at random points against a real
Request Tracker, the helpdesk down for a long stretch in every way it goes down, the state
directory read-only or full, every target timing out at once, and reload storms. The
invariants are counted in the helpdesk's own records (RT's REST API, the local backend's
tables), not in probe's view of them."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.harness.daemon import ProbeProcess
from tests.harness.helpdesk import Helpdesk
from tests.harness.httpserver import serve_app
from tests.harness.ports import free_port
from tests.harness.rtpeer import KEY_FIELD, RtApi, RtPeer
from tests.harness.rtproxy import Proxy
from tests.reliability import record

KILLS = int(os.environ.get("PROBE_FAULT_KILLS", "50"))


class Targets:
    """Several HTTP targets on one server, each up or down as the test says."""

    def __init__(self, names: list[str]) -> None:
        self.down = dict.fromkeys(names, False)
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.down[request.match_info["name"]]:
            return web.Response(status=503, text="broken")
        return web.Response(text="ok")


@pytest.fixture
async def targets() -> AsyncIterator[Targets]:
    t = Targets(["a", "b", "c"])
    app = web.Application()
    app.router.add_get("/{name}", t.handle)
    async with serve_app(app) as port:
        t.port = port
        yield t


def write_config(path: Path, agent: str, state: Path, port: int, route: str, targets: Targets,
                 extra_checks: str = "") -> None:
    checks = "".join(
        f"  - {{name: {n}, http: {{url: \"http://127.0.0.1:{targets.port}/{n}\"}}}}\n"
        for n in targets.down
    )
    path.write_text(f"""
agent: {{name: {agent}, state_dir: {state}, listen: "127.0.0.1:{port}"}}
defaults:
  interval: 300ms
  retry_interval: 150ms
  timeout: 250ms
  failure_threshold: 2
  success_threshold: 2
  ticket: {{update_interval: 1s}}
ticketing:
  poll_interval: 1s
  routes:
{route}
checks:
{checks}{extra_checks}""")


async def rt_tickets(rt: RtApi, prefix: str) -> list[tuple[str, str, str]]:
    """(key, id, status) of every RT ticket whose key starts with prefix."""
    found = await rt.call("GET", "/tickets", query=f"'CF.{{{KEY_FIELD}}}' LIKE '{prefix}'",
                          fields="Status,CustomFields", per_page="100")
    out = []
    for item in found["items"]:
        for cf in item.get("CustomFields") or []:
            for value in cf.get("values") or []:
                if cf.get("name") == KEY_FIELD and str(value).startswith(prefix):
                    out.append((str(value), str(item["id"]), str(item["Status"])))
    return out


async def test_kill_9_at_random_points_loses_and_duplicates_no_ticket(
    tmp_path: Path, targets: Targets, rt_peer: RtPeer, rt_api: RtApi
) -> None:
    agent = f"kill-{uuid.uuid4().hex[:8]}"
    (tmp_path / "token").write_text(rt_peer.token)
    port = free_port()
    config = tmp_path / "probe.yaml"
    write_config(config, agent, tmp_path / "state", port, f"""    rt:
      backend: rt
      url: "{rt_peer.url}"
      token_file: {tmp_path}/token
      key_field: {KEY_FIELD}""", targets)
    probe = ProbeProcess(config, port, tmp_path / "state")
    rng = random.Random(1234)  # the same points every run: a failure can be replayed
    probe.start()
    for _ in range(KILLS):
        for name in targets.down:
            if rng.random() < 0.3:
                targets.down[name] = not targets.down[name]
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        probe.kill9()
        probe.start()
    for name in targets.down:
        targets.down[name] = False
    await probe.wait("every incident to resolve", lambda: not probe.status()["incidents"], 60)
    await probe.wait("the outbox to drain", lambda: not probe.db(
        "SELECT 1 FROM incidents WHERE resolved_at IS NULL"
        " UNION ALL SELECT 1 FROM outbox WHERE status = 'pending'"), 60)
    incidents = {key for (key,) in probe.db("SELECT key FROM incidents")}
    tickets = await rt_tickets(rt_api, f"{agent}/")
    per_key = Counter(key for key, _, _ in tickets)
    duplicated = sum(n - 1 for n in per_key.values())
    lost = len(incidents - set(per_key))
    unresolved = [t for t in tickets if t[2] != "resolved"]
    failed = probe.db("SELECT action, last_error FROM outbox WHERE status = 'failed'")
    record("process faults", "kill -9 at random points (real Request Tracker)", tried=KILLS,
           expected=len(incidents), found=len(per_key), lost=lost, duplicated=duplicated,
           outcome=f"{len(incidents)} incidents, each one ticket, all resolved"
           if not (lost or duplicated or unresolved) else f"{len(unresolved)} left open")
    assert incidents, "the random schedule made no incident: nothing was tested"
    assert (lost, duplicated, unresolved, failed) == (0, 0, [], [])
    probe.signal(signal.SIGTERM)


async def test_a_long_helpdesk_outage_delivers_everything_once_in_order(
    tmp_path: Path, targets: Targets, rt_peer: RtPeer, rt_api: RtApi
) -> None:
    agent = f"outage-{uuid.uuid4().hex[:8]}"
    (tmp_path / "token").write_text(rt_peer.token)
    async with Proxy(rt_peer.url) as proxy:
        port = free_port()
        config = tmp_path / "probe.yaml"
        write_config(config, agent, tmp_path / "state", port, f"""    rt:
      backend: rt
      url: "http://127.0.0.1:{proxy.port}"
      token_file: {tmp_path}/token
      key_field: {KEY_FIELD}
      timeout: 500ms""", targets)
        probe = ProbeProcess(config, port, tmp_path / "state")

        def answered(status: int) -> int:
            return sum(1 for _, _, s in proxy.seen if s == status)

        probe.start()
        await probe.wait("the daemon", lambda: bool(probe.status()["checks"][0]["state"]))
        await proxy.stop()  # connection refused while the first incident opens
        targets.down["a"] = True
        await probe.wait("incident a", lambda: len(probe.status()["incidents"]) == 1)
        await asyncio.sleep(1.5)
        # Each way of being down lasts until probe has met it, not for a fixed time: the
        # dispatcher's backoff decides when it knocks again.
        proxy.mode = "refuse503"
        await proxy.start(proxy.port)
        targets.down["b"] = True
        await probe.wait("503s", lambda: answered(503) >= 2, 30)
        proxy.mode = "limit429"
        targets.down["a"] = False
        await probe.wait("429s", lambda: answered(429) >= 2, 30)
        proxy.mode = "slow"  # past the route's timeout; RT does the work, probe never hears
        targets.down["c"] = True
        slow_from = len(proxy.seen)
        await probe.wait("a slow answer", lambda: len(proxy.seen) > slow_from, 30)
        await asyncio.sleep(1)
        proxy.mode = "forward"
        for name in targets.down:
            targets.down[name] = False
        await probe.wait("every incident to resolve", lambda: not probe.status()["incidents"],
                         30)
        await probe.wait("the outbox to drain", lambda: not probe.db(
            "SELECT 1 FROM incidents WHERE resolved_at IS NULL"
            " UNION ALL SELECT 1 FROM outbox WHERE status = 'pending'"), 60)
    incidents = {key for (key,) in probe.db("SELECT key FROM incidents")}
    tickets = await rt_tickets(rt_api, f"{agent}/")
    per_key = Counter(key for key, _, _ in tickets)
    ordered = True
    for _key, ref, status in tickets:
        history = await rt_api.call("GET", f"/ticket/{ref}/history", fields="Type,NewValue",
                                    per_page="100")
        kinds = [h["Type"] for h in history["items"]]
        ordered &= kinds[0] == "Create" and status == "resolved"
    refused = Counter(s for _, _, s in proxy.seen)
    record("process faults", "helpdesk down: refused, 503s, 429 storms, slow past the timeout",
           tried=sum(refused.values()), expected=len(incidents), found=len(per_key),
           lost=len(incidents - set(per_key)), duplicated=sum(n - 1 for n in per_key.values()),
           outcome="delivered once each, in order, after it came back" if ordered
           else "out of order")
    assert incidents == set(per_key)
    assert all(n == 1 for n in per_key.values())
    assert ordered
    assert refused[503] and refused[429]
    probe.signal(signal.SIGTERM)



async def test_a_reload_storm_during_incidents_keeps_everything_and_the_last_good_config(
    tmp_path: Path, targets: Targets
) -> None:
    port = free_port()
    config = tmp_path / "probe.yaml"
    route = "    desk: {backend: local}"
    write_config(config, "storm", tmp_path / "state", port, route, targets)
    good = config.read_text()
    probe = ProbeProcess(config, port, tmp_path / "state")
    probe.start()
    targets.down["a"] = True
    await probe.wait("the incident", lambda: len(probe.status()["incidents"]) == 1)
    (incident,) = probe.status()["incidents"]
    broken = good + "  - {name: x, tcp: {host: h, port: 0}}\n"
    variants = []
    for i in range(40):
        if i % 3 == 1:
            text = broken
        else:
            extra = "".join(f"  - {{name: extra{j}, tcp: {{host: 127.0.0.1, port: "
                            f"{targets.port}}}}}\n" for j in range(i % 4))
            text = good + extra
        variants.append(text)
        config.write_text(text)
        probe.signal(signal.SIGHUP)
        await asyncio.sleep(0.03)
    last_good = next(v for v in reversed(variants) if v != broken)
    config.write_text(broken)  # a broken file written last: the last *valid* one must win
    probe.signal(signal.SIGHUP)
    await asyncio.sleep(1.5)
    names = [c["name"] for c in probe.status()["checks"]]
    expected = ["a", "b", "c"] + [f"extra{j}" for j in range(last_good.count("name: extra"))]
    assert names == expected
    assert probe.metric("probe_config_last_reload_successful") == 0  # the broken one, refused
    assert probe.status()["incidents"] == [incident]  # the same incident, not lost or reopened
    targets.down["a"] = False
    await probe.wait("the resolve", lambda: not probe.status()["incidents"])
    desk = Helpdesk(tmp_path / "state" / "probe.sqlite3")
    await probe.wait("the ticket's resolve", lambda: bool(desk.tickets())
                     and desk.tickets()[0][3] == "resolved")
    record("process faults", "reload storm: 41 SIGHUPs, every third file broken",
           tried=41, expected=1, found=len(desk.tickets()),
           outcome="the last valid configuration won; the open incident kept, one ticket")
    assert len(desk.tickets()) == 1
    assert probe.proc is not None and probe.proc.poll() is None
    probe.signal(signal.SIGTERM)

"""The sites harness (tests/harness/sites.py) does what it claims, seen from inside the sites:
one URL in core answers every site over that site's own link; a cut site times out (or is
refused) while the others still get answers, and heals; a unix socket (PostgreSQL's) crosses the
cut; fetch() reaches a site's own loopback; a real `probe run` in a site sees the cut; nothing is
left behind, and a dead run's leftovers are cleared."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.harness import sites as netns
from tests.harness.daemon import Target
from tests.harness.ports import free_port
from tests.harness.postgres import Postgres
from tests.harness.sites import Site, SiteProbe, Sites, topology
from tests.harness.wait import until

# GET argv[1] with a timeout of argv[2] seconds, never through a proxy: prints the status and
# the body, or `failed` and the error.
GET = """
import sys, urllib.request as u
try:
    r = u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=float(sys.argv[2]))
    print(r.status, r.read().decode())
except Exception as e:
    print("failed", getattr(e, "reason", e))
"""


@pytest.fixture
def sites() -> Iterator[Sites]:
    with topology(3) as made:
        yield made


@pytest.fixture
async def target(sites: Sites) -> AsyncIterator[str]:
    """An app in core that answers with the address the request came from; its URL."""
    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=str(request.remote))

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    async with sites.serve_app(app) as base:
        yield f"{base}/whoami"


async def get_from(site: Site, url: str, timeout: float = 1.0) -> str:
    """What GET gives inside `site` (a separate process there): "200 body" or "failed why"."""
    done = await site.run_async(sys.executable, "-c", GET, url, str(timeout))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def get_from_all(sites: Sites, url: str, timeout: float = 1.0) -> list[str]:
    return list(await asyncio.gather(*(get_from(s, url, timeout) for s in sites)))


async def test_one_url_in_core_answers_every_site_over_its_own_link(
    sites: Sites, target: str,
) -> None:
    assert target.startswith(f"http://{netns.CORE_ADDRESS}:")
    answers = await get_from_all(sites, target)
    # Each request arrived from its site's own address: over its link, not a shared loopback.
    assert answers == [f"200 {s.address}" for s in sites]


async def unix_echo(path: Path) -> asyncio.Server:
    async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.readline() == b"ping\n":
            writer.write(b"pong\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(pong, path=str(path))


UNIX_PING = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"ping\\n")
print(s.recv(100).decode().strip())
"""


async def test_a_cut_site_times_out_while_the_others_get_answers_and_heal_restores_it(
    sites: Sites, target: str, tmp_path: Path,
) -> None:
    cut, *others = sites
    sites.cut(cut)
    server = await unix_echo(tmp_path / "echo.sock")
    try:
        started = time.monotonic()
        answers, ping = await asyncio.gather(
            get_from_all(sites, target, timeout=1.0),
            cut.run_async(sys.executable, "-c", UNIX_PING, str(tmp_path / "echo.sock")))
        took = time.monotonic() - started
    finally:
        server.close()
    assert answers == ["failed timed out", *(f"200 {s.address}" for s in others)]
    assert took >= 1.0  # dropped, not refused: it waited its whole timeout
    assert ping.stdout.strip() == "pong", ping.stderr  # a unix socket is no network to cut

    sites.heal(cut)
    assert await get_from_all(sites, target) == [f"200 {s.address}" for s in sites]


async def test_reject_refuses_at_once_and_ports_cut_only_those(
    sites: Sites, target: str,
) -> None:
    async def desk_page(request: web.Request) -> web.Response:
        return web.Response(text="desk")

    helpdesk = web.Application()
    helpdesk.router.add_get("/", desk_page)
    async with sites.serve_app(helpdesk) as desk:
        port = int(target.split(":")[2].split("/")[0])
        site = sites[1]
        sites.cut(site, ports=[port], reject=True)
        started = time.monotonic()
        assert await get_from(site, target, timeout=5) == "failed [Errno 111] Connection refused"
        assert time.monotonic() - started < 2  # refused, not waited out
        assert await get_from(site, desk + "/") == "200 desk"  # another port of core: open
        assert await get_from(sites[0], target) == f"200 {sites[0].address}"

        sites.cut(site)  # again: replaces the rules, now the whole link, dropped
        assert await get_from(site, desk + "/", timeout=0.5) == "failed timed out"
        sites.heal(site)
        sites.heal(site)  # healing a healed site changes nothing
        assert await get_from(site, desk + "/") == "200 desk"


SERVE_LABEL = """
import http.server, sys
class Label(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[2].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Label).serve_forever()
"""


async def test_fetch_reaches_each_sites_own_loopback(sites: Sites, tmp_path: Path) -> None:
    port = free_port()  # the same port in two sites: two loopbacks, two servers
    for site in sites[0], sites[1]:
        site.start([sys.executable, "-c", SERVE_LABEL, str(port), site.label],
                   log=tmp_path / f"{site.label}.log")
    url = f"http://127.0.0.1:{port}/"
    for site in sites[0], sites[1]:
        answer = await until(f"{site.label}'s server", functools.partial(site.fetch, url),
                             tolerate=(OSError,))
        assert answer == (200, site.label.encode())
    with pytest.raises(OSError):  # nothing listens there in the third site
        await sites.fetch(sites[2], url)


@pytest.fixture
async def health(sites: Sites) -> AsyncIterator[str]:
    """The flaky target of the daemon tests, served in core: its URL."""
    app = web.Application()
    app.router.add_get("/health", Target().handle)
    async with sites.serve_app(app) as base:
        yield f"{base}/health"


def agent(site: Site, directory: Path, url: str) -> SiteProbe:
    """A `probe run` in `site`, checking `url` every 300 ms."""
    directory.mkdir()
    port = free_port()
    config = directory / "probe.yaml"
    config.write_text(f"""
agent: {{name: {site.label}, state_dir: {directory}/state, listen: "127.0.0.1:{port}"}}
defaults: {{interval: 300ms, retry_interval: 300ms, timeout: 250ms}}
checks:
  - name: web
    http: {{url: "{url}"}}
""")
    return SiteProbe(site, config, port).start()


async def test_probe_agents_in_sites_check_core_and_the_cut_one_sees_it_fail(
    sites: Sites, health: str, tmp_path: Path,
) -> None:
    agents = [agent(s, tmp_path / s.label, health) for s in (sites[0], sites[1])]

    def state(a: SiteProbe) -> tuple[str | None, str]:
        (check,) = a.status()["checks"]
        return check["state"], check["reason"]

    def up(a: SiteProbe) -> bool:
        return state(a)[0] == "up"

    for a in agents:
        await a.wait("the check up", functools.partial(up, a))
    sites.cut(sites[0])
    await agents[0].wait("the check down", lambda: state(agents[0])[0] == "down")
    assert "tim" in state(agents[0])[1].lower(), state(agents[0])  # timed out / timeout
    assert state(agents[1])[0] == "up"  # the other site still reaches core
    # fetch() reaches the agent's own listener inside its site, as its HTTP API is meant
    status, body = await sites.fetch(sites[0], f"http://127.0.0.1:{agents[0].port}/api/status")
    assert status == 200 and json.loads(body)["agent"] == sites[0].label
    sites.heal(sites[0])
    await agents[0].wait("the check up again", functools.partial(up, agents[0]))
    for a in agents:
        a.stop()


PG_SELECT = """
import psycopg, sys
with psycopg.connect(sys.argv[1], connect_timeout=3) as conn:
    print(conn.execute("SELECT 41 + 1").fetchone()[0])
"""


async def test_postgresql_on_its_unix_socket_serves_a_cut_site(
    sites: Sites, target: str, postgres: Postgres,
) -> None:
    sites.cut(sites[0])
    assert await get_from(sites[0], target, timeout=0.3) == "failed timed out"
    done = await sites[0].run_async(sys.executable, "-c", PG_SELECT, postgres.dsn())
    assert done.stdout.strip() == "42", done.stderr


def namespaces() -> set[str]:
    return set(os.listdir(netns.NETNS_DIR)) if netns.NETNS_DIR.is_dir() else set()


def test_teardown_leaves_no_namespace_and_nothing_running(tmp_path: Path) -> None:
    with topology(["eu", "us"]) as made:
        names = made.names()
        assert set(names) <= namespaces()
        assert all(n.startswith(f"pt{os.getpid()}-") for n in names)
        # Started as a test starts an agent, and never stopped by it.
        sleeper = subprocess.Popen(made["us"].command(["sleep", "60"]))
        made["us"].run("true")
    assert not set(names) & namespaces()
    assert sleeper.wait(5) == -9


def test_a_dead_runs_leftovers_go_and_a_live_ones_stay() -> None:
    netns.require()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"pt{dead.pid}-1-core"  # no lock file, and its process is gone
    live = f"pt{os.getpid()}-999-s0"  # no lock file, and its process lives (this one)
    # Its lock held, by a run whose pid is not ours to see (another PID namespace): alive.
    locked, locked_prefix = f"pt{dead.pid}-2-s0", f"pt{dead.pid}-2-"
    # A run that died with its lock file there: the lock is free.
    crashed, crashed_prefix = f"pt{os.getpid()}-998-core", f"pt{os.getpid()}-998-"
    netns.LOCKS.mkdir(exist_ok=True)
    (netns.LOCKS / f"{crashed_prefix}lock").touch()
    for name in stale, live, locked, crashed:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with netns._hold(locked_prefix), topology(1):
            assert not {stale, crashed} & namespaces()
            assert {live, locked} <= namespaces()
        assert not (netns.LOCKS / f"{crashed_prefix}lock").exists()
    finally:
        for name in stale, live, locked, crashed:
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run(["ip", "netns", "delete", name], check=True,
                               capture_output=True)
        for prefix in locked_prefix, crashed_prefix:
            (netns.LOCKS / f"{prefix}lock").unlink(missing_ok=True)

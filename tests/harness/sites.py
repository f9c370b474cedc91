"""Sites as Linux network namespaces, for end-to-end tests of agents at several vantage points:
a *core* namespace holds the check targets and the helpdesk, each *site* namespace holds real
`probe run` agents, and every site reaches core over a veth pair of its own. A unix socket is a
file, not network: PostgreSQL on one (tests/harness/postgres.py) serves every namespace alike.

    with topology(["eu", "us", "ap"]) as sites:         # or topology(3): site0, site1, site2
        async with sites.serve_app(app) as base:       # served in core, by this event loop
            # base == "http://10.99.0.1:PORT": one configuration, one URL, every site
            agent = SiteProbe(sites["eu"], config, port).start()
            status, body = await sites.fetch(sites["eu"], f"http://127.0.0.1:{port}/api/status")
            sites.cut(sites["eu"])                       # eu's uplink drops everything
            sites.heal(sites["eu"])

Address plan (IPv4 only; the same in every run, since nothing is shared between the runs'
namespaces and the host's own network is never touched):

    10.99.0.0/24     core's own addresses, on core's loopback; every site routes it via core
    10.99.0.1        CORE_ADDRESS: what core serves on (targets, helpdesks)
    10.99.K.0/30     site K-1's link (K = 1..250): 10.99.K.1 core's end (interface siteK-1
                     in core), 10.99.K.2 the site's end (interface `core` in the site)

Sites reach core and core reaches each site; sites do not reach one another (core forwards
nothing). No namespace has a default route: anything else is unreachable, at once.

cut(site) puts an nftables table in the site's own namespace that drops every packet on its
uplink, both ways: connects time out and open connections stall, as when a link fails, while
the site's loopback (its agents' HTTP APIs) and unix sockets (PostgreSQL) go on working.
`ports=` cuts only those TCP ports of core (the helpdesk on another port stays reachable);
`reject=True` refuses at once instead (TCP reset). heal(site) deletes the table.

Names: `pt<pid>-<n>-core` and `pt<pid>-<n>-s<i>` (pid of the test process, n counts the
topologies it made), so that parallel runs never collide. While it lives, a topology holds a
lock, /var/run/probe-sites/pt<pid>-<n>-lock (flock: the kernel lets go when the process dies). A
new topology first deletes the namespaces of this scheme whose lock is free (or, with no lock
file, whose pid is dead): a crashed or killed run's, killing what still runs in them.

The test process never leaves its own network namespace: what must happen inside another one
(a listening socket, an HTTP request to an agent's loopback) runs in a worker thread that has
entered it with setns(2), which moves the calling thread alone. A socket belongs to the namespace
it was created in, wherever it is used afterwards: a listening socket made in core's thread is
served by aiohttp in the test's event loop. Since the peers run in the test's event loop, a
program in a site that talks to them must not be waited for with a blocking call: run_async,
not run (which is for `nft`, `ip` and the like).

Needs root, iproute2 (`ip`) and nftables (`nft`). Without them a test skips and says why, unless
PROBE_REQUIRE_NETNS=1 (CI, .ci/run): then it fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TypeVar

import pytest
from aiohttp import web

from tests.harness.daemon import ProbeProcess
from tests.harness.proc import PROBE

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

REQUIRE = "PROBE_REQUIRE_NETNS"
NETNS_DIR = Path("/var/run/netns")  # where `ip netns add` mounts the namespaces it names
CORE_ADDRESS = "10.99.0.1"
CORE_NETWORK = "10.99.0.0/24"
UPLINK = "core"  # each site's interface toward core
CUT_TABLE = "probe_cut"  # the nftables table cut() adds in a site, heal() deletes
MAX_SITES = 250
CLONE_NEWNET = 0x40000000  # os.CLONE_NEWNET from Python 3.12 on
LOCKS = Path("/var/run/probe-sites")  # a topology's lock: held while it lives
_NAME = re.compile(r"^(pt(\d+)-\d+-)(core|s\d+|l\d+)$")
_LOCK = re.compile(r"^(pt(\d+)-\d+-)lock$")
_topologies = itertools.count(1)


def _unavailable(why: str) -> None:
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{why} ({REQUIRE}=1: missing network namespaces fail, never skip)")
    pytest.skip(why)


def require() -> None:
    """Skips the test (fails it under PROBE_REQUIRE_NETNS=1) unless this process can make
    network namespaces: root, `ip` and `nft`. topology() calls it first."""
    if not sys.platform.startswith("linux"):
        _unavailable("network namespaces are Linux's")
    if os.geteuid() != 0:
        _unavailable("network namespaces need root")
    for program, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(program) is None:
            _unavailable(f"no `{program}` on PATH (Debian package {package})")


def _setns(fd: int) -> None:
    """Moves the calling thread (alone) into the network namespace open as `fd`."""
    if sys.version_info >= (3, 12):
        os.setns(fd, os.CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def _ip(*args: str, batch: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`ip ARGS`, or `ip ARGS -batch -` with `batch` as its commands; never raises on failure."""
    command = ["ip", *args, *(["-batch", "-"] if batch else [])]
    return subprocess.run(command, input="\n".join(batch) + "\n" if batch else None,
                          capture_output=True, text=True, timeout=30, check=False)


def _pids(name: str) -> list[int]:
    done = _ip("netns", "pids", name)
    return [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def _delete(name: str) -> None:
    """Kills what runs in namespace `name` and deletes it (its interfaces go with it)."""
    for pid in _pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _ip("netns", "delete", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hold(prefix: str) -> IO[bytes]:
    """The lock of the topology named `prefix`, held until the file is closed (by the kernel,
    if the process dies)."""
    LOCKS.mkdir(exist_ok=True)
    lock = (LOCKS / f"{prefix}lock").open("ab")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _dead(prefix: str, pid: int) -> bool:
    """Whether the topology named `prefix` is a leftover: its lock is free, or, without a
    lock file, its process `pid` is gone. The lock sees through a reused pid, and through a
    process alive in another PID namespace."""
    try:
        lock = (LOCKS / f"{prefix}lock").open("rb")  # never made here: its absence tells
    except FileNotFoundError:
        return not _alive(pid)
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def remove_leftovers() -> list[str]:
    """Deletes the namespaces of this naming scheme that no live topology holds (a crashed or
    killed run's), killing what still runs in them; their names."""
    names = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
    prefixes = {m.group(1): int(m.group(2)) for n in names if (m := _NAME.match(n))}
    locks = sorted(p.name for p in LOCKS.iterdir()) if LOCKS.is_dir() else []
    prefixes.update({m.group(1): int(m.group(2)) for n in locks if (m := _LOCK.match(n))})
    stale = {prefix for prefix, pid in prefixes.items() if _dead(prefix, pid)}
    removed = [n for n in names if (m := _NAME.match(n)) and m.group(1) in stale]
    for name in removed:
        _delete(name)
    for prefix in stale:
        (LOCKS / f"{prefix}lock").unlink(missing_ok=True)
    return removed


class Namespace:
    """A network namespace this test made: run programs in it, serve from it, connect from it."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address  # where the other namespaces reach it
        self._threads: ThreadPoolExecutor | None = None
        self._procs: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.address}>"

    # --- processes ----------------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this namespace (for ProbeProcess.launch, or Popen)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, input: str | None = None, timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs `argv` here to its end. Blocking: not while a peer served by this event loop
        must answer it (run_async)."""
        done = subprocess.run(self.command(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode:
            raise AssertionError(f"{' '.join(argv)} in {self.name}: exit {done.returncode}\n"
                                 f"{done.stdout}{done.stderr}")
        return done

    async def run_async(self, *argv: str, input: str | None = None,
                        timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`run` for a coroutine: the event loop (and the peers it serves) goes on meanwhile.
        The exit status is the caller's to judge."""
        proc = await asyncio.create_subprocess_exec(
            *self.command(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(input.encode() if input is not None else None), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return subprocess.CompletedProcess(list(argv), proc.returncode,
                                           out.decode(errors="replace"),
                                           err.decode(errors="replace"))

    def start(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Starts `argv` here, its output appended to `log`; killed at teardown if still running."""
        with log.open("ab") as out:
            proc = subprocess.Popen(self.command(argv), stdout=out, stderr=subprocess.STDOUT)
        self._procs.append(proc)
        return proc

    # --- inside, from this process --------------------------------------------------------------

    def _enter(self) -> None:
        fd = os.open(NETNS_DIR / self.name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            # Threads of this namespace alone: one that has entered it never serves another.
            self._threads = ThreadPoolExecutor(4, f"netns-{self.name}", self._enter)
        return self._threads

    def call_blocking(self, fn: Callable[[], T]) -> T:
        """`fn()` in a worker thread inside this namespace: the sockets it makes are here."""
        return self._pool().submit(fn).result()

    async def call(self, fn: Callable[[], T]) -> T:
        """`call_blocking` for a coroutine: the event loop goes on while `fn` runs."""
        return await asyncio.wrap_future(self._pool().submit(fn))

    def make_socket(self, family: int = socket.AF_INET,
                    kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new socket of this namespace, to use from any thread (asyncio's sock_connect,
        open_connection(sock=...))."""
        return self.call_blocking(lambda: socket.socket(family, kind))

    def listening(self, host: str | None = None, port: int = 0) -> socket.socket:
        """A TCP socket of this namespace bound to `host` (its address unless given) and `port`
        (a free one unless given), listening."""
        def bind() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host or self.address, port))
                sock.listen(128)
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            return sock

        return self.call_blocking(bind)

    async def fetch(self, url: str, *, timeout: float = 5) -> tuple[int, bytes]:
        """GET `url` from inside this namespace (127.0.0.1 is this namespace's loopback): the
        status and the body, whatever the status. OSError if it cannot connect or times out."""
        return await self.call(lambda: _get(url, timeout))

    # --- serving, in the test's event loop -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve_app(self, app: web.Application, host: str | None = None,
                        port: int = 0) -> AsyncIterator[str]:
        """Serves `app` in this namespace on `host` (its address unless given) and `port` (a
        free one unless given), from the test's event loop; yields "http://HOST:PORT"."""
        sock = self.listening(host, port)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            bound_host, bound_port = sock.getsockname()[:2]
            yield f"http://{bound_host}:{bound_port}"
        finally:
            await runner.cleanup()
            sock.close()

    @contextlib.asynccontextmanager
    async def serve_raw(self, handler: Handler, host: str | None = None,
                        port: int = 0) -> AsyncIterator[tuple[str, int]]:
        """Serves `handler` for each connection, as tests/harness/httpserver.py's serve_raw,
        in this namespace; yields (host, port)."""
        sock = self.listening(host, port)
        handling: set[asyncio.Task[None]] = set()

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handling.add(task)
            try:
                await handler(reader, writer)
            finally:
                handling.discard(task)
                writer.close()

        server = await asyncio.start_server(tracked, sock=sock)
        try:
            bound_host, bound_port = sock.getsockname()[:2]
            yield str(bound_host), int(bound_port)
        finally:
            server.close()
            for task in list(handling):
                task.cancel()
            await asyncio.gather(*handling, return_exceptions=True)
            await asyncio.sleep(0)

    # --- the end --------------------------------------------------------------------------------

    def close(self) -> None:
        """Kills what runs here, lets go of the threads inside, and deletes the namespace."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None
        _delete(self.name)


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            body: bytes = response.read()
            return int(response.status), body
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


class Site(Namespace):
    """A vantage point: its own namespace, linked to core by its uplink (interface `core`)."""

    def __init__(self, name: str, label: str, index: int) -> None:
        super().__init__(name, f"10.99.{index + 1}.2")
        self.label = label  # the test's name for it: a probe `site`, say
        self.index = index
        self.gateway = f"10.99.{index + 1}.1"  # core's end of the link
        self.cut_rules: str | None = None  # the nftables table cut() put in, while it holds

    def __repr__(self) -> str:
        return f"<Site {self.label} {self.name} {self.address}>"


class Sites:
    """Core and its sites, made by topology(). Iterate over it for the sites; sites[i] or
    sites["label"] for one."""

    def __init__(self, core: Namespace, sites: list[Site], lock: IO[bytes]) -> None:
        self.core = core
        self.sites = sites
        self.address = core.address  # CORE_ADDRESS
        self._lock = lock

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __getitem__(self, key: int | str) -> Site:
        if isinstance(key, int):
            return self.sites[key]
        for site in self.sites:
            if site.label == key:
                return site
        raise KeyError(key)

    def names(self) -> list[str]:
        """The namespaces' names: core's, then the sites'."""
        return [self.core.name, *(s.name for s in self.sites)]

    def serve_app(self, app: web.Application,
                  port: int = 0) -> contextlib.AbstractAsyncContextManager[str]:
        """Serves `app` in core on CORE_ADDRESS; yields "http://10.99.0.1:PORT"."""
        return self.core.serve_app(app, port=port)

    def serve_raw(self, handler: Handler,
                  port: int = 0) -> contextlib.AbstractAsyncContextManager[tuple[str, int]]:
        """Serves `handler` per connection in core on CORE_ADDRESS; yields (host, port)."""
        return self.core.serve_raw(handler, port=port)

    async def fetch(self, site: Namespace, url: str, *, timeout: float = 5) -> tuple[int, bytes]:
        """GET `url` from inside `site`: (status, body). OSError when it cannot."""
        return await site.fetch(url, timeout=timeout)

    def cut(self, site: Site, *, ports: Iterable[int] = (), reject: bool = False) -> None:
        """Cuts `site`'s uplink, as a failed link would: every packet out of or into its
        interface toward core is dropped (TCP connects time out), by an nftables table in the
        site's namespace. Its loopback and the unix sockets (PostgreSQL) still work. With
        `ports`, only TCP to (and from) those ports of core; with `reject`, what goes out is
        refused at once instead (TCP reset, ICMP admin-prohibited) and connects fail fast.
        Again on a cut site replaces its rules. Returns once the rules hold."""
        only = sorted(set(ports))
        out_match = f"tcp dport {{ {', '.join(map(str, only))} }} " if only else ""
        in_match = f"tcp sport {{ {', '.join(map(str, only))} }} " if only else ""
        if reject:
            refuse = (f'oifname "{UPLINK}" {out_match}meta l4proto tcp reject with tcp reset\n'
                      + ("" if only else
                         f'    oifname "{UPLINK}" reject with icmpx type admin-prohibited\n'))
        else:
            refuse = f'oifname "{UPLINK}" {out_match}drop\n'
        rules = (f"table inet {CUT_TABLE} {{\n"
                 "  chain output {\n    type filter hook output priority 0; policy accept;\n"
                 f"    {refuse}  }}\n"
                 "  chain input {\n    type filter hook input priority 0; policy accept;\n"
                 f'    iifname "{UPLINK}" {in_match}drop\n  }}\n}}\n')
        # One transaction: the old table (if any) goes and the new one comes at once.
        site.run("nft", "-f", "-", input=f"table inet {CUT_TABLE}\ndelete table inet {CUT_TABLE}\n"
                 + rules)
        site.cut_rules = rules

    def heal(self, site: Site) -> None:
        """Undoes cut(): the site's uplink passes everything again (a no-op if not cut)."""
        site.run("nft", "-f", "-", input=f"table inet {CUT_TABLE}\ndelete table inet {CUT_TABLE}\n")
        site.cut_rules = None

    def close(self) -> None:
        """Deletes every namespace (the links go with them), killing what runs in them."""
        for namespace in [*self.sites, self.core]:
            namespace.close()
        if not self._lock.closed:
            Path(self._lock.name).unlink(missing_ok=True)
            self._lock.close()


def _labels(sites: int | Sequence[str]) -> list[str]:
    labels = [f"site{i}" for i in range(sites)] if isinstance(sites, int) else list(sites)
    if not 1 <= len(labels) <= MAX_SITES:
        raise ValueError(f"between 1 and {MAX_SITES} sites, not {len(labels)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"site labels repeat: {labels}")
    return labels


def _make(labels: list[str]) -> Sites:
    prefix = f"pt{os.getpid()}-{next(_topologies)}-"
    core = Namespace(prefix + "core", CORE_ADDRESS)
    sites = [Site(f"{prefix}s{i}", label, i) for i, label in enumerate(labels)]
    made = Sites(core, sites, _hold(prefix))
    added = _ip(batch=[f"netns add {n}" for n in made.names()])
    if added.returncode:
        made.close()
        _unavailable(f"ip netns add failed: {added.stderr.strip()}")
    core_setup = ["link set lo up", f"address add {CORE_ADDRESS}/32 dev lo"]
    for site in sites:
        link = f"site{site.index}"
        core_setup += [f"link add {link} type veth peer name {UPLINK} netns {site.name}",
                       f"address add {site.gateway}/30 dev {link}", f"link set {link} up"]
    done = _ip("-n", core.name, batch=core_setup)
    if done.returncode:
        made.close()
        if "Unknown device type" in done.stderr or "not supported" in done.stderr.lower():
            _unavailable(f"no veth links here: {done.stderr.strip()}")
        raise AssertionError(f"setting up {core.name}: {done.stderr}")
    for site in sites:
        done = _ip("-n", site.name, batch=[
            "link set lo up", f"address add {site.address}/30 dev {UPLINK}",
            f"link set {UPLINK} up", f"route add {CORE_NETWORK} via {site.gateway}"])
        if done.returncode:
            made.close()
            raise AssertionError(f"setting up {site.name}: {done.stderr}")
    nft = sites[0].run("nft", "list", "tables", check=False)
    if nft.returncode:
        made.close()
        _unavailable(f"nft does not work in a network namespace: {nft.stderr.strip()}")
    return made


@contextlib.contextmanager
def topology(sites: int | Sequence[str] = 3) -> Iterator[Sites]:
    """Core and `sites` sites (a count, named site0...; or the labels), linked and routed,
    deleted at the end with everything still running in them. Skips without root, ip, nft
    (fails under PROBE_REQUIRE_NETNS=1). Leftovers of dead test processes go first."""
    labels = _labels(sites)
    require()
    remove_leftovers()
    made = _make(labels)
    try:
        yield made
    finally:
        made.close()


class SiteProbe(ProbeProcess):
    """`probe run` inside a site: ProbeProcess, with start(), get() (so status(), metric(),
    wait()) and command() inside the site's namespace, where the agent's 127.0.0.1 is."""

    def __init__(self, site: Namespace, config: Path, port: int, state: Path | None = None,
                 *, env: dict[str, str] | None = None, reaped: bool = True) -> None:
        super().__init__(config, port, state, env=env, reaped=reaped)
        self.site = site

    def start(self) -> SiteProbe:
        self.launch(self.site.command([*PROBE, "run", "--config", str(self.config)]))
        return self

    def get(self, path: str) -> str:
        """GET the agent's `path`; HTTPError unless 2xx, as ProbeProcess.get."""
        url = f"http://127.0.0.1:{self.port}{path}"

        def get() -> str:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url, timeout=5) as response:
                body: bytes = response.read()
            return body.decode()

        return self.site.call_blocking(get)

    def command(self, *args: str) -> str:
        done = subprocess.run(
            self.site.command([*PROBE, *args, "--config", str(self.config)]),
            capture_output=True, text=True, env=self.env, timeout=60,
        )
        return done.stdout + done.stderr


# --- a line of namespaces: routers between -----------------------------------------------------

LINE_NETWORK = "10.98"  # link K of a line is 10.98.K.0/30: .1 its nearer end, .2 its farther


@contextlib.contextmanager
def line(count: int = 3) -> Iterator[list[Namespace]]:
    """`count` namespaces in a line, each joined to the next by a veth pair, and every one
    between forwarding: from the first, the last is `count - 1` hops away, each namespace on
    the way a router that says so (ICMP time exceeded), as a traceroute sees it. Namespace i's
    address is 10.98.i.2 (the first's, 10.98.1.1); the line reaches nothing else. Skips as
    `topology` does; deleted at the end with what runs in it."""
    assert 2 <= count <= 250
    require()
    remove_leftovers()
    prefix = f"pt{os.getpid()}-{next(_topologies)}-"
    names = [f"{prefix}l{i}" for i in range(count)]
    spaces = [Namespace(name, f"{LINE_NETWORK}.{max(i, 1)}.{1 if i == 0 else 2}")
              for i, name in enumerate(names)]
    lock = _hold(prefix)
    try:
        added = _ip(batch=[f"netns add {n}" for n in names])
        if added.returncode:
            _unavailable(f"ip netns add failed: {added.stderr.strip()}")
        for i, space in enumerate(spaces):
            setup = ["link set lo up"]
            if i + 1 < count:  # the link to the next one: its nearer end is ours
                k = i + 1
                setup += [f"link add l{k} type veth peer name l{k} netns {names[k]}",
                          f"address add {LINE_NETWORK}.{k}.1/30 dev l{k}", f"link set l{k} up"]
            done = _ip("-n", space.name, batch=setup)
            if done.returncode:
                raise AssertionError(f"setting up {space.name}: {done.stderr}")
        for i, space in enumerate(spaces):
            setup = [f"address add {LINE_NETWORK}.{i}.2/30 dev l{i}", f"link set l{i} up"] \
                if i else []
            for k in range(1, count):  # every link not its own, via the neighbour toward it
                if k > i + 1:
                    setup.append(f"route add {LINE_NETWORK}.{k}.0/30 via {LINE_NETWORK}.{i + 1}.2")
                elif k < i:
                    setup.append(f"route add {LINE_NETWORK}.{k}.0/30 via {LINE_NETWORK}.{i}.1")
            routed = _ip("-n", space.name, batch=setup) if setup else None
            if routed is not None and routed.returncode:
                raise AssertionError(f"setting up {space.name}: {routed.stderr}")
            if 0 < i < count - 1:
                space.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        yield spaces
    finally:
        for space in spaces:
            space.close()
        Path(lock.name).unlink(missing_ok=True)
        lock.close()

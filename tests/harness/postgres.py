"""A real PostgreSQL for the tests, from Debian's packages: one server for the session, started
in a temporary directory on a unix socket only (no TCP port to collide on), and a fresh database
for each test that asks for one.

initdb and postgres refuse to run as root, so under root they run as the `postgres` user the
package creates (or `nobody`), in a directory given to that user. The server runs with fsync off:
the tests that need durability across a crash start a server of their own.

The newest server in /usr/lib/postgresql/*/bin is used (PROBE_PG_BINDIR names another). When
PostgreSQL is missing the tests that need it are skipped, unless PROBE_REQUIRE_POSTGRES=1 (CI,
.ci/run): then they fail and say why.

tests/conftest.py registers this module as a plugin: a test asks for `postgres` (the server) or
`pg_database` (the connection string of a database of its own).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

REQUIRE = "PROBE_REQUIRE_POSTGRES"
# Debian installs the server's programs out of PATH, one directory per major version.
DEBIAN = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"  # the role initdb creates: the name of the OS user it runs as is not used


def _unavailable(why: str) -> None:
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{why} ({REQUIRE}=1: a missing PostgreSQL fails, never skips)")
    pytest.skip(why)


def _bindir() -> Path | None:
    if "PROBE_PG_BINDIR" in os.environ:
        return Path(os.environ["PROBE_PG_BINDIR"])
    found = sorted((p for p in DEBIAN.glob("*/bin") if (p / "initdb").is_file()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if found:
        return found[-1]  # the newest major version
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: None for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    _unavailable("running as root, and neither a postgres nor a nobody user to run "
                 "PostgreSQL as (it refuses root)")
    raise AssertionError("unreachable")


@dataclass
class Postgres:
    """A running server: its socket directory, its programs and the user that runs them."""

    bindir: Path
    root: Path  # the socket's directory; the data directory and the log are inside
    user: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for a database of this server."""
        return f"host={self.root} dbname={dbname} user={SUPERUSER}"

    def run(self, program: str, *args: str, timeout: float = 60) -> None:
        """One of the server's programs (initdb, pg_ctl), as the server's user."""
        user = self.user
        done = subprocess.run(
            [str(self.bindir / program), *args], capture_output=True, text=True,
            timeout=timeout, check=False, cwd=self.root,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)}: exit {done.returncode}\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}\n{log}")

    def pg_ctl(self, *args: str) -> None:
        """pg_ctl on this server: `pg_ctl("restart", "-m", "immediate")`."""
        options = (f"-c listen_addresses='' -c unix_socket_directories='{self.root}'"
                   " -c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self.run("pg_ctl", *args, "-w", "-D", str(self.data), "-l", str(self.log),
                 "-o", options)

    def create_database(self, name: str) -> str:
        """A new, empty database (CREATE DATABASE from template1: a few milliseconds); its
        connection string."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def start() -> Postgres:
    bindir = _bindir()
    if bindir is None or not (bindir / "initdb").is_file():
        where = (f"no initdb in PROBE_PG_BINDIR={bindir}" if "PROBE_PG_BINDIR" in os.environ
                 else f"neither {DEBIAN}/*/bin/initdb nor initdb on PATH")
        _unavailable(f"no PostgreSQL server: {where} (Debian: apt-get install postgresql)")
        raise AssertionError("unreachable")
    user = _server_user()
    # Not under pytest's base temporary directory: that one is private to the user running
    # the tests (mode 0700), which the server's user could not enter. Short, too: a unix
    # socket's path is at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="probe-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = Postgres(bindir, root, user)
    try:
        server.run("initdb", "--no-sync", "--auth=trust", f"--username={SUPERUSER}",
                   "--encoding=UTF8", "--locale=C", "-D", str(server.data))
        server.pg_ctl("start")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL from {bindir} did not start: {err}")
    return server


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[Postgres]:
    server = start()
    try:
        yield server
    finally:
        try:
            server.pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(server.root, ignore_errors=True)


_numbers = itertools.count(1)


@pytest.fixture
def pg_database(postgres: Postgres) -> Iterator[str]:
    """The connection string of a new database for this test alone, dropped after it."""
    name = f"test_{os.getpid()}_{next(_numbers)}"
    dsn = postgres.create_database(name)
    try:
        yield dsn
    finally:
        postgres.drop_database(name)

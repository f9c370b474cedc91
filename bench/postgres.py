"""The cluster scenario's PostgreSQL, started by the benchmark as the tests start theirs
(tests/harness/postgres.py, which answers to pytest): Debian's newest server, initdb in a
temporary directory, a unix socket only, run as the `postgres` user when the benchmark is root
(the server refuses root). Unlike the tests' server it keeps fsync on, as a production database
does, and loads pg_stat_statements, which counts the statements the agents send.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.proc import CLOCK_TICKS, Processes, Unavailable, ensure

DEBIAN = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
DATABASE = "probe"


def _bindir() -> Path:
    found = sorted((p for p in DEBIAN.glob("*/bin") if (p / "initdb").is_file()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not found:
        ensure("pg_ctlcluster", ["postgresql"])
        found = sorted(p for p in DEBIAN.glob("*/bin") if (p / "initdb").is_file())
    if not found:
        raise Unavailable(f"no PostgreSQL server in {DEBIAN}/*/bin")
    return found[-1]


@dataclass
class Postgres:
    bindir: Path
    root: Path  # the socket's directory; the data directory and the log are inside
    user: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = DATABASE) -> str:
        return f"host={self.root} dbname={dbname} user={SUPERUSER}"

    def run(self, program: str, *args: str) -> None:
        user = self.user
        done = subprocess.run(
            [str(self.bindir / program), *args], capture_output=True, text=True, timeout=120,
            check=False, cwd=self.root, user=user.pw_uid if user else None,
            group=user.pw_gid if user else None, extra_groups=[] if user else None)
        if done.returncode != 0:
            raise RuntimeError(f"{program}: exit {done.returncode}: {done.stderr[-2000:]}")

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        """utime + stime of the postmaster and its children (the backends serving the
        agents, the checkpointer, the WAL writer...): what the database costs."""
        parent = self.postmaster()
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(entry.name) == parent or int(fields[1]) == parent:
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def statements(self) -> dict[str, int]:
        """Calls of each statement the agents sent to the probe database so far (the query's
        text, normalized by pg_stat_statements, its constants as $1...)."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT s.query, sum(s.calls)::bigint FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s GROUP BY 1",
                (DATABASE,)).fetchall()
        return {str(query): int(calls) for query, calls in rows}


def start(processes: Processes) -> Postgres:
    bindir = _bindir()
    user = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        else:
            raise Unavailable("root, and no postgres or nobody user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="probe-bench-pg-"))  # short: a socket path ≤ 107 bytes
    processes.on_exit(lambda: shutil.rmtree(root, ignore_errors=True))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = Postgres(bindir, root, user)
    server.run("initdb", "--no-sync", "--auth=trust", f"--username={SUPERUSER}",
               "--encoding=UTF8", "--locale=C", "-D", str(server.data))
    options = (f"-c listen_addresses='' -c unix_socket_directories='{root}'"
               " -c shared_preload_libraries=pg_stat_statements"
               " -c pg_stat_statements.track=all -c pg_stat_statements.track_utility=on")
    server.run("pg_ctl", "start", "-w", "-D", str(server.data), "-l", str(root / "server.log"),
               "-o", options)
    processes.on_exit(lambda: server.run("pg_ctl", "stop", "-m", "fast", "-D", str(server.data)))
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    return server

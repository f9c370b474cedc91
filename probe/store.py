"""Durable state in one SQLite file (WAL): check streaks, incidents, the last results of each
check, and the ticket outbox. The schema is versioned (PRAGMA user_version) and migrated in
order at open.

Everything one decision changes — the check and incident states, and the transitions they
caused — goes into the database in one transaction (`Batch`), so that after `kill -9` the daemon
resumes exactly where it was: a transition that was written will be delivered, one that was not
was never decided.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checks.base import Result
from probe import history
from probe.engine import Changes, Transition
from probe.tickets.ledger import record_transitions

# Each entry takes the schema from version i to i + 1. Never edit one that has shipped.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE check_state (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE group_state (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE results (
        check_name TEXT NOT NULL,
        slot INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        state TEXT NOT NULL,
        duration REAL NOT NULL,
        reason TEXT NOT NULL,
        evidence TEXT NOT NULL,
        PRIMARY KEY (check_name, slot)
    ) WITHOUT ROWID;
    CREATE TABLE incidents (
        key TEXT PRIMARY KEY,
        grp TEXT NOT NULL,
        opened_at REAL NOT NULL,
        resolved_at REAL,
        facts TEXT NOT NULL
    );
    CREATE INDEX incidents_open ON incidents (resolved_at);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_key TEXT NOT NULL,
        action TEXT NOT NULL,
        route TEXT,
        created_at REAL NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        delivered_at REAL
    );
    CREATE INDEX outbox_pending ON outbox (status, next_attempt_at);
    CREATE INDEX outbox_incident ON outbox (incident_key, id);
    """,
    """
    -- The helpdesk tickets of incidents: usually one, more when a human closed one and the
    -- policy opened a new one. `ticket_key` is what the helpdesk carries.
    CREATE TABLE tickets (
        ticket_key TEXT PRIMARY KEY,
        incident_key TEXT NOT NULL,
        route TEXT NOT NULL,
        ref TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'open',   -- open | resolved | left
        opened_at REAL NOT NULL,
        escalated_at REAL,
        policy TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX tickets_incident ON tickets (incident_key);
    -- The local backend's helpdesk: tickets kept here, shown by `probe tickets`.
    CREATE TABLE local_tickets (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        priority TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'new',   -- new | open | resolved
        owner TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        follows TEXT
    );
    CREATE INDEX local_tickets_key ON local_tickets (key);
    CREATE TABLE local_notes (
        ticket_id INTEGER NOT NULL REFERENCES local_tickets (id),
        at REAL NOT NULL,
        kind TEXT NOT NULL,                    -- note | resolve | reopen
        text TEXT NOT NULL
    );
    """,
    """
    -- Set before a call that may create a ticket, cleared when the helpdesk answered that it
    -- did not: while set, the next attempt asks find() first.
    ALTER TABLE outbox ADD COLUMN unknown_outcome INTEGER NOT NULL DEFAULT 0;
    """,
    """
    -- Maintenance windows set while the daemon runs (probe maintenance, /api/maintenance):
    -- one-off, kept across restarts; `data` is the window as the configuration writes one.
    CREATE TABLE maintenance (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        data TEXT NOT NULL,
        ends_at REAL NOT NULL
    );
    """,
    """
    -- The history (probe.history): each check's results per minute, hour and day (`t`
    -- the bucket's start, times in milliseconds, ph1..ph5 the sums of its kind's phases);
    -- checks by number and no more columns than each needs, to keep the rows small.
    -- `history_rolled`: up to where minutes were rolled up into hours and days.
    CREATE TABLE history_checks (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE history_minutes (
        check_id INTEGER NOT NULL, t INTEGER NOT NULL,
        n INTEGER NOT NULL, failed INTEGER NOT NULL, unknown INTEGER NOT NULL,
        covered INTEGER NOT NULL, na INTEGER NOT NULL, maintenance INTEGER NOT NULL,
        dsum INTEGER NOT NULL, dmax INTEGER NOT NULL,
        ph1 INTEGER, ph2 INTEGER, ph3 INTEGER, ph4 INTEGER, ph5 INTEGER,
        PRIMARY KEY (check_id, t)
    ) WITHOUT ROWID;
    CREATE TABLE history_hours (
        check_id INTEGER NOT NULL, t INTEGER NOT NULL,
        n INTEGER NOT NULL, failed INTEGER NOT NULL, unknown INTEGER NOT NULL,
        covered INTEGER NOT NULL, na INTEGER NOT NULL, maintenance INTEGER NOT NULL,
        dsum INTEGER NOT NULL, dmax INTEGER NOT NULL,
        ph1 INTEGER, ph2 INTEGER, ph3 INTEGER, ph4 INTEGER, ph5 INTEGER,
        p50 INTEGER, p95 INTEGER, p99 INTEGER,
        PRIMARY KEY (check_id, t)
    ) WITHOUT ROWID;
    CREATE TABLE history_days (
        check_id INTEGER NOT NULL, t INTEGER NOT NULL,
        n INTEGER NOT NULL, failed INTEGER NOT NULL, unknown INTEGER NOT NULL,
        covered INTEGER NOT NULL, na INTEGER NOT NULL, maintenance INTEGER NOT NULL,
        dsum INTEGER NOT NULL, dmax INTEGER NOT NULL,
        ph1 INTEGER, ph2 INTEGER, ph3 INTEGER, ph4 INTEGER, ph5 INTEGER,
        p50 INTEGER, p95 INTEGER, p99 INTEGER,
        PRIMARY KEY (check_id, t)
    ) WITHOUT ROWID;
    CREATE TABLE history_rolled (res INTEGER PRIMARY KEY, upto INTEGER NOT NULL);
    -- Each check failing in an incident, from its first failed result until the incident
    -- resolved (NULL: it goes on): what availability counts as down.
    CREATE TABLE downtime (
        incident_key TEXT NOT NULL,
        check_name TEXT NOT NULL,
        since REAL NOT NULL,
        until REAL,
        PRIMARY KEY (incident_key, check_name)
    );
    CREATE INDEX downtime_check ON downtime (check_name, since);
    -- When the helpdesk first said someone took the ticket (the watcher asks).
    ALTER TABLE tickets ADD COLUMN acknowledged_at REAL;
    """,
    """
    -- Alertmanager's groups (probe.alerts): each one's alerts and open incident.
    CREATE TABLE alert_groups (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    """,
]


@dataclass
class Batch:
    """Changes to write together in one transaction."""

    checks: Changes = field(default_factory=dict)
    groups: Changes = field(default_factory=dict)
    results: list[tuple[str, Result]] = field(default_factory=list)
    # Each transition with the route its ticket opens on (None: no ticket). Notes and the
    # resolve go where the open went, whatever the configuration says by then.
    transitions: list[tuple[Transition, str | None]] = field(default_factory=list)
    # When sites vote: this agent's site's votes on the checks it runs, with their streaks
    # (probe.cluster.votes): check → {"value", "reason", "streak"}. Never in SQLite.
    votes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Closed minutes of the history (probe.history.Recorder), added to what is stored.
    minutes: list[history.MinuteRow] = field(default_factory=list)
    # Alertmanager's groups (probe.alerts) changed: name → state (None: forgotten). SQLite only.
    alerts: Changes = field(default_factory=dict)

    def merge(self, other: Batch) -> None:
        self.checks.update(other.checks)
        self.groups.update(other.groups)
        self.results += other.results
        self.transitions += other.transitions
        self.votes.update(other.votes)
        self.minutes += other.minutes
        self.alerts.update(other.alerts)

    def __bool__(self) -> bool:
        return bool(self.checks or self.groups or self.results or self.transitions
                    or self.votes or self.minutes or self.alerts)

    @property
    def decided(self) -> bool:
        """Anything but the history of results: what should not wait."""
        return bool(self.checks or self.groups or self.transitions or self.votes
                    or self.alerts)


@dataclass(frozen=True)
class Snapshot:
    checks: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)


class StoreError(Exception):
    """The state database cannot be opened or written (read-only, full, corrupt)."""


class Store:
    FILE = "probe.sqlite3"

    def __init__(self, state_dir: Path, *, history: int = 50) -> None:
        self.path = state_dir / self.FILE
        self.history = history
        self._lock = threading.Lock()
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            _writable(state_dir)
        except OSError as err:
            raise StoreError(
                f"cannot write the state directory {state_dir}: {err.strerror or err}"
            ) from err
        try:
            # Two processes may open a new state at once (the daemon starting, `probe tickets`
            # run by hand): one sets it up, the other waits, then finds it set up.
            with _locked(state_dir):
                self._db = sqlite3.connect(self.path, check_same_thread=False,
                                           isolation_level=None)
                self._db.execute("PRAGMA busy_timeout=5000")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
            self._seq: dict[str, int] = dict(
                self._db.execute("SELECT check_name, MAX(seq) FROM results GROUP BY check_name")
            )
            self._ids: dict[str, int] = dict(
                self._db.execute("SELECT name, id FROM history_checks"))
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open the state database {self.path}: {err}") from err

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this probe knows "
                f"({len(MIGRATIONS)}): was it written by a newer release?"
            )
        for number in range(version, len(MIGRATIONS)):
            self._db.executescript(
                f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def load(self) -> Snapshot:
        with self._lock:
            checks = {n: json.loads(d) for n, d in self._db.execute("SELECT * FROM check_state")}
            groups = {n: json.loads(d) for n, d in self._db.execute("SELECT * FROM group_state")}
            alerts = {n: json.loads(d) for n, d in self._db.execute("SELECT * FROM alert_groups")}
        return Snapshot(checks, groups, alerts)

    def write(self, batch: Batch) -> None:
        """Write a batch in one transaction; raises StoreError and writes nothing on failure."""
        with self._writing():
            self._transaction(batch)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, for a write: an SQLite error (read-only, full)
        rolls back what was begun and becomes a StoreError."""
        with self._lock, self._rolled_back():
            try:
                yield self._db
            except sqlite3.Error as err:
                raise StoreError(f"cannot write the state database {self.path}: {err}") from err

    @contextlib.contextmanager
    def _rolled_back(self) -> Iterator[None]:
        """Whatever stops a write half-way (a full disk, or a bug) rolls back what it began:
        left open on the shared connection, the transaction would take in the next writer's
        statements and lose them with its own rollback."""
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _transaction(self, batch: Batch) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        _upsert(db, "check_state", batch.checks)
        _upsert(db, "group_state", batch.groups)
        _upsert(db, "alert_groups", batch.alerts)
        rows = []
        # Counted apart and kept only once committed: a write refused half-way must not cost
        # the next try its places in the ring (an older result pushed out before its time).
        seqs: dict[str, int] = {}
        for name, result in batch.results:
            seq = seqs.get(name, self._seq.get(name, 0)) + 1
            seqs[name] = seq
            # The evidence of a failure is what a ticket and an operator look at; that of a
            # success is in /metrics already and would cost a JSON encoding per check.
            evidence = "{}" if result.ok else json.dumps(result.evidence, default=str)
            rows.append((
                name, seq % self.history, seq, result.started_at, result.state, result.duration,
                result.reason, evidence,
            ))
        db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._minutes(db, batch.minutes)
        record_transitions(db, batch.transitions)
        record_downtime(db, [t for t, _ in batch.transitions])
        db.execute("COMMIT")
        self._seq.update(seqs)

    def _minutes(self, db: sqlite3.Connection, rows: list[history.MinuteRow]) -> None:
        if not rows:
            return
        new = {(row[0],) for row in rows} - {(name,) for name in self._ids}
        if new:
            db.executemany("INSERT OR IGNORE INTO history_checks (name) VALUES (?)", new)
            marks = ",".join("?" * len(new))
            self._ids.update(db.execute(f"SELECT name, id FROM history_checks WHERE name IN"
                                        f" ({marks})", [n for (n,) in new]))
        db.executemany(_ADD_MINUTE, [(self._ids[row[0]], *row[1:]) for row in rows])

    def roll_up(self, now: float, keep: Mapping[int, float]) -> int:
        """Roll closed hours and days up from their minutes (probe.history) and delete what
        is older than `keep` (seconds by resolution). Works in steps, each under the lock, so
        that writes go on meanwhile. The number of buckets rolled up."""
        rolled = 0
        for size in (history.HOUR, history.DAY):
            with self._lock:
                row = self._db.execute("SELECT upto FROM history_rolled WHERE res = ?",
                                       (size,)).fetchone()
                first = self._db.execute("SELECT min(t) FROM history_minutes"
                                         ).fetchone()[0] if row is None else None
            start = row[0] if row is not None else None
            if start is None:
                if first is None:
                    continue
                start = int(first // size) * size
            # Nothing older than what minutes are kept for can be rolled up any more.
            start = max(start, int((now - keep[history.MINUTE]) // size) * size)
            while start + size + history.ROLL_AFTER <= now:
                self._roll(size, start)
                start += size
                rolled += 1
        if not rolled:
            return 0
        with self._writing() as db:
            for size, seconds in keep.items():
                # Each check's old rows through the key: no scan of every row.
                db.execute(f"DELETE FROM {history.TABLES[size]} WHERE check_id IN"
                           " (SELECT id FROM history_checks) AND t < ?", (now - seconds,))
            db.execute("DELETE FROM downtime WHERE until < ?", (now - keep[history.DAY],))
        return rolled

    def _roll(self, size: int, start: int) -> None:
        counts = ", ".join(f"h.{c}" for c in history.COUNTS[1:])
        with self._lock:
            rows = self._db.execute(
                f"SELECT c.id, {counts} FROM history_checks c JOIN history_minutes h"
                " ON h.check_id = c.id AND h.t >= ? AND h.t < ? ORDER BY c.id",
                (start, start + size)).fetchall()
        rolled = history.roll_up(rows, start)
        marks = ", ".join("?" * (1 + len(history.columns(size))))
        with self._writing() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(f"INSERT OR REPLACE INTO {history.TABLES[size]} VALUES ({marks})",
                           rolled)
            db.execute("INSERT OR REPLACE INTO history_rolled VALUES (?, ?)", (size, start + size))
            db.execute("COMMIT")

    def recent_results(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, state, duration, reason, evidence FROM results WHERE check_name = ?"
                " ORDER BY seq DESC LIMIT ?",
                (name, limit),
            ).fetchall()
        return [
            {"at": at, "state": state, "duration": duration, "reason": reason,
             "evidence": json.loads(evidence)}
            for at, state, duration, reason, evidence in rows
        ]

    def windows(self, since: float) -> dict[int, dict[str, Any]]:
        """The maintenance windows set at run time that end after `since`; older ones go."""
        with self._lock:
            self._db.execute("DELETE FROM maintenance WHERE ends_at <= ?", (since,))
            rows = self._db.execute("SELECT id, data FROM maintenance ORDER BY id").fetchall()
        return {number: json.loads(data) for number, data in rows}

    def add_window(self, data: dict[str, Any], ends_at: float) -> int:
        """Raises StoreError: a window that is not stored would not outlive a restart."""
        with self._writing() as db:
            cursor = db.execute("INSERT INTO maintenance (data, ends_at) VALUES (?, ?)",
                                (json.dumps(data), ends_at))
        return int(cursor.lastrowid or 0)

    def end_window(self, number: int) -> None:
        with self._writing() as db:
            db.execute("DELETE FROM maintenance WHERE id = ?", (number,))

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only access for status pages and tests."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `work` with the connection, under the store's lock (for the outbox); what it
        began and did not finish is rolled back."""
        with self._lock, self._rolled_back():
            return work(self._db)


# A minute, added to what an agent (or this one, before a restart) stored of it.
_ADD_MINUTE = f"""
INSERT INTO history_minutes VALUES ({", ".join("?" * (1 + len(history.COUNTS)))})
ON CONFLICT (check_id, t) DO UPDATE SET
    n = n + excluded.n, failed = failed + excluded.failed, unknown = unknown + excluded.unknown,
    covered = covered + excluded.covered, na = na + excluded.na,
    maintenance = maintenance + excluded.maintenance, dsum = dsum + excluded.dsum,
    dmax = max(dmax, excluded.dmax), ph1 = ph1 + excluded.ph1, ph2 = ph2 + excluded.ph2,
    ph3 = ph3 + excluded.ph3, ph4 = ph4 + excluded.ph4, ph5 = ph5 + excluded.ph5
"""


def record_downtime(db: sqlite3.Connection, transitions: list[Transition]) -> None:
    """Each check failing in an incident, from its first failed result, until the incident
    resolves (probe.history.downtime_rows), in the caller's transaction."""
    for transition in transitions:
        db.executemany("INSERT OR IGNORE INTO downtime (incident_key, check_name, since)"
                       " VALUES (?, ?, ?)", history.downtime_rows(transition))
        if transition.kind == "resolve":
            db.execute("UPDATE downtime SET until = ? WHERE incident_key = ? AND until IS NULL",
                       (transition.at, transition.key))


def _writable(directory: Path) -> None:
    """SQLite says only "unable to open database file": ask the file system, which says why."""
    with tempfile.TemporaryFile(dir=directory, prefix=".probe-write-test-"):
        pass


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the state directory (flock: released if the process dies)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _upsert(db: sqlite3.Connection, table: str, changes: Changes) -> None:
    gone = [(name,) for name, data in changes.items() if data is None]
    kept = [(name, json.dumps(data)) for name, data in changes.items() if data is not None]
    db.executemany(f"DELETE FROM {table} WHERE name = ?", gone)
    db.executemany(f"INSERT OR REPLACE INTO {table} (name, data) VALUES (?, ?)", kept)

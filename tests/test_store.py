"""The state database: what one write leaves half-done never takes another with it, and
processes that open a new state at the same moment all find it set up."""

from __future__ import annotations

import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from probe.store import Store
from tests.harness.proc import PROBE


def windows_on_disk(state: Path) -> list[str]:
    """What another process reading the file sees: committed rows only."""
    with sqlite3.connect(state / Store.FILE) as db:
        return [row[0] for row in db.execute("SELECT data FROM maintenance ORDER BY id")]


def test_a_write_that_fails_half_way_on_a_bug_does_not_take_the_next_write_with_it(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)

    def half_done(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO maintenance (data, ends_at) VALUES ('half-done', 0)")
        raise ValueError("a bug between two statements")

    with pytest.raises(ValueError):
        store.run(half_done)
    store.add_window({"reason": "the next write"}, 9e9)
    try:
        # Before, the transaction stayed open: the next write joined it, uncommitted, and
        # went with it at the next rollback.
        assert windows_on_disk(tmp_path) == ['{"reason": "the next write"}']
    finally:
        store.close()


def test_processes_opening_a_new_state_at_the_same_moment_all_find_it_set_up(
    tmp_path: Path,
) -> None:
    # `probe tickets` typed while the daemon starts for the first time, say. Each round a
    # new state directory, opened by four processes at once: before the state directory was
    # locked during set-up, one round in five failed ("table tickets already exists",
    # "database is locked", or the write test's file unlinked by another).
    failures = []
    for round_ in range(12):
        config = tmp_path / f"probe-{round_}.yaml"
        config.write_text(f"agent: {{name: a, state_dir: {tmp_path}/state-{round_}}}\n"
                          "checks: []\n")

        def tickets(_: int, config: Path = config) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*PROBE, "tickets", "--config", str(config), "list"],
                                  capture_output=True, text=True, timeout=60)

        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(tickets, range(4)))
        failures += [(round_, d.returncode, d.stdout + d.stderr) for d in done
                     if (d.returncode, d.stdout) != (0, "no local tickets\n")]
    assert failures == []

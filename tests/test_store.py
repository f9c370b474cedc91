"""The state database's writes: what one write leaves half-done never takes another with it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from probe.store import Store


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

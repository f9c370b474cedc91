"""Duplicate tickets, as a helpdesk and a scrape of /metrics see them: when the helpdesk holds
two open tickets with one incident key (a create sent twice), the watcher's reconcile keeps the
one probe records, resolves the other with a note naming the one kept, and counts it in
probe_ticket_duplicates_detected_total, which is served at 0 until then. The daemon runs in the
test against a real flaky target and the local helpdesk, whose tables are read directly."""

from __future__ import annotations

import logging
import re
import time

import aiohttp
import pytest

from probe.daemon import Daemon
from tests.harness.daemon import Target
from tests.harness.inloop import Runner
from tests.harness.wait import until

DUPLICATES = re.compile(r'^probe_ticket_duplicates_detected_total\{route="desk"\} (\S+)$', re.M)


def config(port: int) -> str:
    """A local route `desk` and one http check of service `shop`; a reconcile every 2s (ten
    polls of 200ms)."""
    return f"""
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{update_interval: 1h}}
ticketing:
  poll_interval: 200ms
  routes:
    desk: {{backend: local}}
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{port}/health"}}
"""


async def duplicates_counted(daemon: Daemon) -> str | None:
    """The counter's value for route desk, as /metrics serves it; None while not served."""
    async with aiohttp.ClientSession() as session, session.get(
        f"http://{daemon.config.agent.listen}/metrics",
        timeout=aiohttp.ClientTimeout(total=5),
    ) as response:
        found = DUPLICATES.search(await response.text())
    return found.group(1) if found else None


async def test_a_second_open_ticket_with_the_same_key_is_closed_and_counted(
    target: Target, run: Runner, caplog: pytest.LogCaptureFixture,
) -> None:
    daemon, desk = await run(config(target.port))
    assert await until("the counter served", lambda: duplicates_counted(daemon),
                       tolerate=(aiohttp.ClientError,)) == "0.0"
    target.down = True
    ((first, key, _, _, _),) = await until("the ticket", desk.tickets)
    assert key == "t/shop/1"
    # A second create of the same ticket, as a crash or a second agent would leave it.
    now = time.time()
    desk.set("INSERT INTO local_tickets (key, title, body, priority, created_at, updated_at)"
             " VALUES (?, 'again', 'again', 'high', ?, ?)", (key, now, now))

    await until("the duplicate resolved", lambda: [
        t for t in desk.tickets() if t[0] != first and t[3] == "resolved"])

    (kept, duplicate) = desk.tickets()
    assert (kept[0], kept[1], kept[3]) == (first, key, "new")  # probe's own ticket stays open
    assert duplicate[1] == key
    assert desk.notes(duplicate[0])[-1] == (
        "resolve", f"probe opened this ticket twice: it duplicates ticket {first}, which stays"
                   " open.")
    assert await duplicates_counted(daemon) == "1.0"
    (said,) = [r for r in caplog.records if r.getMessage().startswith("duplicate tickets")][:1]
    assert said.levelno == logging.WARNING
    assert (f"route=desk key={key} refs={first},{duplicate[0]} kept={first} "
            f"closing={duplicate[0]}") in said.getMessage()
    assert "resolve" not in [kind for kind, _ in desk.notes(first)]

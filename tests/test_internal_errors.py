"""A bug in probe's own code on the way to a helpdesk is not a flaky helpdesk: the action is tried
a few times, each failure logged with its traceback and counted, then failed for good where
`probe tickets failed` shows it and `probe tickets retry` sends it again, never dropped."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from probe.tickets.outbox import INTERNAL_ATTEMPTS
from tests.harness.daemon import ProbeProcess
from tests.harness.ports import free_port


async def test_an_action_that_meets_a_bug_fails_after_a_few_attempts_and_can_be_retried(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{name: a, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
ticketing: {{routes: {{desk: {{backend: local}}}}}}
checks: [{{name: self, interval: 1s, timeout: 500ms, http: {{url: "http://127.0.0.1:{port}/-/healthy"}}}}]
""")
    probe = ProbeProcess(config, port).start()
    try:
        await probe.wait("the daemon", lambda: probe.get("/-/ready") == "Ready\n", timeout=60)
        # An open whose facts lack the incident's agent, group..., which every release
        # writes: probe's own code fails on it (KeyError), not the helpdesk.
        with sqlite3.connect(tmp_path / "state" / "probe.sqlite3") as db:
            db.execute("INSERT INTO outbox (incident_key, action, route, created_at, payload)"
                       " VALUES ('a/ghost/1', 'open', 'desk', 0, '{}')")
        await probe.wait("the action failed for good", lambda: probe.db(
            "SELECT status FROM outbox WHERE incident_key = 'a/ghost/1'") == [("failed",)],
            timeout=60)
        failed = await asyncio.to_thread(probe.command, "tickets", "failed")
        assert failed.endswith(
            f"open a/ghost/1 on desk after {INTERNAL_ATTEMPTS} attempts: internal error (a bug in "
            f"probe, given up after {INTERNAL_ATTEMPTS} attempts): KeyError('agent')\n"), failed
        assert probe.metric("probe_internal_errors_total") == INTERNAL_ATTEMPTS
        assert probe.metric('probe_ticket_failures_total{action="open",kind="permanent",'
                            'route="desk"}') == 1
        log = probe.log_text()
        assert log.count("ERROR ticket delivery crashed: a bug in probe") == INTERNAL_ATTEMPTS
        assert log.count("KeyError: 'agent'") == INTERNAL_ATTEMPTS  # each with its traceback
        assert probe.get("/-/ready") == "Ready\n"  # the rest of probe goes on

        retried = await asyncio.to_thread(probe.command, "tickets", "retry")
        assert retried.startswith("1 failed actions queued again")
        # queued again, it is delivered again (and, the bug being still there, fails again)
        await probe.wait("the action tried again", lambda: probe.metric(
            "probe_internal_errors_total") == INTERNAL_ATTEMPTS + 1, timeout=60)
    finally:
        probe.stop()

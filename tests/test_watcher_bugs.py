"""A bug in probe's own code met while watching tickets (in a helpdesk client's status()) is
said with its traceback and counted in probe_internal_errors_total, and the watcher goes on with
the other tickets: one broken client does not stop escalation or human-close handling for all."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from probe.engine import Transition
from probe.facts import Facts, Policy
from probe.helpdesks import HELPDESKS, local
from probe.helpdesks.base import Helpdesk, TicketState
from probe.store import Batch, Store
from probe.tickets.ledger import SqliteLedger
from probe.tickets.outbox import OutboxMetrics
from probe.tickets.pool import Backends
from probe.tickets.watcher import GroupHealth, Watcher

asked: list[str] = []


class Probing(local.Backend):
    """The local helpdesk, with a bug in status() for one ticket."""

    async def status(self, ref: str) -> TicketState:
        asked.append(ref)
        if ref == "broken":
            return {"open": "open"}[ref]  # type: ignore[return-value]  # the bug: a KeyError
        return "acknowledged"


def facts(group: str) -> Facts:
    return Facts(agent="a", group=group, service=None, why="3 consecutive failures",
                 reason="HTTP 503", previous_reason="HTTP 503", first_failure_at=0.0,
                 opened_at=1.0, down_for=1.0, failed_checks=3, unreachable=(),
                 ticket=Policy(escalate_after=None))


async def test_a_bug_met_asking_about_one_ticket_is_counted_and_the_others_are_still_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(HELPDESKS, "local", Helpdesk(route=local.Route, backend=Probing))
    asked.clear()
    store = Store(tmp_path / "state")
    ledger = SqliteLedger(store)
    refs = ["broken", "7", "8"]
    for number, ref in enumerate(refs, 1):
        key = f"a/g{number}/1"
        store.write(Batch(transitions=[(Transition("open", f"g{number}", key, 1.0,
                                                   facts(f"g{number}")), "desk")]))
        (head,) = [h for h in (await ledger.heads()).rows if h.incident_key == key]
        await ledger.opened(head.id, key, key, "desk", ref, Policy())
    bugs = []
    watcher = Watcher(ledger, Backends({"desk": local.Route(backend="local")},
                                       database=store.path),
                      agent="a", group_health=lambda group: GroupHealth("open"),
                      wake=lambda: None, internal_error=lambda: bugs.append(1),
                      duplicates=OutboxMetrics(CollectorRegistry()).duplicates)

    await watcher.check_tickets()

    assert sorted(asked) == sorted(refs)  # the two sound tickets were asked all the same
    assert bugs == [1]
    (said,) = [r for r in caplog.records if "watching tickets crashed" in r.getMessage()]
    assert said.levelno == logging.ERROR
    assert "call=status" in said.getMessage() and "ref=broken" in said.getMessage()
    assert said.exc_info is not None and said.exc_info[0] is KeyError
    await watcher.backends.close()
    store.close()

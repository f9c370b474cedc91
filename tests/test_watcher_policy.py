"""The watcher's decisions, as tables: what becomes of an open ticket of an outage going on,
given what its helpdesk says, and of a ticket probe does not track. The watcher asks and
queues; these functions decide (the daemon-level tests show the asking and the delivering)."""

from __future__ import annotations

import pytest

from probe.facts import HumanClose, Policy
from probe.helpdesks.base import TicketState
from probe.tickets.watcher import (
    GroupHealth,
    Orphans,
    StatusDecision,
    StrayDecision,
    on_duplicates,
    on_status,
    on_stray,
    shown_ref,
    stray_incident,
)

HOUR = 3600.0


@pytest.mark.parametrize(("state", "on_human_close", "decision"), [
    # a human closed it while the outage goes on: as the policy says
    ("closed", "reopen", "reopen"),
    ("closed", "new", "replace"),
    ("closed", "leave", "leave"),
    # deleted or merged away: nothing to reopen, so a new one
    ("gone", "reopen", "replace"),
    ("gone", "new", "replace"),
    ("gone", "leave", "leave"),
    # someone has it: nothing to do, however long it has been open
    ("acknowledged", "reopen", "none"),
    ("acknowledged", "leave", "none"),
])
def test_a_ticket_closed_or_taken_by_a_human(
    state: TicketState, on_human_close: HumanClose, decision: StatusDecision,
) -> None:
    policy = Policy(on_human_close=on_human_close, escalate_after=HOUR)
    assert on_status(state, policy, opened_at=0, escalated_at=None, escalate_to="pager",
                     now=10 * HOUR) == decision


@pytest.mark.parametrize(("open_for", "escalate_after", "escalated_at", "escalate_to",
                          "decision"), [
    (HOUR, HOUR, None, "pager", "escalate"),  # untaken for exactly escalate_after
    (HOUR - 1, HOUR, None, "pager", "none"),  # a second before
    (10 * HOUR, HOUR, None, "pager", "escalate"),
    (10 * HOUR, HOUR, 2 * HOUR, "pager", "none"),  # escalated once, never twice
    (10 * HOUR, None, None, "pager", "none"),  # escalate_after: null turns it off
    (10 * HOUR, HOUR, None, None, "none"),  # the route has nowhere to escalate to
])
def test_an_untaken_ticket_is_escalated_once_after_escalate_after(
    open_for: float, escalate_after: float | None, escalated_at: float | None,
    escalate_to: str | None, decision: StatusDecision,
) -> None:
    policy = Policy(escalate_after=escalate_after)
    assert on_status("open", policy, opened_at=1000.0, escalated_at=escalated_at,
                     escalate_to=escalate_to, now=1000.0 + open_for) == decision


@pytest.mark.parametrize(("key", "found"), [
    ("eu-1/shop/3", ("shop", "eu-1/shop/3")),
    ("eu-1/shop/3+1", ("shop", "eu-1/shop/3")),  # the ticket that replaced a closed one
    ("eu-1/shop/3/escalation", None),  # escalations are the escalated ticket's business
    ("eu-1/shop/3+1/escalation", None),
    ("eu-1/shop", None),  # not a key probe writes
    ("eu-1", None),
])
def test_the_incident_of_an_untracked_ticket_is_read_from_its_key(
    key: str, found: tuple[str, str] | None,
) -> None:
    assert stray_incident(key) == found


@pytest.mark.parametrize(("health", "tracked", "decision"), [
    (GroupHealth("open", "eu-1/shop/4"), False, "adopt"),  # the outage goes on, untracked
    (GroupHealth("open", "eu-1/shop/4"), True, "leave"),  # it has a ticket already
    (GroupHealth("failing"), False, "wait"),  # the next incident takes it up
    (GroupHealth("unknown"), False, "wait"),  # no result yet since start
    (GroupHealth("healthy"), False, "resolve"),  # nothing is wrong: closed with a note
])
def test_an_untracked_ticket(health: GroupHealth, tracked: bool,
                             decision: StrayDecision) -> None:
    assert on_stray(health, incident_tracked=tracked) == decision


def test_an_orphan_is_taken_up_once_and_only_on_its_own_route() -> None:
    orphans = Orphans()
    orphans.keep("shop", "rt", "eu-1/shop/3", "17")
    orphans.keep("shop", "rt", "eu-1/shop/2", "12")  # the first one found stays
    assert orphans.take("shop", "zendesk") is None
    assert orphans.take("shop", "rt") == ("eu-1/shop/3", "17")
    assert orphans.take("shop", "rt") is None
    orphans.keep("db", "rt", "eu-1/db/1", "20")
    orphans.drop("db")  # recovered: resolved instead
    assert orphans.take("db", "rt") is None


@pytest.mark.parametrize(("refs", "recorded", "keep", "close"), [
    (["12"], "12", "12", []),  # one ticket: nothing to close
    (["12"], None, "12", []),
    (["12", "13"], "13", "13", ["12"]),  # the one the ledger records, its notes go there
    (["12", "13", "14"], "13", "13", ["12", "14"]),
    (["12", "13"], None, "12", ["13"]),  # none recorded: the oldest
    (["12", "13"], "7", "12", ["13"]),  # the recorded one is no longer open
    (["100", "99"], None, "99", ["100"]),  # numbers compared as numbers, not as text
    (["INC-7", "INC-3"], None, "INC-7", ["INC-3"]),  # not numbers: the first listed
])
def test_of_open_tickets_with_one_key_one_is_kept_and_the_others_closed(
    refs: list[str], recorded: str | None, keep: str, close: list[str],
) -> None:
    assert on_duplicates(refs, recorded) == (keep, close)


@pytest.mark.parametrize(("refs", "recorded", "close"), [
    (["12", "13"], None, []),  # its open is under way and will record one: not yet
    (["12", "13"], "13", ["12"]),  # recorded already: the others can go
    (["12", "13"], "7", ["13"]),  # recorded, but no longer open: the oldest stays
])
def test_duplicates_wait_for_an_open_under_way_that_records_none_yet(
    refs: list[str], recorded: str | None, close: list[str],
) -> None:
    assert on_duplicates(refs, recorded, opening=True)[1] == close


@pytest.mark.parametrize(("ref", "shown"), [
    ("12", "12"),
    ("PROJ-12", "PROJ-12"),
    ("<12>\nclick me", "'<12>\\nclick me'"),  # the helpdesk's data, quoted in the note
    ("9" * 500, repr("9" * 100)),  # capped
])
def test_a_ref_named_in_a_note_is_shown_quoted_unless_plain(ref: str, shown: str) -> None:
    assert shown_ref(ref) == shown

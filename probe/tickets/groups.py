"""What the ticket side asks of an incident group: the ticket settings its open carries, the
route its tickets go to, what its ticket shows, and whether its outage goes on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from checks.base import Result
from probe.config import Check
from probe.engine import Engine
from probe.facts import Policy
from probe.tickets.watcher import GroupHealth


@dataclass(frozen=True)
class Context:
    """What the daemon knows of an incident's group that the ticket shows."""

    checks: Sequence[Check]
    recent: Sequence[Mapping[str, Any]]  # the members' last results, newest first


def policy(members: Sequence[Check], results: Mapping[str, Result]) -> Policy:
    """The group's ticket settings, kept with the open so that notes and escalation follow
    what was configured when it opened. Its lead member's, with the expiry priority when only
    certificates about to expire (still serving) fail: a warning, not an outage."""
    if not members:
        return Policy()
    lead = members[0]
    settings = lead.ticket
    failing = [results[m.name] for m in members
               if m.name in results and results[m.name].state == "down"]
    expiring = bool(failing) and all(r.evidence.get("expiring") for r in failing)
    return Policy(
        priority=settings.expiry_priority if expiring else settings.priority,
        expiring=expiring,
        escalate_after=settings.escalate_after,
        on_human_close=settings.on_human_close,
        title_template=settings.title_template,
        body_template=settings.body_template,
        runbook=lead.runbook,
        dashboard=lead.dashboard,
    )


def route(members: Sequence[Check]) -> str | None:
    """The route of the group's tickets: its first member's with tickets on."""
    for check in members:
        if check.ticket.enabled and check.ticket.route is not None:
            return check.ticket.route
    return None


async def context(members: Sequence[Check],
                  recent_results: Callable[[str], Awaitable[list[dict[str, Any]]]]) -> Context:
    recent = [{**r, "check": check.name} for check in members
              for r in await recent_results(check.name)]
    recent.sort(key=lambda r: r["at"], reverse=True)
    return Context(members, recent[:10])


def health(engine: Engine, group: str) -> GroupHealth:
    state = engine.groups.get(group)
    if state is not None and state.incident is not None:
        return GroupHealth("open", state.incident.key)
    members = [engine.checks[n] for n in engine.members.get(group, []) if n in engine.checks]
    if any(m.failures or m.bad or m.flapping for m in members):
        return GroupHealth("failing")
    if members and all(m.last_state == "up" for m in members):
        return GroupHealth("healthy")
    return GroupHealth("unknown")

"""The status document `/api/status` serves and `probe status` prints: each check's latest
result and streaks, the open incidents, and the ticket actions waiting or failed. In a cluster,
any agent shows the whole cluster: the checks it runs as it knows them, the others as their
agents last wrote them in the cluster's database, each with the agent that runs it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from checks.base import Result
from probe import __version__, alerts
from probe.config import Check
from probe.engine import CheckState, Engine, GroupState
from probe.tickets.ledger import Ledger

FAILED_SHOWN = 20  # the newest failed ticket actions listed; `probe tickets failed` has all


@dataclass(frozen=True)
class ClusterView:
    """What the cluster's database holds: who runs each group, the states and latest results
    the agents last wrote, the agents themselves."""

    site: str
    owners: Mapping[str, str]  # group → the agent that holds it
    checks: Mapping[str, CheckState]
    groups: Mapping[str, GroupState]
    latest: Mapping[str, Mapping[str, Any]]  # check → its latest result (at, state, ...)
    agents: Sequence[Mapping[str, Any]] = field(default_factory=list)


async def document(agent: str, checks: Mapping[str, Check], results: Mapping[str, Result],
                   engine: Engine, ledger: Ledger, *,
                   alert_groups: Mapping[str, alerts.GroupState] | None = None, ready: bool,
                   state_writable: bool, cluster: ClusterView | None = None) -> dict[str, Any]:
    backlog = await ledger.backlog()
    failed = await ledger.failed(newest_first=True, limit=FAILED_SHOWN)
    doc = {
        "agent": agent,
        "ticket_actions_pending": {"count": backlog.count, "oldest_at": backlog.oldest_at,
                                   "most_attempts": backlog.most_attempts},
        "ticket_actions_failed": [
            {"id": f.id, "incident": f.incident_key, "action": f.action, "route": f.route,
             "attempts": f.attempts, "error": f.error}
            for f in failed
        ],
        "version": __version__,
        "ready": ready,
        "state_writable": state_writable,
        "checks": [_check(name, check, results.get(name), engine)
                   for name, check in checks.items()],
        "incidents": [
            {"group": group, "key": i.key, "opened_at": i.opened_at,
             "first_failure_at": i.first_failure_at, "why": i.why, "reason": i.reason,
             "checks": i.members, "unreachable": i.unreachable}
            for group, gs in engine.groups.items() if (i := gs.incident) is not None
        ] + [_alert_incident(name, st) for name, st in sorted((alert_groups or {}).items())
             if st.key is not None],
    }
    if cluster is not None:
        _cluster(doc, checks, engine, cluster)
    return doc


def _cluster(doc: dict[str, Any], checks: Mapping[str, Check], engine: Engine,
             cluster: ClusterView) -> None:
    """The checks and incidents of the groups other agents hold, as the database has them."""
    shown: list[dict[str, Any]] = doc["checks"]
    for entry in shown:
        check = checks[entry["name"]]
        entry["agent"] = cluster.owners.get(check.group)
        if check.group in engine.groups:
            continue  # this agent's own: fresher in memory
        st, latest = cluster.checks.get(entry["name"]), cluster.latest.get(entry["name"], {})
        entry.update({
            "state": latest.get("state"), "reason": latest.get("reason", ""),
            "duration_seconds": latest.get("duration"), "last_run_at": latest.get("at"),
            "consecutive_failures": st.failures if st else 0,
            "consecutive_successes": st.successes if st else 0,
            "flapping": st.flapping if st else False,
            "unreachable": st.unreachable if st else False,
            "in_maintenance": st.in_maintenance if st else False,
            **_verdict(st),
        })
    doc["incidents"] += [
        {"group": group, "key": i.key, "opened_at": i.opened_at,
         "first_failure_at": i.first_failure_at, "why": i.why, "reason": i.reason,
         "checks": i.members, "unreachable": i.unreachable, "agent": cluster.owners.get(group)}
        for group, gs in sorted(cluster.groups.items())
        if group not in engine.groups and (i := gs.incident) is not None
    ]
    doc["cluster"] = {"site": cluster.site, "agents": list(cluster.agents)}


def _alert_incident(group: str, st: alerts.GroupState) -> dict[str, Any]:
    firing = st.firing
    return {"group": group, "key": st.key, "opened_at": st.opened_at,
            "first_failure_at": st.first_at,
            "why": alerts.why(firing),
            "reason": firing[0].line() if firing else "", "checks": [], "unreachable": [],
            "receiver": st.receiver, "group_labels": st.group_labels,
            "alerts": [a.line() for a in firing]}


def _check(name: str, check: Check, result: Result | None, engine: Engine) -> dict[str, Any]:
    st = engine.checks.get(name)
    return {
        "name": name,
        "kind": check.kind,
        "target": check.spec.target,
        "service": check.service,
        "state": result.state if result else None,
        "reason": result.reason if result else "",
        "duration_seconds": result.duration if result else None,
        "last_run_at": result.started_at if result else None,
        "consecutive_failures": st.failures if st else 0,
        "consecutive_successes": st.successes if st else 0,
        "flapping": st.flapping if st else False,
        "unreachable": st.unreachable if st else False,
        "in_maintenance": st.in_maintenance if st else False,
        **_verdict(st),
    }


def _verdict(st: CheckState | None) -> dict[str, Any]:
    """When sites vote: the verdict (failing, healthy, undecided), why, and each site's view."""
    if st is None or not st.quorum:
        return {}
    return {"quorum": st.quorum, "verdict": st.verdict, "sites": st.sites}

"""What a ticket says, rendered in one place: the title, the body (plain text and Markdown),
the status notes, the escalation note and the closing note, from an incident's facts.

Templates in the configuration (`ticket.title_template`, `ticket.body_template`) use
`$name` placeholders (Python's string.Template): $group $reason $target $why $since $agent
$key $checks $down_for.
"""

from __future__ import annotations

import datetime as dt
import string
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from checks.values import format_duration
from probe.facts import Alert, AlertGroup, Facts, Member
from probe.helpdesks.base import Priority, Ticket


def when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%H:%M:%S")


def span(seconds: float) -> str:
    return format_duration(max(0, round(seconds)))


def _lead(facts: Facts) -> tuple[str, Member]:
    """The member the title speaks of: the first one failing, else the first."""
    failing = [(n, c) for n, c in facts.checks.items() if c.consecutive_failures]
    if failing:
        return failing[0]
    return next(iter(facts.checks.items()), ("?", Member()))


def fields(facts: Facts, key: str) -> dict[str, str]:
    name, lead = _lead(facts)
    return {
        "group": facts.group,
        "reason": facts.reason or lead.reason or "failing",
        "target": lead.target or name,
        "why": facts.why,
        "since": when(facts.first_failure_at),
        "agent": facts.agent,
        "key": key,
        "checks": ", ".join(facts.checks),
        "down_for": span(facts.down_for),
    }


def title(facts: Facts, key: str, template: str | None = None) -> str:
    values = fields(facts, key)
    if template:
        return string.Template(template).safe_substitute(values)
    if facts.alerts is not None:
        return f"[probe] {_alert_title(facts.alerts)} FIRING — {values['reason']}"
    return f"[probe] {values['group']} {_state(facts)} — {values['reason']} from {values['target']}"


def _state(facts: Facts) -> str:
    if facts.why.startswith("flapping"):
        return "FLAPPING"
    if facts.ticket is not None and facts.ticket.expiring:
        return "EXPIRING"  # the certificate still serves: not an outage yet
    return "DOWN"


def ticket(
    facts: Facts,
    key: str,
    priority: Priority,
    *,
    recent: Sequence[Mapping[str, Any]] = (),
    links: Mapping[str, str | None] | None = None,
    title_template: str | None = None,
    body_template: str | None = None,
    follows: str | None = None,
) -> Ticket:
    values = fields(facts, key)
    if body_template:
        text = markdown = string.Template(body_template).safe_substitute(values)
    elif facts.alerts is not None:
        text, markdown = _alert_body(facts, facts.alerts, key, follows)
    else:
        text, markdown = _body(facts, key, recent, links or {}, follows)
    return Ticket(
        key=key,
        title=title(facts, key, title_template),
        body=text,
        body_markdown=markdown,
        priority=priority,
        agent=values["agent"],
        group=values["group"],
        follows=follows,
    )


def _body(
    facts: Facts,
    key: str,
    recent: Sequence[Mapping[str, Any]],
    links: Mapping[str, str | None],
    follows: str | None,
) -> tuple[str, str]:
    v = fields(facts, key)
    checks = facts.checks
    rows: list[tuple[str, str]] = [
        ("Since", f"{v['since']} ({span(facts.down_for)} ago)"),
        ("Seen from", v["agent"]),
        ("Why", v["why"]),
    ]
    if facts.service:
        rows.insert(0, ("Service", facts.service))
    lines = []
    for name, c in checks.items():
        state = "FAILING" if c.consecutive_failures else str(c.state or "?").upper()
        detail = (f" — {c.reason} ({c.consecutive_failures} in a row)"
                  if c.consecutive_failures else "")
        lines.append(f"{name} ({c.kind} {c.target}): {state}{detail}")
        if c.sites:
            lines.append(f"  sites: {sites(c)}")
    unreachable = list(facts.unreachable)
    timeline = [
        f"{clock(r['at'])}  {str(r['state']).upper():<7} {r.get('reason') or 'ok'}"
        + (f"  [{r['check']}]" if len(checks) > 1 and r.get("check") else "")
        for r in recent
    ]
    link_rows = [(label.capitalize(), url) for label, url in links.items() if url]
    if follows:
        link_rows.append(("Follows", f"ticket {follows}, closed while the outage went on"))
    headline = (f"{v['group']} needs a new certificate: {v['reason']} from {v['target']}"
                if _state(facts) == "EXPIRING" else
                f"{v['group']} is DOWN: {v['reason']} from {v['target']}")

    text = [headline, ""]
    text += [f"{label + ':':<11} {value}" for label, value in rows]
    text += ["", "Checks:"] + [f"  {line}" for line in lines]
    if unreachable:
        text += ["", "Unreachable because of it (no tickets of their own):"]
        text += [f"  {name}" for name in unreachable]
    if timeline:
        text += ["", "Last results (newest first):"] + [f"  {line}" for line in timeline]
    if link_rows:
        text += [""] + [f"{label + ':':<11} {value}" for label, value in link_rows]
    text += ["", f"probe key: {key} (probe finds this ticket by it: please keep it)"]

    md = [f"**{headline}**", ""]
    md += [f"- **{label}:** {value}" for label, value in rows]
    md += ["", "**Checks**", ""] + [f"- {line}" for line in lines]
    if unreachable:
        md += ["", "**Unreachable because of it** (no tickets of their own)", ""]
        md += [f"- {name}" for name in unreachable]
    if timeline:
        md += ["", "**Last results** (newest first)", "", "```", *timeline, "```"]
    if link_rows:
        md += [""] + [f"- **{label}:** {value}" for label, value in link_rows]
    md += ["", f"probe key: `{key}` (probe finds this ticket by it: please keep it)"]
    return "\n".join(text), "\n".join(md)


def still_open(facts: Facts) -> str:
    if facts.alerts is not None:
        return _alert_note(facts, facts.alerts)
    reason, before = facts.reason, facts.previous_reason
    failing = {n: c for n, c in facts.checks.items() if c.consecutive_failures}
    streak = max((c.consecutive_failures for c in failing.values()), default=0)
    changed = (f"changed since the last note (was: {before})" if before and before != reason
               else "unchanged since the last note")
    lines = [
        f"Still failing after {span(facts.down_for)} "
        f"(since {when(facts.first_failure_at)}).",
        f"{facts.failed_checks} failed checks so far; {streak} in a row now.",
        f"Latest: {reason} — {changed}.",
    ]
    if failing:
        lines.append("Failing: " + ", ".join(failing))
    lines += [f"Sites ({name}): {sites(c)}" for name, c in facts.checks.items() if c.sites]
    if facts.unreachable:
        lines.append("Unreachable because of it: " + ", ".join(facts.unreachable))
    return "\n".join(lines)


def resolved(facts: Facts) -> str:
    start = facts.first_failure_at
    end = facts.resolved_at if facts.resolved_at is not None else start
    how = facts.recovered or "recovered"
    if facts.alerts is not None:
        first = ("Resolved: Alertmanager says every alert of the group has ended."
                 if how == "recovered" else f"Closed by probe: {how}.")
        changed = [f"  {line}" for line in facts.alerts.changes]
        return "\n".join([
            first, *(["This notification:", *changed] if changed else []),
            f"Firing from {when(start)} to {when(end)} ({span(end - start)}).",
            f"Seen by {facts.agent or '?'}.",
        ])
    if how != "recovered":
        first = f"Closed by probe: the check was {how}."
    else:
        first = "Recovered: " + ", ".join(
            f"{n} ({c.kind} {c.target}) OK" for n, c in facts.checks.items()
        ) + "."
    return "\n".join([
        first,
        f"Down from {when(start)} to {when(end)} ({span(end - start)}), "
        f"{facts.failed_checks} failed checks.",
        *(f"Sites ({name}): {sites(c)}" for name, c in facts.checks.items() if c.sites),
        f"Seen from {facts.agent or '?'}.",
    ])


def sites(member: Member) -> str:
    """What each site saw of a check, when sites vote: "eu-west: HTTP 503 since 10:02;
    us-east: timeout since 10:03; ap-south: UP"."""
    parts = []
    for view in member.sites:
        if view.vote == "failing":
            since = f" since {clock(view.since)}" if view.since is not None else ""
            seen = f"{view.reason or 'failing'}{since}"
        elif view.vote == "healthy":
            seen = "UP"
        elif view.vote == "unknown":
            seen = f"cannot check ({view.reason})" if view.reason else "cannot check"
        elif view.vote == "silent":
            seen = "silent (its agents are gone: out of the vote)"
        else:
            seen = "no fresh vote"
        parts.append(f"{view.site}: {seen}")
    return "; ".join(parts)


def escalated(route: str, after: float) -> str:
    return (f"Nobody has taken this ticket in {span(after)}: probe escalated it to the "
            f"{route} route.")


def reopened(facts: Facts) -> str:
    return ("Reopened by probe: this ticket was closed, but the outage goes on "
            f"({facts.reason}, since {when(facts.first_failure_at)}).")


def triage(lines: Sequence[tuple[str, str]]) -> str:
    width = max((len(label) for label, _ in lines), default=0)
    return "\n".join(["Triage at open time:", *(f"  {label:<{width}}  {text}"
                                                 for label, text in lines)])


# --- incidents fed by Alertmanager (probe.alerts) ---------------------------------------------

def _alert_title(group: AlertGroup) -> str:
    labels = group.group_labels or (group.alerts[0].labels if group.alerts else {})
    name = labels.get("alertname")
    rest = ", ".join(f"{k}={v}" for k, v in labels.items() if k != "alertname")
    return " ".join(part for part in (name, f"{{{rest}}}" if rest else "") if part) or "alerts"


def silence_link(group: AlertGroup) -> str | None:
    """Alertmanager's page to silence the group: its labels as the new silence's matchers."""
    if not group.external_url.startswith(("http://", "https://")):
        return None
    matchers = ",".join(f'{k}="{_escape_matcher(v)}"' for k, v in group.group_labels.items())
    return (f"{group.external_url.rstrip('/')}/#/silences/new?filter="
            + quote("{" + matchers + "}", safe=""))


def _escape_matcher(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _links(alert: Alert) -> list[tuple[str, str]]:
    """The alert's links: its runbook and dashboards (annotations), and the rule's graph in
    Prometheus (generatorURL). Only http(s) addresses: a label is data, never a script."""
    out = []
    for label, key in (("Runbook", "runbook_url"), ("Runbook", "runbook"),
                       ("Dashboard", "dashboard_url"), ("Dashboard", "dashboard"),
                       ("Dashboard", "grafana_url")):
        url = alert.annotations.get(key, "")
        if url.startswith(("http://", "https://")) and (label, url) not in out:
            out.append((label, url))
    if alert.generator_url.startswith(("http://", "https://")):
        out.append(("Source", alert.generator_url))
    return out


def _alert_lines(alert: Alert) -> list[str]:
    name = alert.labels.get("alertname", alert.fingerprint)
    labels = ", ".join(f"{k}={v}" for k, v in alert.labels.items() if k != "alertname")
    state = "FIRING" if alert.status == "firing" else "RESOLVED"
    lines = [f"{name} ({state}, since {when(alert.starts_at)})"]
    if labels:
        lines.append(f"  labels: {labels}")
    for key in ("summary", "description", "message"):
        if alert.annotations.get(key):
            lines.append(f"  {key}: {alert.annotations[key]}")
    lines += [f"  {label.lower()}: {url}" for label, url in _links(alert)]
    return lines


def _alert_body(facts: Facts, group: AlertGroup, key: str,
                follows: str | None) -> tuple[str, str]:
    firing = [a for a in group.alerts if a.status == "firing"]
    headline = (f"{_alert_title(group)} is FIRING in Alertmanager: "
                f"{len(firing)} alert{'s' * (len(firing) != 1)}")
    rows = [("Since", f"{when(facts.first_failure_at)} ({span(facts.down_for)} ago)"),
            ("Receiver", group.receiver)]
    if group.group_labels:
        rows.append(("Group", ", ".join(f"{k}={v}" for k, v in group.group_labels.items())))
    links = [("Silence", silence_link(group))]
    if group.external_url.startswith(("http://", "https://")):
        links.append(("Alertmanager", group.external_url))
    if follows:
        links.append(("Follows", f"ticket {follows}, closed while the alerts went on firing"))
    alerts = [line for alert in group.alerts for line in _alert_lines(alert)]

    text = [headline, ""]
    text += [f"{label + ':':<13} {value}" for label, value in rows]
    text += ["", "Alerts:"] + [f"  {line}" for line in alerts]
    text += [""] + [f"{label + ':':<13} {url}" for label, url in links if url]
    text += ["", f"probe key: {key} (probe finds this ticket by it: please keep it)"]
    md = [f"**{headline}**", ""]
    md += [f"- **{label}:** {value}" for label, value in rows]
    md += ["", "**Alerts**", "", "```", *alerts, "```", ""]
    md += [f"- **{label}:** {url}" for label, url in links if url]
    md += ["", f"probe key: `{key}` (probe finds this ticket by it: please keep it)"]
    return "\n".join(text), "\n".join(md)


def _alert_note(facts: Facts, group: AlertGroup) -> str:
    firing = [a for a in group.alerts if a.status == "firing"]
    if group.changes:
        lines = ["Alertmanager changed the group:", *(f"  {c}" for c in group.changes)]
    else:
        lines = [f"Still firing after {span(facts.down_for)} "
                 f"(since {when(facts.first_failure_at)})."]
    lines.append(f"Firing now ({len(firing)}):")
    lines += [f"  {a.line()}" for a in firing]
    return "\n".join(lines)


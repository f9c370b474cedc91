"""What an incident is at one transition: the engine's account of it, and what its tickets say.

The engine writes `Facts` into each `Transition`; the daemon adds the ticket `Policy` of the
group at open; the ledger stores them as JSON (the outbox's payload, the incidents table) and
the ticket side reads them back to render titles, bodies and notes. The JSON is one flat object
with the field names below: the shape every release since 0.1.0 has stored, so an action left
pending by an older release is delivered by a newer one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from checks.base import State

HumanClose = Literal["reopen", "new", "leave"]
Priority = Literal["urgent", "high", "normal", "low"]


@dataclass(frozen=True, slots=True)
class SiteView:
    """What one site saw of a check, when sites vote: its vote (failing, healthy, unknown: it
    could not run it), or unheard (no fresh vote), or silent (its agents gone long enough to
    leave the vote); the failure it saw, and since when."""

    site: str
    vote: str
    reason: str = ""
    since: float | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """One check of the incident's group, as it stood at the transition."""

    kind: str | None = None
    target: str | None = None
    state: State | None = None
    consecutive_failures: int = 0
    reason: str = ""  # its latest failure reason while failing, else ""
    flapping: bool = False
    unreachable: bool = False
    in_maintenance: bool = False
    failing_since: float | None = None
    sites: tuple[SiteView, ...] = ()  # each site's view, when sites vote
    verdict: str = ""  # and the rule's verdict on them, with why


@dataclass(frozen=True, slots=True)
class Policy:
    """The group's ticket settings when the incident opened: notes and escalation follow what
    was configured then, whatever a reload says later."""

    priority: Priority = "urgent"
    expiring: bool = False  # only certificates about to expire, still serving
    escalate_after: float | None = None
    on_human_close: HumanClose = "reopen"
    title_template: str | None = None
    body_template: str | None = None
    runbook: str | None = None
    dashboard: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Policy:
        return cls(**_known(cls, data or {}))


@dataclass(frozen=True, slots=True)
class Alert:
    """One Alertmanager alert of an alert group's incident, as its notifications told it."""

    fingerprint: str
    status: str  # firing | resolved
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None = None
    generator_url: str = ""

    def line(self) -> str:
        """The alert in a line: its name, its other labels, its summary."""
        name = self.labels.get("alertname", self.fingerprint)
        rest = ", ".join(f"{k}={v}" for k, v in self.labels.items() if k != "alertname")
        summary = self.annotations.get("summary", "")
        return name + (f" {{{rest}}}" if rest else "") + (f" — {summary}" if summary else "")


@dataclass(frozen=True, slots=True)
class AlertGroup:
    """What an incident fed by Alertmanager is about (probe.alerts): the group's receiver,
    labels and Alertmanager, its alerts (firing first), and what the transition changed."""

    receiver: str
    group_key: str
    group_labels: Mapping[str, str]
    external_url: str
    alerts: tuple[Alert, ...]
    changes: tuple[str, ...] = ()  # "firing: X", "resolved: Y": what this notification changed

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertGroup:
        known = _known(cls, data)
        known["alerts"] = tuple(Alert(**_known(Alert, a)) for a in known.get("alerts") or ())
        known["changes"] = tuple(known.get("changes") or ())
        return cls(**known)


@dataclass(frozen=True, slots=True)
class Facts:
    agent: str
    group: str
    service: str | None  # the group's service, None for a check on its own
    why: str  # "3 consecutive failures", "flapping: ..."
    reason: str  # the latest failure reason
    previous_reason: str  # the reason at the last status note
    first_failure_at: float
    opened_at: float
    down_for: float  # seconds since first_failure_at
    failed_checks: int
    unreachable: tuple[str, ...]  # checks failing because this one is
    checks: Mapping[str, Member] = field(default_factory=dict)
    recovered: str | None = None  # resolve: "recovered", or why probe closed it
    resolved_at: float | None = None
    down_for_text: str | None = None
    ticket: Policy | None = None
    alerts: AlertGroup | None = None  # an incident fed by Alertmanager, not by checks

    def with_ticket(self, policy: Policy) -> Facts:
        return dataclasses.replace(self, ticket=policy)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["unreachable"] = list(self.unreachable)
        data["checks"] = {name: dataclasses.asdict(m) for name, m in self.checks.items()}
        data["ticket"] = self.ticket.to_json() if self.ticket is not None else None
        data["alerts"] = self.alerts.to_json() if self.alerts is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Facts:
        """Facts read back from the ledger; keys it does not know (what the watcher adds to an
        action's payload) are left to their readers."""
        known = _known(cls, data)
        for required in _REQUIRED:
            if required not in known:
                raise KeyError(required)
        known["unreachable"] = tuple(data.get("unreachable") or ())
        known["checks"] = {name: _member(m) for name, m in (data.get("checks") or {}).items()}
        known["ticket"] = Policy.from_json(data["ticket"]) if data.get("ticket") else None
        known["alerts"] = AlertGroup.from_json(data["alerts"]) if data.get("alerts") else None
        return cls(**known)


def _member(data: Mapping[str, Any]) -> Member:
    known = _known(Member, data)
    known["sites"] = tuple(SiteView(**_known(SiteView, v)) for v in known.get("sites") or ())
    return Member(**known)


def _known(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


_REQUIRED = tuple(f.name for f in dataclasses.fields(Facts)
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)

"""Alertmanager's notifications in, incident transitions out: pure, as probe.engine is for checks.

Each Alertmanager group (its receiver and `groupKey`) is one incident group. An alert is known
by its fingerprint and `startsAt`: one firing of one alert. For each notification:

- a firing alert not seen before is added; the first one opens the incident;
- a resolved alert ends its firing; when none fires any more, the incident resolves;
- a firing already known, or one already resolved (a replica's late copy, a repeat, a
  notification overtaken by a newer one), changes nothing: it neither reopens nor opens;
- a firing with a new `startsAt` is a new firing: a new incident if the last one resolved;
- while the incident is open, a notification that added or resolved alerts is a status note.

Time (`tick`): the status note every `update_interval`, and an alert not notified for
`resolve_after` (Alertmanager restarted, its rule deleted) is taken as ended, saying so; if
Alertmanager speaks of it again as firing, it fires again.

`parse` reads a webhook payload (version 4) and says in words what it cannot take.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from checks.values import format_duration
from probe.config import AlertReceiver
from probe.engine import Transition, TransitionKind
from probe.facts import Alert, AlertGroup, Facts, Policy
from probe.tickets.watcher import GroupHealth

PREFIX = "alertmanager"  # the incident groups' names: alertmanager/RECEIVER/HASH
MAX_ALERTS = 1000  # alerts in one notification (Alertmanager's max_alerts keeps under it)
MAX_TEXT = 4000  # characters kept of one label or annotation value
DONE_FOR = 7 * 86400.0  # how long an ended firing is remembered, to know its late copies
MAX_DONE = 1000  # and how many of them, per group
RANK = ("urgent", "high", "normal", "low")


class Invalid(ValueError):
    """A payload probe cannot take: the message says what is wrong with it."""


@dataclass(frozen=True)
class Notification:
    receiver: str
    status: Literal["firing", "resolved"]
    group_key: str
    group_labels: dict[str, str]
    common_annotations: dict[str, str]
    external_url: str
    alerts: tuple[Alert, ...]
    truncated: int = 0


@dataclass
class Tracked:
    """An alert of the open incident, and when a notification last spoke of it."""

    alert: Alert
    heard_at: float


@dataclass
class GroupState:
    receiver: str
    group_key: str
    group_labels: dict[str, str] = field(default_factory=dict)
    external_url: str = ""
    seq: int = 0  # incidents opened so far
    key: str | None = None  # the open incident's
    opened_at: float = 0.0
    first_at: float = 0.0  # the earliest startsAt of its alerts
    last_note_at: float = 0.0
    policy: Policy = field(default_factory=Policy)
    alerts: dict[str, Tracked] = field(default_factory=dict)  # by fingerprint
    done: dict[str, float] = field(default_factory=dict)  # "fingerprint@startsAt" → ended at

    def dump(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["policy"] = self.policy.to_json()
        return data

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> GroupState:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        known["policy"] = Policy.from_json(data.get("policy"))
        alert_names = {f.name for f in dataclasses.fields(Alert)}
        known["alerts"] = {
            fp: Tracked(Alert(**{k: v for k, v in t["alert"].items() if k in alert_names}),
                        t["heard_at"])
            for fp, t in (data.get("alerts") or {}).items()}
        return cls(**known)

    @property
    def firing(self) -> list[Alert]:
        return sorted((t.alert for t in self.alerts.values() if t.alert.status == "firing"),
                      key=lambda a: (a.starts_at, a.fingerprint))


def group_name(receiver: str, group_key: str) -> str:
    """The incident group of an Alertmanager group: its groupKey is long and made of labels,
    so a hash of it stands in the name (the ticket shows the labels)."""
    digest = hashlib.sha256(f"{receiver}\0{group_key}".encode()).hexdigest()[:12]
    return f"{receiver_prefix(receiver)}{digest}"


def receiver_prefix(receiver: str) -> str:
    """What the names of a receiver's groups start with: its name as a key may hold it (a
    helpdesk's subject token, a label), the hash after it telling apart two names alike."""
    return f"{PREFIX}/{re.sub(r'[^A-Za-z0-9_.-]+', '-', receiver)[:64]}/"


def is_alert_group(group: str) -> bool:
    return group.startswith(PREFIX + "/")


# --- reading a payload -------------------------------------------------------------------------

def parse(payload: Any) -> Notification:
    """Alertmanager's webhook payload, version 4. Raises Invalid naming what is wrong."""
    if not isinstance(payload, dict):
        raise Invalid("expected a JSON object (Alertmanager's webhook payload)")
    version = payload.get("version")
    if version != "4":
        raise Invalid(f"version: expected \"4\" (Alertmanager's webhook), got {version!r}")
    receiver = _text(payload, "receiver", required=True)
    status = payload.get("status")
    if status not in ("firing", "resolved"):
        raise Invalid(f"status: expected \"firing\" or \"resolved\", got {status!r}")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise Invalid("alerts: expected a non-empty list")
    if len(alerts) > MAX_ALERTS:
        raise Invalid(f"alerts: {len(alerts)} in one notification, at most {MAX_ALERTS}: set "
                      "max_alerts in Alertmanager's webhook_configs")
    truncated = payload.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise Invalid(f"truncatedAlerts: expected a count, got {truncated!r}")
    return Notification(
        receiver=receiver,
        status=status,
        group_key=_text(payload, "groupKey", required=True),
        group_labels=_labels(payload, "groupLabels"),
        common_annotations=_labels(payload, "commonAnnotations"),
        external_url=_text(payload, "externalURL"),
        alerts=tuple(_alert(a, i) for i, a in enumerate(alerts)),
        truncated=truncated,
    )


def _alert(data: Any, i: int) -> Alert:
    where = f"alerts[{i}]"
    if not isinstance(data, dict):
        raise Invalid(f"{where}: expected an object")
    status = data.get("status")
    if status not in ("firing", "resolved"):
        raise Invalid(f"{where}.status: expected \"firing\" or \"resolved\", got {status!r}")
    ends = _time(data, "endsAt", where, required=False)
    return Alert(
        fingerprint=_text(data, "fingerprint", where, required=True),
        status=status,
        labels=_labels(data, "labels", where),
        annotations=_labels(data, "annotations", where),
        starts_at=_time(data, "startsAt", where, required=True) or 0.0,
        # Alertmanager's zero time (0001-01-01) for an alert with no end yet
        ends_at=ends if ends is not None and ends > 0 else None,
        generator_url=_text(data, "generatorURL", where),
    )


def _text(data: dict[str, Any], key: str, where: str = "", *, required: bool = False) -> str:
    value = data.get(key, None if required else "")
    name = f"{where}.{key}" if where else key
    if not isinstance(value, str) or (required and not value):
        raise Invalid(f"{name}: expected a non-empty string, got {value!r}"[:300])
    return value[:MAX_TEXT]


def _labels(data: dict[str, Any], key: str, where: str = "") -> dict[str, str]:
    value = data.get(key) or {}
    name = f"{where}.{key}" if where else key
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Invalid(f"{name}: expected an object of strings")
    return {k[:200]: v[:MAX_TEXT] for k, v in sorted(value.items())}


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def _time(data: dict[str, Any], key: str, where: str, *, required: bool) -> float | None:
    value = data.get(key)
    if value in (None, "") and not required:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{where}.{key}: expected an RFC 3339 time, got {value!r}"[:300])
    try:
        # Go writes nanoseconds; Python reads up to microseconds.
        moment = dt.datetime.fromisoformat(_FRACTION.sub(r"\1", value, count=1))
    except ValueError:
        raise Invalid(f"{where}.{key}: expected an RFC 3339 time, got {value!r}"[:300]) from None
    if moment.tzinfo is None:
        raise Invalid(f"{where}.{key}: {value!r} has no time zone")
    if moment.year < 1970:
        return 0.0
    return moment.timestamp()


# --- deciding ----------------------------------------------------------------------------------

def notify(state: GroupState | None, note: Notification, receiver: AlertReceiver, *,
           scope: str, agent: str, now: float) -> tuple[GroupState, list[Transition]]:
    """One notification of a group: its new state and the transitions it causes."""
    st = dataclasses.replace(state, alerts=dict(state.alerts), done=dict(state.done)) \
        if state is not None else GroupState(note.receiver, note.group_key)
    st.group_labels, st.external_url = dict(note.group_labels), note.external_url
    changes = []
    for alert in note.alerts:
        ident = f"{alert.fingerprint}@{alert.starts_at}"
        current = st.alerts.get(alert.fingerprint)
        if alert.status == "firing":
            if ident in st.done or (current is not None
                                    and current.alert.starts_at > alert.starts_at):
                continue  # a late copy of a firing that has ended, or been overtaken
            if (current is not None and current.alert.starts_at == alert.starts_at
                    and current.alert.status == "firing"):
                st.alerts[alert.fingerprint] = Tracked(alert, now)  # heard again
                continue
            # New, or heard again after probe took its silence for its end: firing.
            st.alerts[alert.fingerprint] = Tracked(alert, now)
            changes.append(f"firing: {alert.line()}")
        else:
            st.done[ident] = now
            if (current is not None and current.alert.status == "firing"
                    and alert.starts_at >= current.alert.starts_at):
                st.alerts[alert.fingerprint] = Tracked(alert, now)
                changes.append(f"resolved: {alert.line()}")
    _forget(st, now)
    return st, _decide(st, receiver, changes, scope=scope, agent=agent, now=now)


def tick(state: GroupState, receiver: AlertReceiver, *, scope: str, agent: str,
         now: float) -> tuple[GroupState, list[Transition]]:
    """Time passing for a group: alerts not notified for resolve_after end, status notes fall
    due. Returns the state unchanged (the same object) when nothing happened."""
    if state.key is None:
        return state, []
    silent = [t for t in state.alerts.values() if t.alert.status == "firing"
              and now - t.heard_at >= receiver.resolve_after]
    if silent:
        st = dataclasses.replace(state, alerts=dict(state.alerts), done=dict(state.done))
        changes = []
        for tracked in silent:
            ended = dataclasses.replace(tracked.alert, status="resolved", ends_at=now)
            # Not remembered as ended: should Alertmanager speak of it again, it fires.
            st.alerts[ended.fingerprint] = Tracked(ended, tracked.heard_at)
            changes.append(f"not notified for {format_duration(receiver.resolve_after)}, "
                           f"taken as ended: {ended.line()}")
        how = (f"not notified by Alertmanager for {format_duration(receiver.resolve_after)} "
               "(Alertmanager restarted, or the alerting rule was deleted)")
        return st, _decide(st, receiver, changes, scope=scope, agent=agent, now=now, how=how)
    if now - state.last_note_at >= receiver.update_interval:
        st = dataclasses.replace(state, last_note_at=now)
        return st, [_transition("still-open", st, agent, now)]
    return state, []


def end(state: GroupState, how: str, *, scope: str, agent: str,
        now: float) -> tuple[GroupState, list[Transition]]:
    """Resolve a group's incident for a reason of probe's own (its receiver was removed)."""
    if state.key is None:
        return state, []
    st = dataclasses.replace(state, alerts={
        fp: Tracked(dataclasses.replace(t.alert, status="resolved", ends_at=now), t.heard_at)
        for fp, t in state.alerts.items()})
    return st, _decide(st, AlertReceiver(), [], scope=scope, agent=agent, now=now, how=how)


def _decide(st: GroupState, receiver: AlertReceiver, changes: list[str], *, scope: str,
            agent: str, now: float, how: str = "recovered") -> list[Transition]:
    firing = st.firing
    if st.key is None:
        if not firing:
            st.alerts = {}
            return []
        st.seq += 1
        st.key = f"{scope}/{group_name(st.receiver, st.group_key)}/{st.seq}"
        st.alerts = {a.fingerprint: st.alerts[a.fingerprint] for a in firing}
        st.opened_at = st.last_note_at = now
        st.first_at = min(a.starts_at for a in firing) or now
        st.policy = policy(firing, receiver)
        return [_transition("open", st, agent, now)]
    if not firing:
        transition = _transition("resolve", st, agent, now, changes, how)
        st.key, st.alerts = None, {}
        return [transition]
    if changes:
        st.last_note_at = now
        return [_transition("still-open", st, agent, now, changes)]
    return []


def _forget(st: GroupState, now: float) -> None:
    """Ended firings are remembered for DONE_FOR, at most MAX_DONE of them."""
    kept = sorted(((at, ident) for ident, at in st.done.items() if now - at < DONE_FOR),
                  reverse=True)[:MAX_DONE]
    st.done = {ident: at for at, ident in kept}


def policy(firing: list[Alert], receiver: AlertReceiver) -> Policy:
    """The ticket's settings at open: the highest priority its alerts' label gives."""
    found = [receiver.priorities.get(a.labels.get(receiver.priority_label, ""),
                                     receiver.default_priority) for a in firing]
    return Policy(priority=min(found, key=RANK.index) if found else receiver.default_priority,
                  escalate_after=receiver.escalate_after,
                  on_human_close=receiver.on_human_close)


def _transition(kind: TransitionKind, st: GroupState, agent: str, now: float,
                changes: list[str] | tuple[str, ...] = (),
                how: str | None = None) -> Transition:
    assert st.key is not None
    firing = st.firing
    ended = [t.alert for t in st.alerts.values() if t.alert.status != "firing"]
    lead = (firing or ended)[:1]
    reason = lead[0].line() if lead else "no alert firing"
    facts = Facts(
        agent=agent,
        group=group_name(st.receiver, st.group_key),
        service=None,
        why=why(firing),
        reason=reason,
        previous_reason="",
        first_failure_at=st.first_at,
        opened_at=st.opened_at,
        down_for=now - st.first_at,
        failed_checks=len(firing),
        unreachable=(),
        ticket=st.policy if kind == "open" else None,
        alerts=AlertGroup(st.receiver, st.group_key, dict(st.group_labels), st.external_url,
                          tuple(firing) + tuple(sorted(ended, key=lambda a: a.starts_at)),
                          tuple(changes)),
    )
    if kind == "resolve":
        facts = dataclasses.replace(facts, recovered=how, resolved_at=now,
                                    down_for_text=format_duration(round(now - st.first_at)))
    return Transition(kind, facts.group, st.key, now, facts)


def why(firing: list[Alert]) -> str:
    """An alert incident's account, as a check's is "3 consecutive failures"."""
    return f"Alertmanager: {len(firing)} alert{'s' * (len(firing) != 1)} firing"


def health(state: GroupState | None) -> GroupHealth:
    """For the watcher: is the group's incident going on?"""
    if state is not None and state.key is not None:
        return GroupHealth("open", state.key)
    return GroupHealth("healthy")

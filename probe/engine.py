"""The incident engine: results and the clock in, incident transitions out. No I/O, no sleeps.

Per check it keeps the streaks of failures and successes and the flapping history; per incident
group (a check's `service`, or the check alone) at most one open incident. It decides:

- **open** when a member has failed `failure_threshold` times in a row, or started flapping, and
  is neither in a maintenance window nor `unreachable` (a check it depends on is failing);
- **still-open** every `update_interval` while the incident lasts (for the ticket's status note);
- **resolve** when every member is healthy again: `success_threshold` successes in a row, not
  flapping. Maintenance and dependencies only ever block *opening*, never resolving.

"unknown" results (the check could not run) count neither way. The caller persists
`dirty_checks` / `dirty_groups` together with the transitions, in one transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import itertools
import zoneinfo
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from checks.base import State
from checks.values import format_duration
from probe.config import Check, Maintenance
from probe.facts import Facts, Member, SiteView

TransitionKind = Literal["open", "still-open", "resolve"]


@dataclass(frozen=True, slots=True)
class Transition:
    kind: TransitionKind
    group: str
    key: str  # the incident's stable key: what the helpdesk ticket carries
    at: float
    facts: Facts


@dataclass(slots=True)
class CheckState:
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive
    bad: bool = False  # crossed failure_threshold and not yet recovered
    flapping: bool = False
    history: list[bool] = field(default_factory=list)  # ok or not, oldest first (flapping)
    first_failure_at: float | None = None  # start of the current failure streak or outage
    failed_checks: int = 0  # failed results since first_failure_at
    last_state: State | None = None
    last_reason: str = ""
    last_result_at: float | None = None
    unreachable: bool = False
    in_maintenance: bool = False
    # When sites vote: each site's view (SiteView's fields) and why the verdict is what it is.
    sites: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = ""
    quorum: str = ""  # and the verdict's state: failing, healthy or undecided

    @property
    def healthy(self) -> bool:
        return not (self.bad or self.flapping or self.failures)


@dataclass(slots=True)
class Incident:
    key: str
    opened_at: float
    first_failure_at: float
    why: str
    members: list[str]  # checks that failed during the incident
    unreachable: list[str]  # checks that depend on a member and failed because of it
    failed_checks: int
    last_note_at: float
    last_note_reason: str
    reason: str  # the latest failure reason


@dataclass(slots=True)
class GroupState:
    seq: int = 0  # incidents opened so far: the key's last part
    incident: Incident | None = None


class Engine:
    def __init__(
        self,
        agent: str,
        checks: Sequence[Check],
        maintenance: Sequence[Maintenance] = (),
        *,
        check_states: dict[str, CheckState] | None = None,
        group_states: dict[str, GroupState] | None = None,
        scope: str | None = None,
    ) -> None:
        self.agent = agent  # who saw it, in the facts
        # The incident keys' prefix: the agent's name, or in a cluster its site's, so that a
        # group moving between agents keeps counting its incidents under one name.
        self.scope = scope or agent
        self.checks: dict[str, CheckState] = dict(check_states or {})
        self.groups: dict[str, GroupState] = dict(group_states or {})
        self.dirty_checks: set[str] = set()
        self.dirty_groups: set[str] = set()
        # Parents to check now: a child is about to open and a parent has not been checked
        # since the child began to fail (they may well have gone down together).
        self.wanted: set[str] = set()
        self._configure(checks, maintenance)

    # --- configuration ---------------------------------------------------------------------

    def _configure(self, checks: Sequence[Check], maintenance: Sequence[Maintenance]) -> None:
        self.config = {c.name: c for c in checks}
        self.maintenance = list(maintenance)
        self.members: dict[str, list[str]] = {}
        self.children: dict[str, list[str]] = {}
        for check in checks:
            self.members.setdefault(check.group, []).append(check.name)
            for parent in check.depends_on:
                self.children.setdefault(parent, []).append(check.name)
            if check.name not in self.checks:
                self.checks[check.name] = CheckState()
                self.dirty_checks.add(check.name)
            if check.group not in self.groups:
                self.groups[check.group] = GroupState()
                self.dirty_groups.add(check.group)

    def reconfigure(
        self, checks: Sequence[Check], maintenance: Sequence[Maintenance], now: float
    ) -> list[Transition]:
        """Apply a reloaded configuration. Streaks of checks that stay are kept (new thresholds
        apply from the next result); an incident whose checks were all removed resolves."""
        self._configure(checks, maintenance)
        for name in [n for n in self.checks if n not in self.config]:
            del self.checks[name]
            self.dirty_checks.add(name)
        out: list[Transition] = []
        for group in list(self.groups):
            if group in self.members:
                out += self._evaluate(group, now)
                continue
            incident = self.groups[group].incident
            if incident is not None:
                out.append(self._resolve(group, now, "removed from the configuration"))
            del self.groups[group]
            self.dirty_groups.add(group)
        return out

    def take(self, checks: Sequence[Check], check_states: Mapping[str, CheckState],
             group_states: Mapping[str, GroupState], now: float) -> list[Transition]:
        """A cluster's groups this agent now decides for, with their checks and the states the
        previous owner left (a check or group with none starts afresh): the streaks go on where
        they were. Then the groups are judged as they are now."""
        self.checks.update(check_states)
        self.groups.update(group_states)
        self._configure([*self.config.values(), *checks], self.maintenance)
        out: list[Transition] = []
        for group in sorted({c.group for c in checks}):
            out += self._evaluate(group, now)
        return out

    def give(self, groups: Collection[str]) -> None:
        """Groups another agent decides for now: forgotten, without a transition or a write
        (their state stays in the database as the last write left it)."""
        kept = [c for c in self.config.values() if c.group not in groups]
        for name in [n for n, c in self.config.items() if c.group in groups]:
            self.checks.pop(name, None)
            self.dirty_checks.discard(name)
            self.wanted.discard(name)
        for group in groups:
            self.groups.pop(group, None)
            self.dirty_groups.discard(group)
        self._configure(kept, self.maintenance)

    # --- inputs ----------------------------------------------------------------------------

    def observe(self, name: str, state: State, reason: str, now: float) -> list[Transition]:
        """One result of check `name`."""
        check, st = self.config.get(name), self.checks.get(name)
        if check is None or st is None:
            return []  # a result of a check removed by a reload while it ran
        moved = step(check, st, state, reason, now)
        incident = self.groups[check.group].incident
        if moved == "unknown":
            self.dirty_checks.add(name)
            return self._evaluate_children(name, now)
        if moved == "steady" and state == "up" and not incident:
            # The common case, a healthy check still healthy: nothing to decide, and nothing
            # worth a write (the streak of successes is kept in memory only).
            if any(not self.checks[c].healthy for c in self.children.get(name, ())):
                return self._evaluate_children(name, now)
            return []
        if moved == "steady" and state != "up" and incident:
            # The other common case, an outage going on as it was: counted, not written;
            # the next note or a restart takes the counts as they are then.
            return []
        self.dirty_checks.add(name)
        return self._evaluate(check.group, now) + self._evaluate_children(name, now)

    def judge(self, name: str, verdict: Literal["failing", "healthy", "undecided"], *,
              failing: Sequence[CheckState], views: Sequence[SiteView], why: str,
              now: float) -> list[Transition]:
        """The sites' verdict on check `name`, when sites vote (probe.cluster.quorum), in place
        of its results: `failing` are the streaks of the sites that see it failing, `views`
        what each site saw, `why` the rule's account. Undecided changes nothing the tickets
        follow: an incident open stays open, none opens. A change in which sites see it
        failing while its incident is open is a status note."""
        check, st = self.config.get(name), self.checks.get(name)
        if check is None or st is None:
            return []
        seen = [dataclasses.asdict(v) for v in views]
        was_failing = {v["site"] for v in st.sites if v["vote"] == "failing"}
        before = (st.bad, st.flapping, st.last_state, st.last_reason, st.sites, st.verdict,
                  st.quorum)
        st.last_result_at = now
        if verdict == "failing" and failing:
            st.bad = any(f.bad for f in failing)
            st.flapping = not st.bad  # failing only because every failing site sees it flap
            lead = min(failing, key=lambda f: f.first_failure_at or now)
            st.failures, st.successes = max(f.failures for f in failing), 0
            st.last_state, st.last_reason = "down", lead.last_reason
            st.first_failure_at = lead.first_failure_at or now
            st.failed_checks = max(f.failed_checks for f in failing)
            st.history = list(lead.history)
        elif verdict == "healthy":
            st.bad = st.flapping = False
            st.failures, st.successes = 0, check.success_threshold
            st.last_state, st.first_failure_at = "up", None
        elif failing:
            st.last_state = "down"  # for its dependants: maybe failing, so not to be ticketed
        st.sites, st.verdict, st.quorum = seen, why, verdict
        if (st.bad, st.flapping, st.last_state, st.last_reason, st.sites, st.verdict,
                st.quorum) == before:
            return []
        self.dirty_checks.add(name)
        out = self._evaluate(check.group, now) + self._evaluate_children(name, now)
        incident = self.groups[check.group].incident
        now_failing = {v["site"] for v in seen if v["vote"] == "failing"}
        if (incident is not None and name in incident.members and now_failing != was_failing
                and not any(t.group == check.group for t in out)):
            out.append(self._transition("still-open", check.group, now))
            incident.last_note_at, incident.last_note_reason = now, incident.reason
            self.dirty_groups.add(check.group)
        return out

    def _evaluate_children(self, name: str, now: float) -> list[Transition]:
        out = []
        for child in self.children.get(name, []):
            if child in self.config:
                out += self._evaluate(self.config[child].group, now)
        return out

    def tick(self, now: float) -> list[Transition]:
        """Time passing: maintenance windows end, dependencies clear, status notes fall due."""
        out: list[Transition] = []
        for group, gs in self.groups.items():
            if gs.incident is None:
                if any(self.checks[m].bad or self.checks[m].flapping for m in self.members[group]):
                    out += self._evaluate(group, now)
                continue
            incident = gs.incident
            every = min(self.config[m].ticket.update_interval for m in self.members[group])
            if now - incident.last_note_at >= every:
                # One note however long the pause was: never a burst of catch-up notes.
                out.append(self._transition("still-open", group, now))
                incident.last_note_at, incident.last_note_reason = now, incident.reason
                self.dirty_groups.add(group)
        return out

    # --- decisions -------------------------------------------------------------------------

    def _evaluate(self, group: str, now: float) -> list[Transition]:
        gs = self.groups[group]
        members = self.members[group]
        for name in members:
            st = self.checks[name]
            blocked_by = self._failing_parents(name)
            unreachable, in_window = bool(blocked_by), self.in_maintenance(name, now)
            if (st.unreachable, st.in_maintenance) != (unreachable, in_window):
                st.unreachable, st.in_maintenance = unreachable, in_window
                self.dirty_checks.add(name)
            if unreachable and not st.healthy:
                self._note_unreachable(name, blocked_by)
        troubled = [m for m in members if self.checks[m].bad or self.checks[m].flapping]
        if gs.incident is None:
            openers = [
                m for m in troubled
                if not self.checks[m].unreachable and not self.checks[m].in_maintenance
                and not self._parents_unchecked(m)
            ]
            return [self._open(group, openers, now)] if openers else []
        incident = gs.incident
        for name in members:
            st = self.checks[name]
            if not st.healthy and name not in incident.members:
                incident.members.append(name)
                self.dirty_groups.add(group)
            if st.failures and st.last_reason != incident.reason:
                incident.reason = st.last_reason
                self.dirty_groups.add(group)
        if all(self.checks[m].healthy for m in members):
            return [self._resolve(group, now, "recovered")]
        return []

    def _failing_parents(self, name: str) -> list[str]:
        parents = []
        for parent in self.config[name].depends_on:
            st, check = self.checks.get(parent), self.config.get(parent)
            if st is None or check is None:
                continue
            if st.last_state == "down" or st.bad or self.groups[check.group].incident:
                parents.append(parent)
        return parents

    def _parents_unchecked(self, name: str) -> list[str]:
        """Parents with no result since `name` began to fail: asked for, and waited for."""
        unchecked = parents_unchecked(self.config[name], self.checks)
        self.wanted.update(unchecked)
        return unchecked

    def _note_unreachable(self, child: str, parents: Iterable[str]) -> None:
        for parent in parents:
            group = self.config[parent].group
            incident = self.groups[group].incident
            if incident is not None and child not in incident.unreachable:
                incident.unreachable.append(child)
                self.dirty_groups.add(group)

    def _open(self, group: str, openers: list[str], now: float) -> Transition:
        gs = self.groups[group]
        gs.seq += 1
        first = [self.checks[m] for m in openers]
        flapping = [m for m in openers if self.checks[m].flapping and not self.checks[m].bad]
        lead = self.checks[openers[0]]
        if flapping and len(flapping) == len(openers):
            history = self.checks[flapping[0]].history
            why = f"flapping: {count_changes(history)} state changes in the last " \
                  f"{len(history)} checks"
        else:
            bad = self.checks[next(m for m in openers if self.checks[m].bad)]
            why = bad.verdict or f"{bad.failures} consecutive failures"
        first_failure = min(
            (s.first_failure_at for s in first if s.first_failure_at is not None), default=now
        )
        children = sorted({
            child
            for member in self.members[group]
            for child in descendants(member, self.children, self.config)
            if not self.checks[child].healthy
        })
        gs.incident = Incident(
            key=f"{self.scope}/{group}/{gs.seq}",
            opened_at=now,
            first_failure_at=first_failure,
            why=why,
            members=list(openers),
            unreachable=children,
            failed_checks=sum(s.failed_checks for s in first),
            last_note_at=now,
            last_note_reason=lead.last_reason,
            reason=lead.last_reason,
        )
        self.dirty_groups.add(group)
        return self._transition("open", group, now)

    def _resolve(self, group: str, now: float, how: str) -> Transition:
        transition = self._transition("resolve", group, now, how)
        self.groups[group].incident = None
        self.dirty_groups.add(group)
        return transition

    def _transition(
        self, kind: TransitionKind, group: str, now: float, recovered: str | None = None,
    ) -> Transition:
        incident = self.groups[group].incident
        assert incident is not None
        members = [m for m in self.members.get(group, []) if m in self.checks]
        incident.failed_checks = max(incident.failed_checks,
                                     sum(self.checks[m].failed_checks for m in members))
        facts = Facts(
            agent=self.agent,
            group=group,
            service=group if len(members) > 1 or self._is_service(group) else None,
            why=incident.why,
            reason=incident.reason,
            previous_reason=incident.last_note_reason,
            first_failure_at=incident.first_failure_at,
            opened_at=incident.opened_at,
            down_for=now - incident.first_failure_at,
            failed_checks=incident.failed_checks,
            unreachable=tuple(incident.unreachable),
            checks={m: _member(self.config.get(m), self.checks[m]) for m in members},
        )
        if kind == "resolve":
            facts = dataclasses.replace(
                facts, recovered=recovered, resolved_at=now,
                down_for_text=format_duration(round(now - incident.first_failure_at)))
        return Transition(kind, group, incident.key, now, facts)

    def _is_service(self, group: str) -> bool:
        return any(self.config[m].service == group for m in self.members.get(group, []))

    # --- maintenance ------------------------------------------------------------------------

    def in_maintenance(self, name: str, now: float) -> bool:
        check = self.config[name]
        return any(
            window_active(w, now) and window_matches(w, check) for w in self.maintenance
        )

    # --- persistence -------------------------------------------------------------------------

    def take_dirty(self) -> tuple[Changes, Changes]:
        """The states changed since the last call, as JSON-able dicts (None: deleted)."""
        checks = {n: None if (st := self.checks.get(n)) is None else dump_check(st)
                  for n in self.dirty_checks}
        groups = {g: None if g not in self.groups else asdict(self.groups[g])
                  for g in self.dirty_groups}
        self.dirty_checks, self.dirty_groups = set(), set()
        return checks, groups


Changes = dict[str, dict[str, Any] | None]
_CHECK_FIELDS = tuple(f.name for f in fields(CheckState))


def _member(check: Check | None, st: CheckState) -> Member:
    return Member(
        kind=check.kind if check else None,
        target=check.spec.target if check else None,
        state=st.last_state,
        consecutive_failures=st.failures,
        reason=st.last_reason if st.failures or st.bad else "",
        flapping=st.flapping,
        unreachable=st.unreachable,
        in_maintenance=st.in_maintenance,
        failing_since=st.first_failure_at,
        sites=tuple(SiteView(**v) for v in st.sites),
        verdict=st.verdict,
    )


def parents_unchecked(check: Check, states: Mapping[str, CheckState]) -> list[str]:
    """The parents of `check` with no result since it began to fail (`states`: the checks'
    streaks; a parent without one is not this caller's to wait for)."""
    since = states[check.name].first_failure_at
    unchecked = []
    for parent in check.depends_on:
        st = states.get(parent)
        if st is None or st.quorum:
            # A verdict of the sites stands until their votes change: nothing to wait for
            # (each site's agent waited for the parents it runs before it voted).
            continue
        if st.last_result_at is None or since is None or st.last_result_at < since:
            unchecked.append(parent)
    return unchecked


def dump_check(state: CheckState) -> dict[str, Any]:
    """A check's streaks as JSON-able data, as the state database keeps them."""
    # dataclasses.asdict deep-copies through reflection: too slow for every result.
    data = {name: getattr(state, name) for name in _CHECK_FIELDS}
    data["history"] = list(state.history)
    data["sites"] = list(state.sites)
    return data


def restore_check(data: dict[str, Any]) -> CheckState:
    return CheckState(**data)


def restore_group(data: dict[str, Any]) -> GroupState:
    incident = data.get("incident")
    return GroupState(seq=data["seq"], incident=Incident(**incident) if incident else None)


Step = Literal["unknown", "steady", "moved"]


def step(check: Check, st: CheckState, state: State, reason: str, now: float) -> Step:
    """One result into a check's streaks and flapping history: `unknown` counts neither way;
    `steady` is a healthy check still healthy, or a failing one failing as it was (only its
    counts moved: nothing to decide, nothing worth a write); anything else `moved`."""
    quiet = st.last_state == "up" and st.healthy
    still_down = st.last_state == "down" and st.bad and not st.flapping
    st.last_state, st.last_result_at = state, now
    if state == "unknown":
        return "unknown"
    ok = state == "up"
    history = st.history
    history.append(ok)
    dropped = history.pop(0) if len(history) > check.flapping.window else None
    # A success in, and a success out (or nothing, while the window is still filling),
    # cannot make a steady check flap. The result that fills the window is the first
    # whose flapping is judged: it takes the full path (D U U, window 3, was missed).
    if quiet and ok and (dropped is True or len(history) < check.flapping.window):
        st.successes += 1
        return "steady"
    # A failure in and a failure out cannot make a failing check flap either.
    if still_down and not ok and dropped is False and reason == st.last_reason:
        st.failures += 1
        st.failed_checks += 1
        return "steady"
    if ok:
        st.successes, st.failures = st.successes + 1, 0
        if st.bad and st.successes >= check.success_threshold:
            st.bad = False
    else:
        st.failures, st.successes = st.failures + 1, 0
        st.last_reason = reason
        if st.first_failure_at is None:
            st.first_failure_at, st.failed_checks = now, 0
        st.failed_checks += 1
        if st.failures >= check.failure_threshold:
            st.bad = True
    update_flapping(check, st)
    if st.healthy:
        st.first_failure_at = None
    return "moved"


def update_flapping(check: Check, st: CheckState) -> None:
    """Icinga's hysteresis: flapping above `high`, steady again below `low`."""
    if not check.flapping.enabled:
        st.flapping = False
        return
    if len(st.history) < check.flapping.window:
        return
    change = flap_ratio(st.history)
    if not st.flapping and change > check.flapping.high:
        st.flapping = True
    elif st.flapping and change < check.flapping.low:
        st.flapping = False


def descendants(name: str, children: Mapping[str, list[str]],
                configured: Container[str]) -> list[str]:
    """The checks that depend on `name`, directly or not."""
    seen: list[str] = []
    todo = list(children.get(name, []))
    while todo:
        child = todo.pop()
        if child not in seen and child in configured:
            seen.append(child)
            todo += children.get(child, [])
    return seen


def count_changes(history: Sequence[bool]) -> int:
    return sum(1 for a, b in itertools.pairwise(history) if a != b)


def flap_ratio(history: Sequence[bool]) -> float:
    """Icinga's weighted state change: each change between consecutive results counts with a
    weight from 0.8 (oldest) to 1.2 (newest), over the number of possible changes."""
    n = len(history) - 1
    if n < 1:
        return 0.0
    total = 0.0
    for i in range(n):
        if history[i] != history[i + 1]:
            total += 0.8 + 0.4 * (i / (n - 1) if n > 1 else 1.0)
    return total / n


def window_matches(window: Maintenance, check: Check) -> bool:
    if check.service is not None and check.service in window.services:
        return True
    return any(fnmatch.fnmatchcase(check.name, pattern) for pattern in window.checks)


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def window_active(window: Maintenance, now: float) -> bool:
    if window.start is not None and window.end is not None:
        return window.start.timestamp() <= now < window.end.timestamp()
    if window.at is None or window.duration is None:
        return False
    zone = zoneinfo.ZoneInfo(window.timezone)
    local = dt.datetime.fromtimestamp(now, zone)
    days_back = int(window.duration // 86400) + 1
    for back in range(days_back + 1):
        day = (local - dt.timedelta(days=back)).date()
        if _WEEKDAYS[day.weekday()] not in window.weekdays:
            continue
        start = dt.datetime.combine(day, window.at, zone).timestamp()
        if start <= now < start + window.duration:
            return True
    return False

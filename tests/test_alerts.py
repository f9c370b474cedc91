"""probe.alerts: Alertmanager's notifications in, incidents out, as tables of notifications and
what a helpdesk would get from them; and the payloads probe refuses, with the words it says."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

import pytest

from probe import alerts
from probe.config import AlertReceiver
from probe.facts import Facts
from probe.tickets import render

T0 = 1_800_000_000.0
RECEIVER = AlertReceiver(route="desk")


def alert(name: str, status: str = "firing", *, starts: str = "2027-01-15T08:00:00.123456789Z",
          severity: str = "warning", **annotations: str) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": name, "severity": severity,
                                         "instance": "db1:9100"},
            "annotations": annotations, "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2027-01-15T09:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
            "fingerprint": f"fp-{name}"}


def payload(*items: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    firing = any(a["status"] == "firing" for a in items)
    return {"version": "4", "receiver": "ops", "status": status or
            ("firing" if firing else "resolved"),
            "groupKey": '{}:{alertname="DiskFull"}', "groupLabels": {"alertname": "DiskFull"},
            "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager.example:9093", "truncatedAlerts": 0,
            "alerts": list(items)}


def run(*notes: dict[str, Any] | float) -> tuple[alerts.GroupState | None, list[str]]:
    """Feed notifications (dicts) and ticks (seconds after T0, floats) in order: the state
    left, and each transition as "kind key: what changed"."""
    state: alerts.GroupState | None = None
    seen: list[str] = []
    now = T0
    for step in notes:
        if isinstance(step, float):
            now = T0 + step
            assert state is not None
            state, transitions = alerts.tick(state, RECEIVER, scope="a", agent="a", now=now)
        else:
            now += 1
            state, transitions = alerts.notify(state, alerts.parse(step), RECEIVER, scope="a",
                                               agent="a", now=now)
        for t in transitions:
            assert t.facts.alerts is not None
            seen.append(f"{t.kind} {t.key.rsplit('/', 1)[1]}: "
                        + "; ".join(t.facts.alerts.changes))
    return state, seen


def test_the_first_firing_opens_and_repeats_change_nothing() -> None:
    a = alert("DiskFull")
    state, seen = run(payload(a), payload(a), payload(a))
    assert seen == ["open 1: "]
    assert state is not None and state.key == f"a/{alerts.group_name('ops', state.group_key)}/1"


def test_an_alert_joining_is_a_note_and_its_end_another() -> None:
    a, b = alert("DiskFull"), alert("DiskSlow")
    _, seen = run(payload(a), payload(a, b), payload(a, b),
                  payload(a, alert("DiskSlow", "resolved")))
    assert seen == ["open 1: ", "still-open 1: firing: DiskSlow {instance=db1:9100, "
                    "severity=warning}",
                    "still-open 1: resolved: DiskSlow {instance=db1:9100, severity=warning}"]


def test_every_alert_resolved_resolves_and_a_late_firing_reopens_nothing() -> None:
    a = alert("DiskFull")
    state, seen = run(payload(a), payload(alert("DiskFull", "resolved")), payload(a),
                      payload(a))
    assert seen == ["open 1: ", "resolve 1: resolved: DiskFull {instance=db1:9100, "
                    "severity=warning}"]
    assert state is not None and state.key is None


def test_a_resolve_overtaking_its_firing_opens_nothing() -> None:
    # Two clustered Alertmanagers: the replica that saw the firing late sends it after the
    # other one's resolve.
    _, seen = run(payload(alert("DiskFull", "resolved")), payload(alert("DiskFull")))
    assert seen == []


def test_a_new_startsat_is_a_new_firing_and_a_new_incident() -> None:
    first, again = alert("DiskFull"), alert("DiskFull", starts="2027-01-15T10:00:00Z")
    _, seen = run(payload(first), payload(alert("DiskFull", "resolved")), payload(again),
                  payload(first))
    assert [s.split(":")[0] for s in seen] == ["open 1", "resolve 1", "open 2"]


def test_a_stale_resolve_of_an_older_firing_leaves_the_new_one_open() -> None:
    old_resolved = alert("DiskFull", "resolved")
    again = alert("DiskFull", starts="2027-01-15T10:00:00Z")
    state, seen = run(payload(alert("DiskFull")), payload(old_resolved), payload(again),
                      payload(old_resolved))
    assert [s.split(":")[0] for s in seen] == ["open 1", "resolve 1", "open 2"]
    assert state is not None and state.key is not None


def test_status_notes_every_update_interval_and_silence_resolves() -> None:
    a = alert("DiskFull")
    _, seen = run(payload(a), 1800.0, 3601.0, 3700.0, 7300.0, 86_000.0, 86_402.0)
    assert [s.split(":")[0] for s in seen] == [
        "open 1", "still-open 1", "still-open 1", "still-open 1", "resolve 1"]
    assert seen[-1] == ("resolve 1: not notified for 1d, taken as ended: DiskFull "
                        "{instance=db1:9100, severity=warning}")


def test_an_alert_heard_again_after_its_silence_fires_again() -> None:
    a = alert("DiskFull")
    _, seen = run(payload(a), 86_402.0, payload(a))
    assert [s.split(":")[0] for s in seen] == ["open 1", "resolve 1", "open 2"]


def test_a_repeat_keeps_a_group_from_being_taken_as_silent() -> None:
    a = alert("DiskFull")
    state, _ = run(payload(a), 80_000.0)
    assert state is not None
    state, _ = alerts.notify(state, alerts.parse(payload(a)), RECEIVER, scope="a", agent="a",
                             now=T0 + 80_000)
    _, transitions = alerts.tick(state, RECEIVER, scope="a", agent="a", now=T0 + 90_000)
    assert [t.kind for t in transitions] == ["still-open"]  # its hourly note, not a resolve


@pytest.mark.parametrize(("severities", "priority"), [
    (["warning"], "high"), (["warning", "critical"], "urgent"), (["info"], "normal"),
    (["nonsense"], "high"),
])
def test_the_priority_is_the_highest_the_label_gives(severities: list[str],
                                                     priority: str) -> None:
    items = [alert(f"A{i}", severity=s) for i, s in enumerate(severities)]
    _, transitions = alerts.notify(None, alerts.parse(payload(*items)), RECEIVER, scope="a",
                                   agent="a", now=T0)
    assert transitions[0].facts.ticket is not None
    assert transitions[0].facts.ticket.priority == priority


def test_the_state_survives_its_json() -> None:
    a, b = alert("DiskFull"), alert("DiskSlow", "resolved")
    state, _ = run(payload(a), payload(a, b))
    assert state is not None
    back = alerts.GroupState.restore(json.loads(json.dumps(state.dump())))
    assert back == state


def test_the_ticket_shows_labels_annotations_and_links() -> None:
    a = alert("DiskFull", summary="disk /var is 97% full", description="db1 stops writing soon",
              runbook_url="https://wiki.example/disk", dashboard="https://grafana.example/d/1")
    _, transitions = alerts.notify(None, alerts.parse(payload(a)), RECEIVER, scope="a",
                                   agent="a", now=T0)
    facts = Facts.from_json(json.loads(json.dumps(transitions[0].facts.to_json())))
    ticket = render.ticket(facts, "a/key/1", "high")
    assert ticket.title == ("[probe] DiskFull FIRING — DiskFull {instance=db1:9100, "
                            "severity=warning} — disk /var is 97% full")
    for text in ("summary: disk /var is 97% full", "description: db1 stops writing soon",
                 "runbook: https://wiki.example/disk", "dashboard: https://grafana.example/d/1",
                 "source: http://prometheus.example:9090/graph?g0.expr=up",
                 "labels: instance=db1:9100, severity=warning", "Receiver:     ops",
                 "since 2027-01-15 08:00:00 UTC", "probe key: a/key/1"):
        assert text in ticket.body
    silence = next(line for line in ticket.body.splitlines() if line.startswith("Silence:"))
    assert unquote(silence.split()[-1]) == (
        'http://alertmanager.example:9093/#/silences/new?filter={alertname="DiskFull"}')


def test_a_link_that_is_not_http_is_not_shown() -> None:
    a = alert("X", runbook_url="javascript:alert(1)")
    a["generatorURL"] = "file:///etc/passwd"
    _, transitions = alerts.notify(None, alerts.parse(payload(a)), RECEIVER, scope="a",
                                   agent="a", now=T0)
    body = render.ticket(transitions[0].facts, "k", "high").body
    assert "javascript:" not in body and "file:" not in body


@pytest.mark.parametrize(("change", "message"), [
    ({"version": "3"}, "version: expected \"4\""),
    ({"version": 4}, "version: expected \"4\""),
    ({"receiver": ""}, "receiver: expected a non-empty string"),
    ({"status": "pending"}, "status: expected \"firing\" or \"resolved\""),
    ({"groupKey": None}, "groupKey: expected a non-empty string"),
    ({"alerts": []}, "alerts: expected a non-empty list"),
    ({"alerts": "x"}, "alerts: expected a non-empty list"),
    ({"alerts": [1]}, "alerts[0]: expected an object"),
    ({"groupLabels": {"a": 1}}, "groupLabels: expected an object of strings"),
    ({"truncatedAlerts": -1}, "truncatedAlerts: expected a count"),
    ({"alerts": [{**alert("A"), "startsAt": "yesterday"}]},
     "alerts[0].startsAt: expected an RFC 3339 time, got 'yesterday'"),
    ({"alerts": [{**alert("A"), "startsAt": "2027-01-15T08:00:00"}]}, "has no time zone"),
    ({"alerts": [{**alert("A"), "fingerprint": ""}]}, "alerts[0].fingerprint: expected"),
    ({"alerts": [{**alert("A"), "labels": ["a"]}]}, "alerts[0].labels: expected an object"),
    ({"alerts": [{**alert("A"), "status": None}]}, "alerts[0].status: expected"),
    ({"alerts": [alert("A")] * 1001}, "1001 in one notification, at most 1000"),
])
def test_a_payload_probe_cannot_take_is_refused_in_words(change: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(alerts.Invalid) as refused:
        alerts.parse({**payload(alert("A")), **change})
    assert message in str(refused.value)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(alerts.Invalid, match="expected a JSON object"):
        alerts.parse([payload(alert("A"))])


def test_a_receiver_removed_resolves_its_groups_saying_why() -> None:
    state, _ = run(payload(alert("DiskFull")))
    assert state is not None
    state, transitions = alerts.end(state, "its receiver was removed from the configuration",
                                    scope="a", agent="a", now=T0 + 10)
    (resolve,) = transitions
    assert (resolve.kind, resolve.facts.recovered, state.key) == (
        "resolve", "its receiver was removed from the configuration", None)
    assert render.resolved(resolve.facts).startswith(
        "Closed by probe: its receiver was removed from the configuration.")


def test_a_receivers_name_in_a_key_is_what_every_helpdesk_takes() -> None:
    name = alerts.group_name("ops team/\u00e9 [eu]", '{}:{alertname="X"}')
    assert re.fullmatch(r"alertmanager/ops-team-eu-/[0-9a-f]{12}", name), name
    assert name != alerts.group_name("ops-team-eu-", '{}:{alertname="X"}')

"""The incident engine, by tables: a sequence of results and times in, the transitions out.

A script is a list of steps `(time, check, result)` where result is "D" (down), "U" (up),
"?" (the check could not run) or "tick" (only time passes); the expected outcome lists
`(time, transition, group)`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import pytest
import yaml

from checks.base import State
from probe.config import Config
from probe.engine import (
    CheckState,
    Engine,
    Transition,
    flap_ratio,
    restore_check,
    restore_group,
    window_active,
)
from probe.facts import SiteView
from tests.harness.configs import merged

STATES: dict[str, State] = {"D": "down", "U": "up", "?": "unknown"}
Step = tuple[float, str, str]


def make(config_yaml: str | dict[str, Any], agent: str = "probe-test") -> Engine:
    """An engine on a configuration given as YAML text, or as the data it loads to."""
    data = yaml.safe_load(config_yaml) if isinstance(config_yaml, str) else config_yaml
    config = Config.model_validate(data)
    return Engine(agent, config.effective_checks(), config.maintenance)


def play(engine: Engine, steps: Sequence[Step]) -> list[tuple[float, str, str]]:
    return [(t.at, t.kind, t.group) for t in play_full(engine, steps)]


def play_full(engine: Engine, steps: Sequence[Step]) -> list[Transition]:
    out: list[Transition] = []
    for at, name, result in steps:
        if result == "tick":
            out += engine.tick(at)
        else:
            out += engine.observe(name, STATES[result], f"reason {result} at {at:g}", at)
            out += engine.tick(at)
    return out


def series(name: str, results: str, start: float = 0, every: float = 10) -> list[Step]:
    """`series("web", "DDDUU")`: one result every 10 s from t=0."""
    return [(start + i * every, name, r) for i, r in enumerate(results.replace(" ", ""))]


ONE = """
checks:
  - name: web
    failure_threshold: 3
    success_threshold: 2
    tcp: {host: 127.0.0.1, port: 1}
"""


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ("DD", []),
        ("DDD", [(20, "open", "web")]),
        ("DDDU", [(20, "open", "web")]),
        ("DDDUU", [(20, "open", "web"), (40, "resolve", "web")]),
        ("DDDUDUU", [(20, "open", "web"), (60, "resolve", "web")]),
        ("DDUDDUDD", []),  # never three in a row: no incident
        ("D?D?D", [(40, "open", "web")]),  # could-not-run counts neither way
        ("DDDU?U", [(20, "open", "web"), (50, "resolve", "web")]),
        ("DDDDDDUUDDDUU", [(20, "open", "web"), (70, "resolve", "web"),
                           (100, "open", "web"), (120, "resolve", "web")]),
    ],
)
def test_thresholds(results: str, expected: list[tuple[float, str, str]]) -> None:
    assert play(make(ONE), series("web", results)) == expected


def test_threshold_one_opens_and_resolves_on_a_single_result() -> None:
    engine = make("""
checks:
  - {name: web, failure_threshold: 1, success_threshold: 1, tcp: {host: h, port: 1}}
""")
    out = play_full(engine, series("web", "DUD"))
    assert [(t.at, t.kind) for t in out] == [(0, "open"), (10, "resolve"), (20, "open")]
    assert [t.key for t in out] == ["probe-test/web/1", "probe-test/web/1", "probe-test/web/2"]


def test_open_carries_the_facts_a_ticket_needs() -> None:
    (opened,) = play_full(make(ONE), series("web", "UDDD", start=1000))
    assert opened.facts.why == "3 consecutive failures"
    assert opened.facts.reason == "reason D at 1030"
    assert opened.facts.first_failure_at == 1010
    assert opened.facts.failed_checks == 3
    assert opened.facts.checks["web"].consecutive_failures == 3
    assert opened.facts.checks["web"].target == "127.0.0.1:1"
    json.dumps(opened.facts.to_json())  # the outbox stores it as JSON


def test_resolve_says_how_long_it_was_down() -> None:
    out = play_full(make(ONE), series("web", "DDDDUU", start=0, every=60))
    resolved = out[-1]
    assert resolved.kind == "resolve"
    assert resolved.facts.down_for == 300
    assert resolved.facts.down_for_text == "5m"
    assert resolved.facts.failed_checks == 4
    assert resolved.facts.recovered == "recovered"


def test_a_result_after_a_long_pause_continues_the_streak() -> None:
    steps = [(0, "web", "D"), (10, "web", "D"), (86_400, "web", "D")]
    (opened,) = play_full(make(ONE), steps)
    assert (opened.at, opened.facts.first_failure_at) == (86_400, 0)


SERVICE = """
checks:
  - {name: web, service: shop, tcp: {host: h, port: 80}}
  - {name: db, service: shop, tcp: {host: h, port: 5432}}
  - {name: other, tcp: {host: h, port: 22}}
"""


def test_a_service_has_one_incident_for_all_its_checks() -> None:
    steps = [
        *series("web", "DDD", start=0),        # opens shop at 20
        *series("db", "DDD", start=25),        # same incident: nothing new
        *series("web", "UU", start=60),        # web healthy, db still failing: stays open
        *series("db", "UU", start=85),         # all healthy: resolves at 95
    ]
    out = play_full(make(SERVICE), sorted(steps))
    assert [(t.at, t.kind, t.group) for t in out] == [(20, "open", "shop"), (95, "resolve", "shop")]
    assert out[0].facts.service == "shop"
    assert out[-1].facts.checks["db"].state == "up"


def test_a_check_outside_the_service_has_its_own_incident() -> None:
    steps = sorted([*series("web", "DDD"), *series("other", "DDD", start=5)])
    assert play(make(SERVICE), steps) == [(20, "open", "shop"), (25, "open", "other")]


FLAPPY = """
defaults: {flapping: {high: 30%, low: 25%, window: 21}}
checks:
  - {name: web, failure_threshold: 3, success_threshold: 2, tcp: {host: h, port: 1}}
"""


def test_a_flapping_check_opens_one_incident_and_keeps_it_until_it_settles() -> None:
    engine = make(FLAPPY)
    steps = series("web", "U" * 21 + "DU" * 30 + "U" * 40)
    out = play_full(engine, steps)
    assert [t.kind for t in out] == ["open", "resolve"]
    opened, resolved = out
    assert opened.facts.why.startswith("flapping: ")
    assert opened.facts.why.endswith("state changes in the last 21 checks")
    # not resolved while flapping: the results were mostly up long before it resolved
    assert resolved.at > opened.at + 21 * 10


def test_flapping_is_reported_in_words_with_its_count() -> None:
    engine = make(FLAPPY)
    out = play_full(engine, series("web", "U" * 12 + "DUDUDUDUD"))
    (opened,) = out
    assert opened.facts.why == "flapping: 9 state changes in the last 21 checks"


@pytest.mark.parametrize(
    ("history", "ratio"),
    [("U" * 21, 0.0), ("UD" * 10 + "U", 1.0), ("U" * 20 + "D", 0.06), ("D" + "U" * 20, 0.04)],
)
def test_flap_ratio_weighs_recent_changes_more(history: str, ratio: float) -> None:
    assert flap_ratio([c == "U" for c in history]) == pytest.approx(ratio)


def test_flapping_can_be_disabled() -> None:
    engine = make(merged(yaml.safe_load(FLAPPY), {"defaults": {"flapping": {"enabled": False}}}))
    assert play(engine, series("web", "U" * 21 + "DU" * 30)) == []


DEPS = """
checks:
  - {name: gateway, failure_threshold: 3, success_threshold: 2, icmp: {host: 10.0.0.1}}
  - name: backend
    depends_on: [gateway]
    failure_threshold: 1
    success_threshold: 1
    tcp: {host: 10.0.0.2, port: 5432}
"""


def test_a_child_of_a_failing_parent_is_unreachable_and_opens_nothing() -> None:
    engine = make(DEPS)
    steps = [
        (0, "gateway", "D"), (1, "backend", "D"),      # parent failing, below its threshold
        (10, "gateway", "D"), (11, "backend", "D"),
        (20, "gateway", "D"),                          # parent opens, listing the child
        (21, "backend", "D"),
    ]
    out = play_full(engine, steps)
    assert [(t.at, t.kind, t.group) for t in out] == [(20, "open", "gateway")]
    assert out[0].facts.unreachable == ("backend",)
    assert engine.checks["backend"].unreachable


def test_a_child_still_failing_when_the_parent_recovers_opens_its_own_incident_at_once() -> None:
    steps = [
        *series("gateway", "DDD"), *series("backend", "DDD", start=1),
        *series("gateway", "UU", start=30), (41, "backend", "D"),
    ]
    out = play(make(DEPS), sorted(steps))
    assert out == [(20, "open", "gateway"), (40, "resolve", "gateway"), (40, "open", "backend")]


def test_dependencies_never_block_resolving() -> None:
    steps = [
        (0, "backend", "D"), (1, "gateway", "U"),         # opens once the parent is seen up
        *series("gateway", "DDD", start=5),               # parent opens too
        (30, "backend", "U"),                             # child recovers while parent is down
    ]
    out = play(make(DEPS), sorted(steps))
    assert out == [(1, "open", "backend"), (25, "open", "gateway"), (30, "resolve", "backend")]


def test_a_child_waits_for_its_parent_s_next_result_before_opening() -> None:
    """They went down together, and the child's threshold came first: the parent is asked
    for at once, and its failure makes the child unreachable instead of opening."""
    engine = make(DEPS)
    play(engine, [(0, "gateway", "U")])
    assert play(engine, [(5, "backend", "D")]) == []
    assert engine.wanted == {"gateway"}
    assert play(engine, [(6, "gateway", "D")]) == []
    assert engine.checks["backend"].unreachable


MAINT = """
checks:
  - {name: web, service: shop, tcp: {host: h, port: 80}}
maintenance:
  - services: [shop]
    start: "1970-01-01T00:01:40Z"   # t=100
    end: "1970-01-01T00:03:20Z"     # t=200
"""


def test_no_incident_opens_in_a_maintenance_window_and_it_opens_when_it_ends() -> None:
    engine = make(MAINT)
    steps = [*series("web", "DDDDDDDD", start=110), (199, "web", "tick"), (200, "web", "tick")]
    out = play(engine, sorted(steps))
    assert out == [(200, "open", "shop")]


def test_a_target_that_recovers_inside_the_window_opens_nothing() -> None:
    steps = [*series("web", "DDDDUU", start=110), (250, "web", "tick")]
    assert play(make(MAINT), sorted(steps)) == []


def test_an_incident_open_before_the_window_stays_open_and_resolves_normally() -> None:
    steps = [*series("web", "DDD", start=70), *series("web", "DDUU", start=110)]
    assert play(make(MAINT), sorted(steps)) == [(90, "open", "shop"), (140, "resolve", "shop")]


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("when", "active"),
    [
        ("2026-11-29T02:59:00+01:00", False),  # Sunday, just before
        ("2026-11-29T03:00:00+01:00", True),
        ("2026-11-29T03:29:59+01:00", True),
        ("2026-11-29T03:30:00+01:00", False),
        ("2026-11-28T03:10:00+01:00", False),  # Saturday
        ("2026-11-29T02:10:00+00:00", True),   # the same instant written in UTC
        ("2026-07-05T03:10:00+02:00", True),   # summer time: still 03:10 in Berlin
    ],
)
def test_recurring_windows_follow_their_time_zone(when: str, active: bool) -> None:
    config = Config.model_validate(yaml.safe_load("""
checks: [{name: web, service: shop, tcp: {host: h, port: 80}}]
maintenance:
  - {services: [shop], weekdays: [sun], at: "03:00", duration: 30m, timezone: Europe/Berlin}
"""))
    assert window_active(config.maintenance[0], _ts(when)) is active


def test_a_recurring_window_may_cross_midnight() -> None:
    config = Config.model_validate(yaml.safe_load("""
checks: [{name: web, tcp: {host: h, port: 80}}]
maintenance: [{checks: [web], weekdays: [sat], at: "23:00", duration: 2h}]
"""))
    assert window_active(config.maintenance[0], _ts("2026-11-29T00:30:00+00:00"))  # Sunday


NOTES = """
defaults: {ticket: {update_interval: 1h}}
checks:
  - {name: web, failure_threshold: 1, tcp: {host: h, port: 80}}
"""


def test_a_status_note_falls_due_every_update_interval() -> None:
    engine = make(NOTES)
    steps = [(0, "web", "D"), (3599, "web", "tick"), (3600, "web", "tick"), (3700, "web", "D"),
             (7199, "web", "tick"), (7200, "web", "tick")]
    out = play(engine, steps)
    assert out == [(0, "open", "web"), (3600, "still-open", "web"), (7200, "still-open", "web")]


def test_a_long_pause_gives_one_note_not_a_burst() -> None:
    steps = [(0, "web", "D"), (5 * 3600, "web", "tick"), (5 * 3600 + 1, "web", "tick")]
    out = play(make(NOTES), steps)
    assert out == [(0, "open", "web"), (18000, "still-open", "web")]


def test_a_note_says_whether_the_reason_changed() -> None:
    engine = make(NOTES)
    engine.observe("web", "down", "connection refused", 0)
    engine.observe("web", "down", "HTTP 503 (expected 2xx)", 1800)
    (note,) = engine.tick(3600)
    assert (note.facts.reason, note.facts.previous_reason) == (
        "HTTP 503 (expected 2xx)", "connection refused",
    )
    engine.observe("web", "down", "HTTP 503 (expected 2xx)", 5000)
    (note,) = engine.tick(7200)
    assert note.facts.reason == note.facts.previous_reason


def test_a_reload_that_changes_thresholds_applies_from_the_next_result() -> None:
    engine = make(ONE)
    assert play(engine, series("web", "DDD")) == [(20, "open", "web")]
    data = yaml.safe_load(ONE)
    data["checks"][0]["success_threshold"] = 4
    stricter = Config.model_validate(data)
    assert engine.reconfigure(stricter.effective_checks(), [], 25) == []
    assert play(engine, series("web", "UUUU", start=30)) == [(60, "resolve", "web")]


def test_a_reload_that_removes_a_check_with_an_open_incident_resolves_it() -> None:
    engine = make(SERVICE)
    play(engine, series("other", "DDD"))
    remaining = Config.model_validate(yaml.safe_load(SERVICE)).effective_checks()[:2]
    (resolved,) = engine.reconfigure(remaining, [], 100)
    assert (resolved.kind, resolved.group, resolved.facts.recovered) == (
        "resolve", "other", "removed from the configuration",
    )
    assert "other" not in engine.checks
    assert engine.observe("other", "down", "late result", 101) == []


def test_a_reload_that_removes_the_failing_member_resolves_the_service() -> None:
    engine = make(SERVICE)
    play(engine, series("web", "DDD"))
    web_gone = [c for c in Config.model_validate(yaml.safe_load(SERVICE)).effective_checks()
                if c.name != "web"]
    (resolved,) = engine.reconfigure(web_gone, [], 100)
    assert (resolved.kind, resolved.group) == ("resolve", "shop")


def test_state_survives_a_restart_without_reopening() -> None:
    engine = make(ONE)
    play(engine, series("web", "DD"))
    checks, groups = engine.take_dirty()
    revived = Engine(
        "probe-test",
        list(engine.config.values()),
        check_states={n: restore_check(json.loads(json.dumps(s))) for n, s in checks.items() if s},
        group_states={g: restore_group(json.loads(json.dumps(s))) for g, s in groups.items() if s},
    )
    assert play(revived, [(20, "web", "D")]) == [(20, "open", "web")]
    checks, groups = revived.take_dirty()
    again = Engine(
        "probe-test",
        list(revived.config.values()),
        check_states={n: restore_check(s) for n, s in _all(revived.checks).items()},
        group_states={g: restore_group(s) for g, s in _all(revived.groups).items()},
    )
    assert play(again, series("web", "DDUU", start=30)) == [(60, "resolve", "web")]


def _all(states: dict[str, Any]) -> dict[str, Any]:
    return {k: asdict(v) for k, v in states.items()}


# --- verdicts of the sites that vote (Engine.judge) --------------------------------------------

DEPENDENT = """
checks:
  - name: gateway
    tcp: {host: 127.0.0.1, port: 1}
  - name: shop
    depends_on: [gateway]
    http: {url: "http://127.0.0.1:1/"}
"""


def failing_site(reason: str, since: float) -> CheckState:
    return CheckState(failures=3, bad=True, first_failure_at=since, failed_checks=3,
                      last_state="down", last_reason=reason, last_result_at=since + 2)


def test_a_verdict_opens_with_the_sites_why_and_views_and_resolves_on_a_healthy_one() -> None:
    engine = make(DEPENDENT)
    views = (SiteView("eu", "failing", "HTTP 503", 100.0), SiteView("us", "healthy"))
    assert engine.judge("gateway", "healthy", failing=[], views=views, why="", now=50.0) == []
    opened = engine.judge("gateway", "failing", failing=[failing_site("HTTP 503", 100.0)],
                          views=views, why="1 of 2 sites see it failing (eu), quorum 1",
                          now=103.0)
    assert [(t.kind, t.group) for t in opened] == [("open", "gateway")]
    assert opened[0].facts.why == "1 of 2 sites see it failing (eu), quorum 1"
    assert opened[0].facts.checks["gateway"].sites == views
    assert engine.judge("gateway", "undecided", failing=[], views=views, why="?",
                        now=110.0) == []  # undecided: the incident stays open
    closed = engine.judge("gateway", "healthy", failing=[], views=(), why="", now=120.0)
    assert [t.kind for t in closed] == ["resolve"]


def test_a_child_of_a_parent_the_sites_judged_healthy_long_ago_opens_without_waiting() -> None:
    """Its parent's verdict stands until its votes change: nothing to wait for."""
    engine = make(DEPENDENT)
    engine.judge("gateway", "healthy", failing=[], views=(), why="", now=10.0)
    opened = engine.judge("shop", "failing", failing=[failing_site("HTTP 503", 500.0)],
                          views=(), why="2 of 3 sites see it failing", now=503.0)
    assert [(t.kind, t.group) for t in opened] == [("open", "shop")]
    assert engine.wanted == set()

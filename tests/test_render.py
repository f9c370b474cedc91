"""What a ticket says, from an incident's facts: title, body, notes, closing note, templates."""

from __future__ import annotations

from typing import Any

from probe.facts import Facts
from probe.tickets import render

STORED: dict[str, Any] = {  # as the ledger keeps them
    "agent": "probe-eu-1",
    "group": "shop",
    "service": "shop",
    "why": "3 consecutive failures",
    "reason": "HTTP 503 (expected 2xx)",
    "previous_reason": "connection refused",
    "first_failure_at": 1795392000.0,  # 2026-11-23 00:00:00 UTC
    "opened_at": 1795392020.0,
    "down_for": 3720.0,
    "failed_checks": 7,
    "unreachable": ["shop-backend"],
    "checks": {
        "shop-https": {"kind": "http", "target": "https://shop.example.com/health",
                       "state": "down", "consecutive_failures": 3,
                       "reason": "HTTP 503 (expected 2xx)"},
        "shop-443": {"kind": "tcp", "target": "shop.example.com:443", "state": "up",
                     "consecutive_failures": 0, "reason": ""},
    },
}
FACTS = Facts.from_json(STORED)


def test_the_title_names_the_service_the_reason_and_the_target() -> None:
    assert render.title(FACTS, "k") == (
        "[probe] shop DOWN — HTTP 503 (expected 2xx) from https://shop.example.com/health"
    )


def test_a_flapping_incident_says_so_in_the_title() -> None:
    facts = Facts.from_json({**STORED, "why": "flapping: 9 state changes in the last 21 checks"})
    assert render.title(facts, "k").startswith("[probe] shop FLAPPING — ")


def test_the_body_has_what_a_tier_1_agent_needs() -> None:
    recent = [{"at": 1795392010.0, "state": "down", "reason": "HTTP 503 (expected 2xx)",
               "check": "shop-https"}]
    ticket = render.ticket(FACTS, "probe-eu-1/shop/3", "urgent", recent=recent,
                           links={"runbook": "https://wiki/shop", "dashboard": None})
    assert ticket.priority == "urgent"
    assert ticket.body.splitlines()[:6] == [
        "shop is DOWN: HTTP 503 (expected 2xx) from https://shop.example.com/health",
        "",
        "Service:    shop",
        "Since:      2026-11-23 00:00:00 UTC (1h2m ago)",
        "Seen from:  probe-eu-1",
        "Why:        3 consecutive failures",
    ]
    assert ("  shop-https (http https://shop.example.com/health): FAILING — "
            "HTTP 503 (expected 2xx) (3 in a row)") in ticket.body
    assert "  shop-443 (tcp shop.example.com:443): UP" in ticket.body
    assert "Unreachable because of it (no tickets of their own):\n  shop-backend" in ticket.body
    assert "  00:00:10  DOWN    HTTP 503 (expected 2xx)  [shop-https]" in ticket.body
    assert "Runbook:    https://wiki/shop" in ticket.body
    assert "Dashboard" not in ticket.body
    assert ticket.body.endswith("probe key: probe-eu-1/shop/3 (probe finds this ticket by it: "
                                "please keep it)")
    assert ticket.body_markdown.startswith("**shop is DOWN: HTTP 503")
    assert "```\n00:00:10  DOWN    HTTP 503 (expected 2xx)  [shop-https]\n```" in (
        ticket.body_markdown)


def test_templates_replace_title_and_body() -> None:
    ticket = render.ticket(FACTS, "probe-eu-1/shop/3", "high",
                           title_template="$group is down ($reason)",
                           body_template="Seen by $agent since $since: $why. Key $key. $unknown")
    assert ticket.title == "shop is down (HTTP 503 (expected 2xx))"
    assert ticket.body == ("Seen by probe-eu-1 since 2026-11-23 00:00:00 UTC: 3 consecutive "
                           "failures. Key probe-eu-1/shop/3. $unknown")


def test_a_status_note_says_how_long_how_many_and_what_changed() -> None:
    assert render.still_open(FACTS).splitlines() == [
        "Still failing after 1h2m (since 2026-11-23 00:00:00 UTC).",
        "7 failed checks so far; 3 in a row now.",
        "Latest: HTTP 503 (expected 2xx) — changed since the last note "
        "(was: connection refused).",
        "Failing: shop-https",
        "Unreachable because of it: shop-backend",
    ]


def test_the_closing_note_has_the_downtime() -> None:
    facts = Facts.from_json({**STORED, "resolved_at": 1795392000.0 + 5400,
                             "recovered": "recovered"})
    assert render.resolved(facts).splitlines() == [
        "Recovered: shop-https (http https://shop.example.com/health) OK, "
        "shop-443 (tcp shop.example.com:443) OK.",
        "Down from 2026-11-23 00:00:00 UTC to 2026-11-23 01:30:00 UTC (1h30m), "
        "7 failed checks.",
        "Seen from probe-eu-1.",
    ]

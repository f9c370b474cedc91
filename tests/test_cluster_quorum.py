"""The rule that turns the sites' votes into probe's verdict (probe.cluster.quorum): the cases
of the README's table, then its properties searched by hypothesis — never failing without N
fresh failing votes, never healthy without a fresh healthy one or while the unheard sites could
still make a quorum, and a site gone silent leaving the vote only after `silent_after`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.cluster.quorum import Vote, VoteValue, verdict

SITES = ("eu-west", "us-east", "ap-south")
SILENT_AFTER = 180.0


def votes(**by_site: str) -> dict[str, Vote]:
    """site=value for fresh votes, site="stale-value" for a vote whose agent is gone."""
    out = {}
    for site, text in by_site.items():
        fresh = not text.startswith("stale-")
        value = text.removeprefix("stale-")
        assert value in ("failing", "healthy", "unknown")
        out[site.replace("_", "-")] = Vote(site.replace("_", "-"), value,  # type: ignore[arg-type]
                                           fresh, 0.0)
    return out


@pytest.mark.parametrize(("cast", "silent", "expected"), [
    # one site of three failing at quorum 2: not ticketed
    (votes(eu_west="failing", us_east="healthy", ap_south="healthy"), {}, "healthy"),
    (votes(eu_west="failing", us_east="failing", ap_south="healthy"), {}, "failing"),
    (votes(eu_west="failing", us_east="failing", ap_south="failing"), {}, "failing"),
    # failing, healthy and a site unheard: the unheard site could make it failing
    (votes(eu_west="failing", us_east="healthy"), {"ap-south": 30.0}, "undecided"),
    # unknown (the site could not run it) is not evidence either way
    (votes(eu_west="failing", us_east="healthy", ap_south="unknown"), {}, "undecided"),
    # a vote whose agent has gone is no vote
    (votes(eu_west="failing", us_east="stale-failing", ap_south="healthy"),
     {"us-east": 10.0}, "undecided"),
    # two sites silent: nothing can be decided, a healthy vote alone cannot resolve
    (votes(eu_west="healthy"), {"us-east": 30.0, "ap-south": 30.0}, "undecided"),
    # ... until they have been silent for silent_after: then the healthy vote is enough
    (votes(eu_west="healthy"), {"us-east": 200.0, "ap-south": 200.0}, "healthy"),
    # and the one live site failing can never reach quorum 2 alone
    (votes(eu_west="failing"), {"us-east": 200.0, "ap-south": 200.0}, "undecided"),
    # one site gone for good, the other two agree
    (votes(eu_west="failing", us_east="failing"), {"ap-south": 200.0}, "failing"),
    (votes(eu_west="failing", us_east="healthy"), {"ap-south": 200.0}, "healthy"),
], ids=["one-failing", "two-failing", "all-failing", "one-unheard", "one-unknown", "stale",
        "two-silent", "two-left", "alone-failing", "one-left-failing", "one-left-split"])
def test_the_readme_table(cast: dict[str, Vote], silent: dict[str, float], expected: str) -> None:
    assert verdict(SITES, 2, cast, silent, SILENT_AFTER).state == expected


def test_the_rule_says_why() -> None:
    found = verdict(SITES, 2, votes(eu_west="failing", us_east="healthy"), {"ap-south": 30.0},
                    SILENT_AFTER)
    assert found.rule() == (
        "undecided: 1 failing < quorum 2, and 1 failing + 1 unheard could still reach it; "
        "1 failing, 1 healthy, 1 unheard of 3 sites voting")
    found = verdict(SITES, 2, votes(eu_west="failing"), {"us-east": 200.0, "ap-south": 200.0},
                    SILENT_AFTER)
    assert found.out_of_reach
    assert found.rule() == (
        "undecided: quorum 2 is out of reach with 1 site voting and none healthy; 1 failing, "
        "0 healthy, 0 unheard of 1 site voting (us-east, ap-south silent too long: out of "
        "the vote)")


# --- properties -----------------------------------------------------------------------------

values: st.SearchStrategy[VoteValue | None] = st.sampled_from(
    ["failing", "healthy", "unknown", None])


@st.composite
def elections(draw: st.DrawFn) -> tuple[list[str], int, dict[str, Vote], dict[str, float]]:
    sites = [f"s{i}" for i in range(draw(st.integers(1, 7)))]
    quorum = draw(st.integers(1, len(sites)))
    cast: dict[str, Vote] = {}
    silent: dict[str, float] = {}
    for site in sites:
        value: VoteValue | None = draw(values)
        is_silent = draw(st.booleans())
        if is_silent:
            silent[site] = draw(st.floats(0, 2 * SILENT_AFTER))
        if value is not None:
            # a silent site's votes are stale: its agents are gone
            cast[site] = Vote(site, value, not is_silent, 0.0)
    return sites, quorum, cast, silent


FUZZ = settings(max_examples=400, deadline=None)


@FUZZ
@given(elections())
def test_failing_only_with_quorum_fresh_failing_votes(
    election: tuple[list[str], int, dict[str, Vote], dict[str, float]],
) -> None:
    sites, quorum, cast, silent = election
    found = verdict(sites, quorum, cast, silent, SILENT_AFTER)
    fresh_failing = [v for v in cast.values() if v.fresh and v.value == "failing"]
    assert (found.state == "failing") == (len(fresh_failing) >= quorum)


@FUZZ
@given(elections())
def test_healthy_only_on_a_fresh_healthy_vote_and_when_the_unheard_cannot_reach_quorum(
    election: tuple[list[str], int, dict[str, Vote], dict[str, float]],
) -> None:
    sites, quorum, cast, silent = election
    found = verdict(sites, quorum, cast, silent, SILENT_AFTER)
    if found.state != "healthy":
        return
    assert any(v.fresh and v.value == "healthy" for v in cast.values())
    # Every site still in the vote and not freshly healthy, said failing: still no quorum.
    could_fail = [s for s in sites if s not in found.left
                  and not (s in cast and cast[s].fresh and cast[s].value == "healthy")]
    assert len(could_fail) < quorum


@FUZZ
@given(elections(), st.data())
def test_falling_silent_never_resolves(
    election: tuple[list[str], int, dict[str, Vote], dict[str, float]], data: st.DataObject,
) -> None:
    """A site whose agents are gone (for less than silent_after) takes its vote with it: a
    failing verdict may become undecided, never healthy."""
    sites, quorum, cast, silent = election
    before = verdict(sites, quorum, cast, silent, SILENT_AFTER)
    if before.state != "failing":
        return
    gone = data.draw(st.sampled_from(sites))
    after_votes = dict(cast)
    if gone in cast:
        after_votes[gone] = Vote(gone, cast[gone].value, False, 0.0)
    after = verdict(sites, quorum, after_votes, {**silent, gone: 1.0}, SILENT_AFTER)
    assert after.state != "healthy"


@FUZZ
@given(elections(), st.data())
def test_one_more_failing_vote_never_turns_a_verdict_healthy(
    election: tuple[list[str], int, dict[str, Vote], dict[str, float]], data: st.DataObject,
) -> None:
    sites, quorum, cast, silent = election
    site = data.draw(st.sampled_from(sites))
    before = verdict(sites, quorum, cast, silent, SILENT_AFTER)
    after = verdict(sites, quorum, {**cast, site: Vote(site, "failing", True, 0.0)},
                    {k: v for k, v in silent.items() if k != site}, SILENT_AFTER)
    assert not (before.state != "healthy" and after.state == "healthy")
    if before.state == "failing":
        assert after.state == "failing"


@FUZZ
@given(elections())
def test_every_site_is_counted_once(
    election: tuple[list[str], int, dict[str, Vote], dict[str, float]],
) -> None:
    sites, quorum, cast, silent = election
    found = verdict(sites, quorum, cast, silent, SILENT_AFTER)
    counted = [*found.failing, *found.healthy, *found.unheard, *found.left]
    assert sorted(counted) == sorted(sites)
    assert set(found.left) <= {s for s, t in silent.items() if t >= SILENT_AFTER}

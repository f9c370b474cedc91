"""A site's vote from its own results (probe.cluster.votes.Voter): the check's thresholds and
flapping decide it, a blip below the threshold leaves it as it was, a check that cannot run
votes unknown with why, and a child's failing vote waits for its parents to be checked again.
What is written is what changed, once; a check never run here has no vote."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.cluster.votes import Voter
from probe.config import Check, load

CONFIG = """\
agent: {name: eu-west-a}
cluster:
  database: env:PROBE_DATABASE
  site: eu-west
  sites: [eu-west, us-east]
  alert_route: desk
ticketing:
  routes:
    desk: {backend: webhook, url: "http://127.0.0.1:1/"}
defaults: {failure_threshold: 3, success_threshold: 2}
checks:
  - name: gateway
    tcp: {host: 127.0.0.1, port: 1}
  - name: shop
    depends_on: [gateway]
    http: {url: "http://127.0.0.1:1/"}
"""


@pytest.fixture
def checks(tmp_path: Path) -> list[Check]:
    path = tmp_path / "probe.yaml"
    path.write_text(CONFIG)
    return load(path).effective_checks()


@pytest.fixture
def voter(checks: list[Check]) -> Voter:
    made = Voter("eu-west")
    made.configure(checks)
    return made


def vote(voter: Voter, name: str) -> tuple[str, str]:
    cast = voter.cast[name]
    return cast.value, cast.reason


def test_thresholds_make_the_vote_and_a_blip_changes_nothing(voter: Voter) -> None:
    assert voter.observe("gateway", "up", "", 1.0)
    assert vote(voter, "gateway") == ("healthy", "")
    assert not voter.observe("gateway", "up", "", 2.0)  # nothing to write
    voter.take_changes()
    assert not voter.observe("gateway", "down", "connection refused", 3.0)
    assert not voter.observe("gateway", "up", "", 4.0)
    assert not voter.urgent  # a blip below the threshold: no vote to write at once ...
    blip = voter.take_changes()  # ... only its streak, with the vote as it was
    assert blip["gateway"]["value"] == "healthy"
    for at in (5.0, 6.0):
        assert not voter.observe("gateway", "down", "connection refused", at)
    assert voter.observe("gateway", "down", "connection refused", 7.0)
    assert vote(voter, "gateway") == ("failing", "connection refused")
    assert not voter.observe("gateway", "down", "connection refused", 8.0)
    assert voter.observe("gateway", "down", "connection timed out", 9.0)  # what it saw moved
    assert not voter.observe("gateway", "up", "", 10.0)  # one success of two
    assert voter.observe("gateway", "up", "", 11.0)
    assert vote(voter, "gateway") == ("healthy", "")


def test_a_check_that_cannot_run_votes_unknown_with_why(voter: Voter) -> None:
    voter.observe("gateway", "up", "", 1.0)
    assert voter.observe("gateway", "unknown", "no file descriptor left", 2.0)
    assert vote(voter, "gateway") == ("unknown", "no file descriptor left")
    assert voter.observe("gateway", "up", "", 3.0)
    assert vote(voter, "gateway") == ("healthy", "")


def test_a_childs_failing_vote_waits_for_its_parent_to_be_checked_again(voter: Voter) -> None:
    voter.observe("gateway", "up", "", 1.0)
    voter.observe("shop", "up", "", 1.0)
    for at in (2.0, 3.0, 4.0):
        voter.observe("shop", "down", "HTTP 503", at)
    assert vote(voter, "shop") == ("healthy", "")  # held: the gateway was last seen at 1.0
    assert voter.wanted == {"gateway"}
    assert voter.observe("gateway", "up", "", 5.0)  # its result frees the child's vote
    assert vote(voter, "shop") == ("failing", "HTTP 503")


def test_what_is_written_is_each_changed_vote_with_its_streak_once(voter: Voter) -> None:
    voter.observe("gateway", "up", "", 1.0)
    changes = voter.take_changes()
    assert list(changes) == ["gateway"]
    assert changes["gateway"]["value"] == "healthy"
    assert changes["gateway"]["streak"]["successes"] == 1
    assert voter.take_changes() == {}


def test_checks_taken_over_go_on_from_the_sites_streak(voter: Voter, checks: list[Check]
                                                       ) -> None:
    voter.observe("gateway", "up", "", 1.0)
    for at in (2.0, 3.0):
        voter.observe("gateway", "down", "connection refused", at)
    other = Voter("eu-west")
    other.configure(checks)
    other.take({"gateway": (voter.streaks["gateway"], voter.cast["gateway"])})
    assert other.urgent  # written again under the new agent's name
    assert other.observe("gateway", "down", "connection refused", 4.0)  # the third in a row
    assert vote(other, "gateway") == ("failing", "connection refused")

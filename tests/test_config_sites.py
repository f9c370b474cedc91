"""Sites that vote, as a user writes them (issue 13): `sites`, `quorum`, `alert_route`,
`silent_after` and each check's own `sites` and `quorum`; what `probe validate` refuses, with
the file, line and key; and the quorum each check ends up with."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.config import load
from tests.harness.configs import edited, refused, validate

# Line numbers matter: the errors below name them.
SITES = """\
agent:
  name: eu-west-a
cluster:
  database: env:PROBE_DATABASE
  site: eu-west
  sites: [eu-west, us-east, ap-south]
  quorum: 2
  alert_route: oncall
ticketing:
  routes:
    desk: {backend: webhook, url: "http://127.0.0.1:1/desk"}
    oncall: {backend: webhook, url: "http://127.0.0.1:1/oncall"}
defaults:
  ticket: {route: desk}
checks:
  - name: shop
    http: {url: "http://127.0.0.1:1/"}
  - name: intranet
    sites: [eu-west]
    quorum: 1
    tcp: {host: 127.0.0.1, port: 1}
"""


def test_the_contracts_example_validates_and_each_check_has_its_sites_and_quorum(
    tmp_path: Path,
) -> None:
    done = validate(tmp_path, SITES)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    path = tmp_path / "probe.yaml"
    config = load(path)
    checks = {c.name: (c.sites, c.quorum) for c in config.effective_checks()}
    assert checks == {"shop": (("eu-west", "us-east", "ap-south"), 2),
                      "intranet": (("eu-west",), 1)}
    assert config.cluster is not None and config.cluster.silent_after == 180.0


@pytest.mark.parametrize(("sites", "quorum"), [("[a]", 1), ("[a, b]", 2), ("[a, b, c]", 2),
                                               ("[a, b, c, d]", 3), ("[a, b, c, d, e]", 3)])
def test_without_a_quorum_a_majority_of_the_sites_that_run_a_check_must_agree(
    tmp_path: Path, sites: str, quorum: int
) -> None:
    text = edited(edited(edited(SITES, "  quorum: 2\n", ""), "  site: eu-west\n", "  site: a\n"),
                  "[eu-west, us-east, ap-south]", sites)
    text = text[:text.index("  - name: intranet")]
    (tmp_path / "probe.yaml").write_text(text)
    (shop,) = load(tmp_path / "probe.yaml").effective_checks()
    assert shop.quorum == quorum


def test_a_check_run_by_fewer_sites_takes_their_majority_without_a_quorum_of_its_own(
    tmp_path: Path,
) -> None:
    text = edited(edited(SITES, "  quorum: 2\n", ""), "    quorum: 1\n", "")
    (tmp_path / "probe.yaml").write_text(text)
    checks = {c.name: c.quorum for c in load(tmp_path / "probe.yaml").effective_checks()}
    assert checks == {"shop": 2, "intranet": 1}


def test_a_site_that_is_not_in_sites_is_refused_where_it_is_written(tmp_path: Path) -> None:
    text = edited(edited(SITES, "  site: eu-west\n", "  site: eu-north\n"),
                  "sites: [eu-west]", "sites: [eu-west, mars, eu-west]")
    assert refused(tmp_path, text) == [
        "5: cluster.site: 'eu-north' is not one of sites (eu-west, us-east, ap-south)",
        "19: checks[1].sites[1]: 'mars' is not one of cluster.sites "
        "(eu-west, us-east, ap-south)",
        "19: checks[1].sites[2]: 'eu-west' is listed twice",
    ]


def test_a_quorum_above_the_sites_that_run_a_check_is_refused(tmp_path: Path) -> None:
    text = edited(SITES, "    quorum: 1\n", "    quorum: 2\n")
    assert refused(tmp_path, text) == [
        "20: checks[1].quorum: a quorum of 2 is more than the 1 site that runs this check: "
        "set its quorum"]
    text = edited(SITES, "    quorum: 1\n", "")
    assert refused(tmp_path, text) == [
        "19: checks[1].sites: the cluster's quorum of 2 is more than the 1 site that runs "
        "this check: set its quorum"]
    text = edited(SITES, "  quorum: 2\n", "  quorum: 4\n")
    assert refused(tmp_path, text) == ["7: cluster.quorum: 4 is more than the 3 sites that vote"]


def test_alert_route_must_exist_and_must_be_set(tmp_path: Path) -> None:
    assert refused(tmp_path, edited(SITES, "alert_route: oncall", "alert_route: on-call")) == [
        "8: cluster.alert_route: no route is named 'on-call'"]
    assert refused(tmp_path, edited(SITES, "  alert_route: oncall\n", "")) == [
        "3: cluster: alert_route: must be set with sites: the route where probe tickets its "
        "own trouble (a site gone silent, a quorum out of reach)"]


def test_quorum_and_a_checks_sites_mean_nothing_without_sites(tmp_path: Path) -> None:
    text = edited(SITES, "  sites: [eu-west, us-east, ap-south]\n", "")
    assert refused(tmp_path, text) == [
        "6: cluster.quorum: only means something with sites: the sites that vote",
        "7: cluster.alert_route: only means something with sites: the sites that vote",
        "18: checks[1].sites: only means something in a cluster with sites: set cluster.sites",
        "19: checks[1].quorum: only means something in a cluster with sites: set "
        "cluster.sites",
    ]


def test_a_site_cannot_fall_silent_before_its_agents_have_left(tmp_path: Path) -> None:
    text = edited(SITES, "  alert_route: oncall\n",
                  "  alert_route: oncall\n  agent_ttl: 10s\n  silent_after: 5s\n")
    assert refused(tmp_path, text) == [
        "10: cluster.silent_after: must not be shorter than agent_ttl: a site is silent only "
        "once its last agent has left"]

"""The `cluster:` section as a user meets it (issue 12): `probe validate` on good and bad
sections, the connection string read only when asked and never shown, and the config hash that
tells the agents of a cluster whether they run the same configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from probe.config import ConfigError, load
from probe.secrets import SecretError, redact
from tests.harness.configs import edited
from tests.harness.proc import PROBE, REPO

# Line numbers matter: the errors below name them.
CLUSTER = """\
agent:
  name: dc1-a
  listen: 127.0.0.1:9469
cluster:
  database: env:PROBE_TEST_DATABASE
  site: dc1
  agent_ttl: 5s
ticketing:
  routes:
    desk: {backend: rt, url: "https://rt.example.net", token_file: /run/credentials/rt}
checks:
  - name: web
    interval: 30s
    http: {url: "http://127.0.0.1:1/"}
  - name: db
    service: shop
    tcp: {host: 127.0.0.1, port: 5432}
"""

DSN = "postgresql://probe:pw-7f3a9c41@127.0.0.1:5432/probe"


def validate(path: Path, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROBE, "validate", *args, "--config", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def written(tmp_path: Path, text: str, name: str = "probe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- a valid section -------------------------------------------------------------------------


def test_a_cluster_section_loads_and_validate_names_site_ttl_and_where_the_dsn_comes_from(
    tmp_path: Path,
) -> None:
    path = written(tmp_path, CLUSTER)
    config = load(path)
    assert config.cluster is not None
    assert (config.cluster.site, config.cluster.agent_ttl) == ("dc1", 5.0)

    done = validate(path, env={"PROBE_TEST_DATABASE": DSN})
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == (
        f"{path}: OK: 2 checks (1 http, 1 tcp), 1 route, 0 maintenance windows; "
        "cluster site dc1 as agent dc1-a, agents leave after 5s silent, "
        f"database from env:PROBE_TEST_DATABASE, config hash {config.config_hash()}\n")
    assert "pw-7f3a9c41" not in done.stdout


def test_site_and_agent_ttl_have_defaults(tmp_path: Path) -> None:
    text = edited(edited(CLUSTER, "  site: dc1\n", ""), "  agent_ttl: 5s\n", "")
    cluster = load(written(tmp_path, text)).cluster
    assert cluster is not None
    assert (cluster.site, cluster.agent_ttl) == ("default", 5.0)


def test_without_a_cluster_section_nothing_of_it_is_asked(tmp_path: Path) -> None:
    """A lone agent may keep the host name and the local helpdesk, as it always could."""
    path = written(tmp_path, "ticketing: {routes: {desk: {backend: local}}}\n"
                             "checks: [{name: web, http: {url: 'http://127.0.0.1:1/'}}]\n")
    done = validate(path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == f"{path}: OK: 1 check (1 http), 1 route, 0 maintenance windows\n"
    assert load(path).cluster is None


def test_validate_print_shows_the_reference_and_reads_back_the_same(tmp_path: Path) -> None:
    path = written(tmp_path, CLUSTER)
    done = validate(path, "--print", env={"PROBE_TEST_DATABASE": DSN})
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "pw-7f3a9c41" not in done.stdout
    assert yaml.safe_load(done.stdout)["cluster"] == {
        "database": "env:PROBE_TEST_DATABASE", "site": "dc1", "agent_ttl": "5s",
        "silent_after": "3m"}
    again = load(written(tmp_path, done.stdout, "effective.yaml"))
    assert again.cluster == load(path).cluster
    assert again.config_hash() == load(path).config_hash()


# --- the connection string: read when asked, a secret -----------------------------------------


def test_the_dsn_is_read_from_the_environment_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROBE_TEST_DATABASE", raising=False)
    cluster = load(written(tmp_path, CLUSTER)).cluster  # loads without it: validate runs anywhere
    assert cluster is not None
    with pytest.raises(SecretError, match="environment variable PROBE_TEST_DATABASE is not set"):
        cluster.dsn()
    monkeypatch.setenv("PROBE_TEST_DATABASE", DSN)
    assert cluster.dsn() == DSN


def test_the_dsn_is_read_from_its_file_when_asked(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    text = edited(CLUSTER, "database: env:PROBE_TEST_DATABASE", f"database_file: {secret}")
    path = written(tmp_path, text)
    done = validate(path)  # the file need not exist yet: it is read when the daemon connects
    assert done.returncode == 0, done.stderr
    assert f"database from the file {secret}, config hash" in done.stdout
    cluster = load(path).cluster
    assert cluster is not None
    with pytest.raises(SecretError, match=f"database_file: cannot read {secret}"):
        cluster.dsn()
    secret.write_text(DSN + "\n")
    assert cluster.dsn() == DSN
    secret.write_text("host=/run/postgresql dbname=probe\n")  # rotated: the new one counts
    assert cluster.dsn() == "host=/run/postgresql dbname=probe"
    secret.write_text("\n")
    with pytest.raises(SecretError, match="empty connection string"):
        cluster.dsn()


@pytest.mark.parametrize("dsn", [DSN, "host=127.0.0.1 user=probe password=pw-7f3a9c41 dbname=p"])
def test_the_dsn_and_its_password_are_kept_out_of_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    monkeypatch.setenv("PROBE_TEST_DATABASE", dsn)
    secrets = load(written(tmp_path, CLUSTER)).secret_values()
    line = f"cannot connect with {dsn}; password pw-7f3a9c41 refused"
    assert "pw-7f3a9c41" not in redact(line, secrets)


# --- bad sections: the error `probe validate` prints -------------------------------------------

NOT_BOTH = "  database: env:PROBE_TEST_DATABASE\n  database_file: /run/credentials/dsn\n"
NO_NAME_MSG = ("must be set in a cluster: the host name it defaults to is no safe identity for a "
               "cluster member (two hosts may share one, and a renamed host would come back as "
               "another agent)")
LOCAL_MSG = ("the local helpdesk keeps its tickets in one agent's state directory, which the "
             "other agents of the cluster never see: use a helpdesk every agent reaches")
BAD = {
    "inline_dsn": (
        ("database: env:PROBE_TEST_DATABASE",
         'database: "postgresql://probe:pw-7f3a9c41@db.example.net/probe"'),
        "5: cluster.database: inline secrets are not allowed: write env:NAME, or put it in a "
        "file and set database_file"),
    "inline_key_value_dsn": (
        ("database: env:PROBE_TEST_DATABASE", "database: host=db password=pw-7f3a9c41"),
        "5: cluster.database: inline secrets are not allowed: write env:NAME, or put it in a "
        "file and set database_file"),
    "database_and_database_file": (
        ("  database: env:PROBE_TEST_DATABASE\n", NOT_BOTH),
        "4: cluster: set database or database_file, not both"),
    "no_database": (
        ("  database: env:PROBE_TEST_DATABASE\n", ""),
        "4: cluster: needs database_file (or database: env:NAME)"),
    "ttl_zero": (("agent_ttl: 5s", "agent_ttl: 0"), "7: cluster.agent_ttl: must be at least 1s"),
    "ttl_under_a_second": (("agent_ttl: 5s", "agent_ttl: 500ms"),
                           "7: cluster.agent_ttl: must be at least 1s"),
    "ttl_not_a_duration": (
        ("agent_ttl: 5s", "agent_ttl: abc"),
        "7: cluster.agent_ttl: 'abc' is not a duration (like 250ms, 30s, 5m, 1h, 1d)"),
    "ttl_too_long": (("agent_ttl: 5s", "agent_ttl: 11m"),
                     "7: cluster.agent_ttl: must be at most 10m"),
    "unknown_key": (("  site: dc1\n", "  site: dc1\n  lease: 10s\n"),
                    "7: cluster.lease: unknown key"),
    "site_not_a_name": (("site: dc1", 'site: "dc 1"'),
                        "6: cluster.site: 'dc 1' is not a valid name (letters, digits, '_', "
                        "'.', '-'; no spaces)"),
    "empty_section": (
        ("  database: env:PROBE_TEST_DATABASE\n  site: dc1\n  agent_ttl: 5s\n", ""),
        "4: cluster: is empty: set database or database_file, or leave the section out to run "
        "one agent alone"),
    "no_agent_name": (("  name: dc1-a\n", ""), f"1: agent.name: {NO_NAME_MSG}"),
    "no_agent_section": (("agent:\n  name: dc1-a\n  listen: 127.0.0.1:9469\n", ""),
                         f"1: agent.name: {NO_NAME_MSG}"),
    "local_route": (
        ('desk: {backend: rt, url: "https://rt.example.net", token_file: /run/credentials/rt}',
         "desk: {backend: local}"),
        f"10: ticketing.routes.desk.backend: {LOCAL_MSG}"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_each_bad_cluster_section_gives_its_error_at_file_line_and_key(
    tmp_path: Path, case: str
) -> None:
    (old, new), error = BAD[case]
    path = written(tmp_path, edited(CLUSTER, old, new))
    done = validate(path, env={"PROBE_TEST_DATABASE": DSN})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [f"{path}:{error}", f"{path}: 1 error"]
    assert "pw-7f3a9c41" not in done.stderr


def test_a_cluster_error_comes_with_the_others(tmp_path: Path) -> None:
    text = edited(edited(CLUSTER, "  name: dc1-a\n", ""), "agent_ttl: 5s", "agent_ttl: 0")
    with pytest.raises(ConfigError) as caught:
        load(written(tmp_path, text))
    assert [(i.line, i.path) for i in caught.value.issues] == [
        (1, "agent.name"), (6, "cluster.agent_ttl")]


# --- the config hash ---------------------------------------------------------------------------


def hash_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"h{len(list(tmp_path.glob('h*.yaml')))}.yaml"
    return load(written(tmp_path, text, path.name)).config_hash()


def reordered(node: object) -> object:
    """The same configuration with every mapping's keys in reverse order."""
    if isinstance(node, dict):
        return {key: reordered(node[key]) for key in reversed(list(node))}
    if isinstance(node, list):
        return [reordered(item) for item in node]
    return node


def test_the_hash_is_a_short_hex_digest(tmp_path: Path) -> None:
    digest = hash_of(tmp_path, CLUSTER)
    assert len(digest) == 16
    assert int(digest, 16) >= 0


@pytest.mark.parametrize(("old", "new"), [
    ("name: dc1-a", "name: dc1-b"),
    ("listen: 127.0.0.1:9469", "listen: 127.0.0.1:9470"),
    ("  listen: 127.0.0.1:9469\n", "  listen: 127.0.0.1:9470\n  state_dir: /srv/probe\n"
                                   "  log_level: debug\n  max_concurrency: 10\n"),
    ("database: env:PROBE_TEST_DATABASE", "database: env:OTHER_DATABASE"),
    ("database: env:PROBE_TEST_DATABASE", "database_file: /run/credentials/dsn"),
    ("interval: 30s", "interval: 0.5m"),  # the same interval, written otherwise
    # Each agent's vantage point: agents of every site must agree on the rest (issue 13).
    ("site: dc1", "site: dc2"),
], ids=["agent_name", "listen", "agent_settings", "database_env", "database_file", "spelling",
        "site"])
def test_what_is_each_agents_own_leaves_the_hash_alone(
    tmp_path: Path, old: str, new: str
) -> None:
    assert hash_of(tmp_path, edited(CLUSTER, old, new)) == hash_of(tmp_path, CLUSTER)


@pytest.mark.parametrize(("old", "new"), [
    ("interval: 30s", "interval: 31s"),
    # a duration inside a model, which format_duration would show as 1h either way
    ("checks:\n", "defaults: {ticket: {update_interval: 3600001ms}}\nchecks:\n"),
    ("port: 5432", "port: 5433"),
    ("service: shop", "service: shop2"),
    ("  - name: db\n", "  - name: db\n    depends_on: [web]\n"),
    ("token_file: /run/credentials/rt}", "token_file: /run/credentials/rt, queue: Ops}"),
    ("routes:\n", "poll_interval: 2m\n  routes:\n"),
    ("checks:\n", "defaults: {ticket: {priority: low}}\nchecks:\n"),
    ("checks:\n", "maintenance: [{checks: [web], at: '02:00', duration: 1h}]\nchecks:\n"),
    ("agent_ttl: 5s", "agent_ttl: 6s"),
    ("agent_ttl: 5s", "agent_ttl: 5s\n  sites: [dc1, dc2]\n  alert_route: desk"),
], ids=["interval", "update_interval_ms", "spec", "service", "dependency", "route", "poll_interval",
        "ticket_policy", "maintenance", "agent_ttl", "sites"])
def test_what_the_agents_of_a_cluster_share_changes_the_hash(
    tmp_path: Path, old: str, new: str
) -> None:
    assert hash_of(tmp_path, edited(CLUSTER, old, new)) != hash_of(tmp_path, CLUSTER)


def test_reordering_keys_and_checks_leaves_the_hash_alone(tmp_path: Path) -> None:
    data = yaml.safe_load(CLUSTER)
    other = reordered(data)
    assert isinstance(other, dict)
    other["checks"].reverse()
    text = yaml.safe_dump(other, sort_keys=False)
    assert text.index("checks:") < text.index("agent:")  # it really is in another order
    assert hash_of(tmp_path, text) == hash_of(tmp_path, CLUSTER)


def test_a_credential_in_a_checks_url_is_not_in_the_hash(tmp_path: Path) -> None:
    """Agents may differ in it harmlessly; a hash of it would let a guess be checked."""
    url = 'http: {url: "http://127.0.0.1:1/"}'
    one = hash_of(tmp_path, edited(CLUSTER, url, 'http: {url: "http://127.0.0.1:1/?token=aaaa1111"}'))
    two = hash_of(tmp_path, edited(CLUSTER, url, 'http: {url: "http://127.0.0.1:1/?token=bbbb2222"}'))
    assert one == two != hash_of(tmp_path, CLUSTER)


def test_the_hash_is_the_same_in_every_process(tmp_path: Path) -> None:
    """Python's string hashing differs per process (sets, dicts built from them): the hash must
    not."""
    path = written(tmp_path, CLUSTER)
    code = (f"import sys; sys.path.append({str(REPO)!r}); from probe.config import load; "
            f"print(load({str(path)!r}).config_hash())")
    seen = {subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                           timeout=60, check=True, env={**os.environ, "PYTHONHASHSEED": seed}
                           ).stdout.strip() for seed in ("1", "2", "3")}
    assert seen == {load(path).config_hash()}

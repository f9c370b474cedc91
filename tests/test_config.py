"""The configuration contract as a user meets it: `probe validate` on good and bad files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from checks.values import format_duration, parse_duration, parse_percent
from probe.config import ConfigError, load
from probe.secrets import SecretError
from tests.harness.configs import edited
from tests.harness.proc import PROBE

HERE = Path(__file__).parent
CONFIGS = HERE / "configs"
EXAMPLE = HERE.parent / "config" / "probe.example.yaml"
BAD = sorted((CONFIGS / "bad").glob("*.yaml"))


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROBE, *args], capture_output=True, text=True, timeout=60, env=env
    )


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path} must start with '# expect: LINE: message'"
    return f"{path}:" + first.removeprefix("# expect: ").replace("{dir}", str(path.parent))


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_each_bad_file_gives_exactly_its_error(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert [str(issue) for issue in caught.value.issues] == [expected_error(path)]


def test_validate_prints_every_error_and_exits_1() -> None:
    result = probe("validate", "--config", str(CONFIGS / "bad" / "cycle.yaml"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        expected_error(CONFIGS / "bad" / "cycle.yaml"),
        f"{CONFIGS / 'bad' / 'cycle.yaml'}: 1 error",
    ]


@pytest.mark.parametrize(("name", "says"), [("inline_secret", "inline secrets are not allowed"),
                                           ("inline_header_credential", "may not be inline")])
def test_an_inline_secret_is_refused_and_never_printed(name: str, says: str) -> None:
    result = probe("validate", "--config", str(CONFIGS / "bad" / f"{name}.yaml"))
    assert result.returncode == 1
    assert says in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout


def test_the_reference_configuration_validates() -> None:
    result = probe("validate", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{EXAMPLE}: OK: 7 checks (1 dns, 1 http, 1 icmp, 3 tcp, 1 tls), "
        "14 routes, 2 maintenance windows\n"
    )


def test_the_reference_configuration_shows_every_key() -> None:
    """Every key of the schema appears in the reference file (commented out or set)."""
    text = EXAMPLE.read_text()
    schema = json.loads(probe("schema").stdout)
    keys: set[str] = set()
    for definition in [schema, *schema["$defs"].values()]:
        keys.update(definition.get("properties", {}))
    missing = sorted(k for k in keys if f"{k}:" not in text)
    assert missing == []


def test_schema_is_json_schema_of_the_top_level_sections() -> None:
    result = probe("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) == {"agent", "cluster", "defaults", "ticketing",
                                         "maintenance", "checks", "history", "services",
                                         "status_page", "alertmanager"}
    assert schema["additionalProperties"] is False


def test_a_directory_is_merged_and_defaults_apply() -> None:
    config = load(CONFIGS / "confd")
    assert config.summary() == "2 checks (1 http, 1 tcp), 2 routes, 1 maintenance window"
    web, db = config.effective_checks()
    assert (web.name, web.interval, web.retry_interval, web.failure_threshold) == ("web", 60, 10, 3)
    assert (db.name, db.interval, db.failure_threshold, db.success_threshold) == ("db", 10, 1, 2)
    # a check's ticket block overrides only the keys it sets
    assert (web.ticket.route, web.ticket.priority, web.ticket.update_interval) == (
        "tracker", "high", 1800,
    )
    assert (db.ticket.route, db.ticket.priority, db.ticket.update_interval) == (
        "desk", "high", 3600,
    )
    assert web.group == db.group == "shop"
    window = config.maintenance[0]
    assert window.at is not None
    assert (window.at.hour, window.at.minute, window.weekdays) == (2, 0, ["sat", "sun"])


def test_a_directory_reports_clashes_between_files() -> None:
    with pytest.raises(ConfigError) as caught:
        load(CONFIGS / "confd-dup")
    d = CONFIGS / "confd-dup"
    assert [str(i) for i in caught.value.issues] == [
        f"{d}/10-more.yaml:1: agent: also set at {d}/00-agent.yaml:1: set it in one file",
        f"{d}/10-more.yaml:4: ticketing.routes.desk: route defined twice "
        f"(also at {d}/00-agent.yaml:5)",
        f"{d}/10-more.yaml:9: checks[1].name: duplicate check name 'web' "
        f"(first at {d}/10-more.yaml:6)",
    ]


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    result = probe("validate", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"{tmp_path / 'nope.yaml'}: no such file or directory"


def test_the_only_route_is_every_check_s_route(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "ticketing: {routes: {desk: {backend: local}}}\n"
        "checks: [{name: a, tcp: {host: localhost, port: 1}}]\n"
    )
    (check,) = load(tmp_path / "p.yaml").effective_checks()
    assert check.ticket.route == "desk"


TEMPLATED = """\
x-web: &web                   # x- keys are skipped: a place for templates
  interval: 30s
  failure_threshold: 3
  ticket: {priority: high}
x-fast: &fast {interval: 5s, retry_interval: 1s, timeout: 1s}
checks:
  - &shop
    name: shop
    <<: *web
    interval: 10s             # its own key wins over the merged one
    http: {url: "http://127.0.0.1:1/"}
  - <<: [*fast, *web]         # the first map merged wins
    name: cart
    http: {url: "http://127.0.0.1:2/"}
  - <<: *shop                 # a check copied, its name its own
    name: shop-copy
  - <<: *shop
    name: shop-again
"""


def test_yaml_merge_keys_and_x_templates_are_overridden_by_the_checks_own_keys(
    tmp_path: Path,
) -> None:
    (tmp_path / "p.yaml").write_text(TEMPLATED)
    checks = {c.name: c for c in load(tmp_path / "p.yaml").effective_checks()}
    got = {n: (c.interval, c.retry_interval, c.failure_threshold, c.ticket.priority)
           for n, c in checks.items()}
    assert got == {
        "shop": (10, 10, 3, "high"),
        "cart": (5, 1, 3, "high"),
        "shop-copy": (10, 10, 3, "high"),
        "shop-again": (10, 10, 3, "high"),
    }


def test_a_key_twice_in_a_checks_own_keys_is_still_an_error_with_a_merge(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(edited(
        TEMPLATED, "    name: cart\n", "    name: cart\n    name: basket\n"))
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        f"{tmp_path / 'p.yaml'}:14: checks[1].name: duplicate key"]


def test_an_error_in_an_overriding_key_names_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(edited(TEMPLATED, "interval: 10s ", "interval: 10  "))
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "p.yaml")
    # the copies carry the same value, from the same line
    assert [(i.line, i.path) for i in caught.value.issues] == [
        (10, "checks[0].interval"), (10, "checks[2].interval"), (10, "checks[3].interval")]


def test_secrets_are_read_from_env_or_file_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "p.yaml").write_text(
        "ticketing:\n  routes:\n"
        f"    a: {{backend: rt, url: 'https://rt.example.net', token_file: {tmp_path}/token}}\n"
        "    b: {backend: rt, url: 'https://rt.example.net', token: 'env:PROBE_TEST_TOKEN'}\n"
        f"    c: {{backend: rt, url: 'https://rt.example.net', token_file: {tmp_path}/none}}\n"
    )
    routes = load(tmp_path / "p.yaml").routes
    monkeypatch.setenv("PROBE_TEST_TOKEN", "from-env")
    assert routes["a"].reveal("token") == "from-file"
    assert routes["b"].reveal("token") == "from-env"
    monkeypatch.delenv("PROBE_TEST_TOKEN")
    with pytest.raises(SecretError, match="environment variable PROBE_TEST_TOKEN is not set"):
        routes["b"].reveal("token")
    with pytest.raises(SecretError, match=f"token_file: cannot read {tmp_path}/none"):
        routes["c"].reveal("token")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), ("1h30m", 5400),
     ("1.5s", 1.5), (0, 0)],
)
def test_durations_read_like_prometheus(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5 m", "1h 30m", "m5", "1.5", "-1s", "10x"])
def test_durations_without_a_known_unit_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration|has no unit"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (30, "30s"), (90, "1m30s"), (86400, "1d"), (1.5, "1.5s")]
)
def test_durations_print_shortest(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_percentages() -> None:
    assert parse_percent("20%") == 0.2
    assert parse_percent("0.5%") == 0.005
    for bad in ("20", "120%", 0.2, "abc%"):
        with pytest.raises(ValueError):
            parse_percent(bad)


def test_a_checks_flapping_merged_with_the_defaults_must_keep_low_below_high(
    tmp_path: Path,
) -> None:
    # each block alone is valid: the check runs with low 45% and high 40%
    (tmp_path / "p.yaml").write_text(
        "defaults: {flapping: {low: 45%, high: 50%}}\n"
        "ticketing: {routes: {desk: {backend: local}}}\n"
        "checks:\n"
        "  - name: a\n"
        "    flapping: {high: 40%}\n"
        "    tcp: {host: localhost, port: 1}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        f"{tmp_path / 'p.yaml'}:5: checks[0].flapping: low 45% (with the defaults') must not be "
        "above high 40%"]

"""`probe validate --print` as an operator runs it: the effective configuration, with templates
expanded and defaults written into every check, which `probe validate` accepts again and which
shows every secret as its reference, never its value."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from checks.values import format_duration, parse_duration, parse_percent
from probe.config import load
from probe.effective import duration_text, percent_text
from tests.harness.proc import PROBE

HERE = Path(__file__).parent
EXAMPLE = HERE.parent / "config" / "probe.example.yaml"
LOCAL = HERE.parent / "config" / "local.yaml"
CONFD = HERE / "configs" / "confd"

TEMPLATES = """\
x-web: &web
  interval: 30s
  failure_threshold: 3
  ticket: {priority: high}
x-fast: &fast {interval: 5s, retry_interval: 1s, timeout: 1s}
checks:
  - &shop
    name: shop
    <<: *web
    interval: 10s
    http: {url: "http://127.0.0.1:1/"}
  - <<: [*fast, *web]
    name: cart
    http: {url: "http://127.0.0.1:2/"}
  - <<: *shop
    name: shop-copy
"""

BASE = """\
agent: {name: print-test, state_dir: ./state}
defaults:
  interval: 1m
  ticket:
    route: desk
    escalate_after: 2h
    title_template: "[probe] {group} DOWN"
ticketing:
  routes:
    desk: {backend: local}
    mail:
      backend: email
      smtp: smtp.example.net:587
      from: probe@example.net
      to: [helpdesk@example.net]
"""

# Values the models' own serializers would round (1.25ms prints as 1ms), nothings that differ
# from what a left-out key gives, a template of several lines, a time YAML reads as a number.
AWKWARD = """\
maintenance:
  - {services: [edge], at: 13:30, duration: 90.5s, weekdays: [mon]}
checks:
  - name: edge
    description: "Kante über the edge router: 'quoted', #hash"
    service: edge
    timeout: 12.345s
    flapping: {high: 33.3333%, low: 0.5%}
    ticket:
      route: mail
      escalate_after: null
      title_template: null
      body_template: "line one\\nline two\\n"
    icmp: {host: 127.0.0.1, interval: 1.25ms, max_rtt: 1.5ms, max_loss: 12.5%}
"""


def probe(*args: str, cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROBE, "validate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def printed(config: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = probe("--print", "--config", str(config), cwd=cwd, env=env)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done.stdout


def checks_of(text: str) -> dict[str, Any]:
    return {check["name"]: check for check in yaml.safe_load(text)["checks"]}


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


@pytest.fixture
def templated(tmp_path: Path) -> Path:
    """A conf.d directory: a base file, checks made from templates, and awkward values."""
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "00-base.yaml").write_text(BASE)
    (confd / "10-templates.yaml").write_text(TEMPLATES)
    (confd / "20-awkward.yaml").write_text(AWKWARD)
    return confd


def test_merged_templates_show_the_earlier_maps_interval_and_the_checks_own_keys_win(
    tmp_path: Path, cwd: Path
) -> None:
    (tmp_path / "p.yaml").write_text(TEMPLATES)
    out = printed(tmp_path / "p.yaml", cwd)
    checks = checks_of(out)
    timing = {name: (c["interval"], c["retry_interval"], c["timeout"], c["failure_threshold"],
                     c["ticket"]["priority"]) for name, c in checks.items()}
    assert timing == {
        "shop": ("10s", "10s", "10s", 3, "high"),
        "cart": ("5s", "1s", "1s", 3, "high"),  # *fast, merged first, wins over *web
        "shop-copy": ("10s", "10s", "10s", 3, "high"),
    }
    for template in ("<<", "x-web", "x-fast", "&web", "*web", "&shop", "*shop"):
        assert template not in out


def test_every_check_shows_the_defaults_it_inherits_in_probes_own_syntax(cwd: Path) -> None:
    checks = checks_of(printed(CONFD, cwd))
    assert checks["web"] == {
        "name": "web",
        "service": "shop",
        "interval": "1m",  # from defaults, in probe's syntax: not 60.0
        "retry_interval": "10s",
        "timeout": "10s",
        "failure_threshold": 3,
        "success_threshold": 2,
        "flapping": {"enabled": True, "high": "30%", "low": "25%", "window": 21},
        "ticket": {"enabled": True, "route": "tracker", "priority": "high",
                   "expiry_priority": "normal", "update_interval": "30m",
                   "escalate_after": "1h", "on_human_close": "reopen"},
        "http": {"url": "http://127.0.0.1:8080/", "method": "GET", "expect_status": ["2xx"],
                 "max_body_bytes": 1048576, "follow_redirects": True, "max_redirects": 10,
                 "tls_verify": True, "ip_family": "auto"},
    }
    assert (checks["db"]["interval"], checks["db"]["ticket"]["route"]) == ("10s", "desk")


def test_a_nothing_that_overrides_a_default_is_written_as_null(templated: Path, cwd: Path) -> None:
    out = printed(templated, cwd)
    ticket = checks_of(out)["edge"]["ticket"]
    assert (ticket["escalate_after"], ticket["title_template"]) == (None, None)
    assert ticket["body_template"] == "line one\nline two\n"
    assert "    body_template: |\n      line one\n      line two\n" in out
    assert checks_of(out)["cart"]["ticket"]["escalate_after"] == "2h"


def test_no_secret_value_is_printed_only_where_it_is_kept(tmp_path: Path, cwd: Path) -> None:
    files = {"rt-token": "file-secret-rt-4c1d9e", "hook-secret": "file-secret-hook-77ab02",
             "hook-auth": "Bearer file-secret-auth-0f9e3c", "api-token": "file-secret-api-5d2b"}
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")
    env = {"PROBE_PRINT_ROUTING_KEY": "env-secret-routing-93be1f",
           "PROBE_PRINT_HOOK_URL": "https://hooks.example.net/T0/env-secret-path-61c2",
           "PROBE_PRINT_API_KEY": "env-secret-api-key-a0d4",
           "PROBE_PRINT_BEARER": "Bearer env-secret-bearer-2e7f"}
    (tmp_path / "p.yaml").write_text(f"""\
defaults: {{ticket: {{route: desk}}}}
ticketing:
  routes:
    desk: {{backend: rt, url: "https://rt.example.net", token_file: {tmp_path}/rt-token}}
    pager: {{backend: pagerduty, url: "https://events.pagerduty.com",
             routing_key: "env:PROBE_PRINT_ROUTING_KEY"}}
    hook:
      backend: webhook
      url: env:PROBE_PRINT_HOOK_URL
      secret_file: {tmp_path}/hook-secret
      headers: {{X-Api-Key: "env:PROBE_PRINT_API_KEY"}}
      headers_file: {{Authorization: {tmp_path}/hook-auth}}
checks:
  - name: api
    http:
      url: https://api.example.net/health
      headers: {{Authorization: "env:PROBE_PRINT_BEARER"}}
      headers_file: {{X-Token: {tmp_path}/api-token}}
""")
    done = probe("--print", "--config", str(tmp_path / "p.yaml"), cwd=cwd,
                 env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    for value in [*files.values(), *env.values()]:
        assert value.removeprefix("Bearer ") not in done.stdout + done.stderr
    data = yaml.safe_load(done.stdout)
    routes, check = data["ticketing"]["routes"], checks_of(done.stdout)["api"]["http"]
    assert routes["desk"]["token_file"] == f"{tmp_path}/rt-token"
    assert routes["pager"]["routing_key"] == "env:PROBE_PRINT_ROUTING_KEY"
    assert {k: routes["hook"][k] for k in ("url", "secret_file", "headers", "headers_file")} == {
        "url": "env:PROBE_PRINT_HOOK_URL", "secret_file": f"{tmp_path}/hook-secret",
        "headers": {"X-Api-Key": "env:PROBE_PRINT_API_KEY"},
        "headers_file": {"Authorization": f"{tmp_path}/hook-auth"}}
    assert (check["headers"], check["headers_file"]) == (
        {"Authorization": "env:PROBE_PRINT_BEARER"}, {"X-Token": f"{tmp_path}/api-token"})


@pytest.mark.parametrize("which", ["example", "local", "confd", "templated"])
def test_the_printed_configuration_validates_again_and_runs_the_same_checks(
    which: str, templated: Path, cwd: Path
) -> None:
    source = {"example": EXAMPLE, "local": LOCAL, "confd": CONFD, "templated": templated}[which]
    summary = probe("--config", str(source), cwd=cwd).stdout
    (cwd / "effective.yaml").write_text(printed(source, cwd))

    again = probe("--config", "effective.yaml", cwd=cwd)
    assert again.returncode == 0, again.stderr
    # validate without --print says what it always said, of either file
    assert again.stdout == summary.replace(f"{source}: ", "effective.yaml: ")
    before, after = load(source), load(cwd / "effective.yaml")
    assert after.effective_checks() == before.effective_checks()
    for section in ("agent", "defaults", "ticketing", "maintenance"):
        assert getattr(after, section) == getattr(before, section), section
    # the output of the output is itself, but for the files it names
    first, second = (printed(source, cwd), printed(cwd / "effective.yaml", cwd))
    assert second.splitlines()[1:] == first.splitlines()[1:]


def test_durations_and_percentages_keep_their_digits(templated: Path, cwd: Path) -> None:
    out = printed(templated, cwd)
    edge = checks_of(out)["edge"]
    assert edge["icmp"] == {"host": "127.0.0.1", "count": 3, "interval": "1.25ms",
                            "max_loss": "12.5%", "max_rtt": "1.5ms", "payload_size": 56,
                            "ip_family": "auto"}
    assert (edge["timeout"], edge["flapping"]["high"], edge["flapping"]["low"]) == (
        "12.345s", "33.3333%", "0.5%")
    assert '  at: "13:30"\n  duration: 90.5s\n' in out


def test_keys_come_in_the_reference_files_order(cwd: Path) -> None:
    data = yaml.safe_load(printed(EXAMPLE, cwd))
    assert list(data) == ["agent", "defaults", "ticketing", "maintenance", "history", "services",
                          "status_page", "checks"]
    assert list(data["ticketing"]) == ["poll_interval", "routes"]
    assert list(data["ticketing"]["routes"]["helpdesk"]) == [
        "backend", "url", "email", "token_file", "group_id", "tags",
        "escalate_to", "timeout", "tls_verify"]
    assert list(data["checks"][0])[:3] == ["name", "description", "service"]
    assert [list(check)[-1] for check in data["checks"]] == [
        "http", "tcp", "tcp", "dns", "tls", "icmp", "tcp"]


def test_the_first_line_names_the_files_it_was_read_from(cwd: Path) -> None:
    first = printed(CONFD, cwd).splitlines()[0]
    files = ", ".join(str(CONFD / name) for name in ("00-agent.yaml", "10-web.yaml", "20-db.yaml"))
    assert first == f"# probe validate --print: the effective configuration of {files}"


def test_a_file_name_with_a_line_break_stays_inside_the_comment(tmp_path: Path, cwd: Path) -> None:
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "a\nagent: {name: injected}\n.yaml").write_text(
        "checks: [{name: a, tcp: {host: 127.0.0.1, port: 1}}]\n")
    out = printed(confd, cwd)
    assert out.splitlines()[0].startswith("# ")
    assert out.splitlines()[1] == ""
    assert yaml.safe_load(out)["agent"]["name"] != "injected"


def test_an_invalid_configuration_prints_its_errors_and_no_yaml(cwd: Path) -> None:
    bad = HERE / "configs" / "bad" / "cycle.yaml"
    plain = probe("--config", str(bad), cwd=cwd)
    with_print = probe("--print", "--config", str(bad), cwd=cwd)
    assert (with_print.returncode, with_print.stdout) == (1, "")
    assert with_print.stderr == plain.stderr != ""


@given(st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_a_duration_is_written_so_that_it_reads_back_exactly(seconds: float) -> None:
    assert parse_duration(duration_text(seconds)) == seconds


@given(st.integers(0, 10**6), st.integers(0, 3), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_a_duration_written_by_hand_reads_back_exactly_in_as_few_digits(
    whole: int, places: int, unit: str
) -> None:
    text = f"{whole / 10**places:.{places}f}{unit}"
    seconds = parse_duration(text)
    assert parse_duration(duration_text(seconds)) == seconds
    if duration_text(seconds) != format_duration(seconds):
        assert len(duration_text(seconds)) <= len(text)


@given(st.floats(min_value=0, max_value=100))
def test_a_percentage_is_written_so_that_it_reads_back_exactly(number: float) -> None:
    fraction = parse_percent(f"{number!r}%")
    assert parse_percent(percent_text(fraction)) == fraction


@given(st.integers(0, 10**5), st.integers(0, 4))
def test_a_percentage_written_by_hand_comes_back_as_written(whole: int, places: int) -> None:
    text = f"{whole / 10**places:.{places}f}".rstrip("0").rstrip(".") if places else str(whole)
    if float(text) <= 100:
        assert percent_text(parse_percent(f"{text}%")) == f"{text}%"

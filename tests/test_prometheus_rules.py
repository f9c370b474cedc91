"""config/prometheus/probe-rules.yml: promtool accepts it, its unit tests pass and cover every
alert firing and not firing, and every series it reads is one a real probe daemon serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.harness.daemon import ProbeProcess, Target
from tests.harness.ports import free_port
from tests.harness.prometheus import RULE_TESTS, RULES, metric_names, promtool, served_names

# Series that Prometheus itself makes for each target it scrapes.
SCRAPE_SERIES = {"up"}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_runs_the_rules_unit_tests() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_for_a_severity_a_summary_and_a_description() -> None:
    assert len(alerts()) >= 8
    for alert in alerts():
        name = alert["alert"]
        assert "for" in alert, name
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), name
        assert alert["annotations"]["summary"].strip(), name
        assert alert["annotations"]["description"].strip(), name


def test_the_unit_tests_see_every_alert_fire_and_stay_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names - fired == set(), "never seen firing"
    assert names - silent == set(), "never seen silent"
    assert (fired | silent) - names == set(), "tests of alerts the rules do not have"


async def test_the_rules_read_only_series_a_probe_daemon_serves(tmp_path: Path,
                                                                 target: Target) -> None:
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{name: rules, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
defaults: {{interval: 300ms, timeout: 200ms}}
ticketing: {{routes: {{local: {{backend: local}}}}}}
checks:
  - {{name: web, http: {{url: "http://127.0.0.1:{target.port}/health"}}}}
""")
    probe = ProbeProcess(config, port).start()
    try:
        await probe.wait("the check's first result",
                         lambda: "probe_success{" in probe.get("/metrics"))
        text = probe.get("/metrics")
    finally:
        probe.stop()
    served = served_names(text) | SCRAPE_SERIES
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    read: dict[str, set[str]] = {}
    for rule in rules():
        name = rule.get("alert") or rule["record"]
        read[name] = metric_names(rule["expr"]) - recorded
        assert read[name], f"{name}: no series found in {rule['expr']!r}"
    unknown = {name: names - served for name, names in read.items() if names - served}
    assert unknown == {}, "series probe does not serve"

"""The `alertmanager` section as a user writes it: what `probe validate` takes, and what it
refuses with the file, line and key."""

from __future__ import annotations

from pathlib import Path

from probe.config import load
from tests.harness.configs import edited, refused, validate

# Line numbers matter: the errors below name them.
CONFIG = """\
agent:
  name: alerts
ticketing:
  routes:
    desk: {backend: local}
    oncall: {backend: local}
alertmanager:
  receivers:
    ops-tickets:
      route: desk
      priority_label: severity
      priorities: {critical: urgent, warning: high}
      token_file: /run/credentials/probe.service/alertmanager
      resolve_after: 12h
"""


def test_the_documented_section_validates(tmp_path: Path) -> None:
    done = validate(tmp_path, CONFIG)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    (tmp_path / "probe.yaml").write_text(CONFIG)
    section = load(tmp_path / "probe.yaml").alertmanager
    assert section is not None
    receiver = section.receivers["ops-tickets"]
    assert (receiver.route, receiver.priorities, receiver.default_priority,
            receiver.resolve_after, receiver.update_interval) == (
        "desk", {"critical": "urgent", "warning": "high"}, "high", 43200, 3600)


def test_what_validate_refuses(tmp_path: Path) -> None:
    assert refused(tmp_path, edited(CONFIG, "route: desk", "route: helpdesk")) == [
        "10: alertmanager.receivers.ops-tickets.route: no route is named 'helpdesk'"]
    assert refused(tmp_path, edited(CONFIG, "      route: desk\n", "")) == [
        "9: alertmanager.receivers.ops-tickets: set route: the route its tickets go to"]
    assert refused(tmp_path, edited(CONFIG, "warning: high", "warning: loud")) == [
        "12: alertmanager.receivers.ops-tickets.priorities.warning: 'loud' is not one of "
        "'urgent', 'high', 'normal' or 'low'"]
    assert refused(tmp_path, edited(CONFIG, "resolve_after: 12h", "resolve_after: soon")) == [
        "14: alertmanager.receivers.ops-tickets.resolve_after: 'soon' is not a duration "
        "(like 250ms, 30s, 5m, 1h, 1d)"]
    assert refused(tmp_path, CONFIG + "      tokn: x\n") == [
        "15: alertmanager.receivers.ops-tickets.tokn: unknown key (did you mean 'token'?)"]
    clustered = CONFIG.replace("agent:\n", "cluster: {database: env:DB}\nagent:\n")
    assert "8: alertmanager: is not supported in a cluster yet: point Alertmanager at one " \
           "agent that runs alone (docs/alertmanager.md)" in refused(tmp_path, clustered)

"""Debian's Prometheus and promtool for the tests of config/prometheus/ and config/grafana/: a
real Prometheus server on loopback that scrapes a probe daemon, and what to read PromQL with.

Both come with Debian's `prometheus` package (scripts/test installs it). Without them the
tests skip, unless PROBE_REQUIRE_PROMETHEUS is set (CI sets it): then they fail, so that a
missing package cannot pass for a green run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.harness.ports import free_port
from tests.harness.proc import REPO, ready, terminate

RULES = REPO / "config" / "prometheus" / "probe-rules.yml"
RULE_TESTS = REPO / "config" / "prometheus" / "probe-rules.test.yml"
DASHBOARD = REPO / "config" / "grafana" / "probe.json"


def tool(name: str, package: str = "prometheus") -> str:
    """The path of Debian's `prometheus`, `promtool` (package prometheus) or another program
    of that family; skips the test when it is missing, or fails it when
    PROBE_REQUIRE_PROMETHEUS is set."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")
    if path is not None:
        return path
    why = f"{name} is not installed (Debian package {package})"
    if os.environ.get("PROBE_REQUIRE_PROMETHEUS"):
        pytest.fail(f"{why}, and PROBE_REQUIRE_PROMETHEUS is set")
    pytest.skip(f"{why}; set PROBE_REQUIRE_PROMETHEUS=1 to make this a failure")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


class Prometheus:
    """`prometheus` on 127.0.0.1, its configuration and TSDB in `directory`, scraping
    `targets` (host:port) as job "probe" every second and evaluating `rule_files` every
    second."""

    def __init__(self, directory: Path, targets: list[str], rule_files: list[Path], *,
                 alertmanagers: list[str] | None = None) -> None:
        self.directory = directory
        self.targets = targets
        self.rule_files = rule_files
        self.alertmanagers = alertmanagers or []  # host:port each: its alerts go to all
        self.log = directory / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        config = self.directory / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML: no quoting to get wrong
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [{"job_name": "probe",
                                "static_configs": [{"targets": self.targets}]}],
            "alerting": {"alertmanagers": [
                {"static_configs": [{"targets": self.alertmanagers}]}]},
        }))
        for _attempt in range(3):  # another process may take the port before Prometheus does
            self.port = free_port()
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [tool("prometheus"), f"--config.file={config}",
                     f"--storage.tsdb.path={self.directory / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                     f"--web.external-url=http://127.0.0.1:{self.port}",
                     # firing alerts sent again every second, not every minute
                     "--rules.alert.resend-delay=1s"],
                    stdout=log, stderr=subprocess.STDOUT)
            assert self.proc is not None
            if ready(self.proc, f"http://127.0.0.1:{self.port}/-/ready"):
                return self
            self.stop()
        raise AssertionError(f"prometheus did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>: the decoded answer, an error's too (status "error", errorType
        "bad_data" for a query that does not parse)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body: bytes = r.read()
        except urllib.error.HTTPError as err:
            body = err.read()
        answer: dict[str, Any] = json.loads(body)
        return answer

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def stop(self) -> None:
        terminate(self.proc)



# --- what PromQL and the exposition name ---------------------------------------------------

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("_count", "_sum", "_created", ""), "info": ("_info",),
             "untyped": ("",)}


def served_names(exposition: str) -> set[str]:
    """Every series name the text could hold: the samples it has, and those its families would
    have once set (a labelled counter has no sample before its first increment)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.update(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))
            if kind == "counter" and family.endswith("_total"):
                names.add(family)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (not its functions, labels or keywords)."""
    label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.S)
    if label_values:  # a Grafana variable's query, not PromQL: its first argument is
        expr = label_values.group(1)
    bare = _GROUPING.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", _STRINGS.sub('""', expr))))
    found = set()
    for match in _IDENTIFIER.finditer(bare):
        word = match.group()
        end = match.end()
        if bare[end:end + 1].isalnum() or bare[end:end + 1] == "_":
            continue  # a prefix the negative look-ahead cut short
        if word.lower() not in _KEYWORDS and not re.fullmatch(r"\d.*", word):
            found.add(word)
    return found

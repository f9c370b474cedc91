"""A configuration means the same whatever PyYAML release is installed.

PyYAML 6.0.4 turned the order of `<<: [*a, *b]` around (yaml/pyyaml#953): with the library's
own merge, a check's interval silently changed after an upgrade. probe now merges by itself, as
YAML's merge type says. These tests run the installed probe under each PyYAML release named
below (put first on the module path) and compare what `probe validate --print` makes of a
file that leans on everything YAML 1.1 decides for us: merge keys, booleans written yes/no/on/off,
timestamps and numbers with underscores.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.proc import PROBE, REPO

# The release before the change, and the one that made it. Add a release here to try it.
RELEASES = ("6.0.3", "6.0.4")

CONFIG = """\
x-web: &web
  interval: 30s
  failure_threshold: 3
  ticket: {priority: high}
x-fast: &fast {interval: 5s, retry_interval: 1s, timeout: 1s}
agent: {name: yaml-test, state_dir: ./state, max_concurrency: 1_000}
defaults: {ticket: {route: local}}
ticketing:
  routes:
    local: {backend: local}
    desk: {backend: webhook, url: "http://127.0.0.1:1/hook", tls_verify: no}
maintenance:
  - checks: [shop]
    start: 2026-12-01T02:00:00Z
    end: 2026-12-01 04:00:00+01:00
checks:
  - &shop
    name: shop
    <<: *web
    interval: 10s
    http: {url: "http://127.0.0.1:1/", follow_redirects: off}
  - <<: [*fast, *web]
    name: cart
    http: {url: "http://127.0.0.1:2/"}
  - <<: [*web, *fast]
    name: basket
    http: {url: "http://127.0.0.1:3/"}
  - <<: *shop
    name: shop-copy
"""


def pyyaml(release: str) -> Path:
    """That PyYAML release alone in a folder of its own, installed once (cached in .cache/)."""
    where = REPO / ".cache" / f"pyyaml-{release}"
    if not (where / "yaml" / "__init__.py").exists():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--target", str(where), f"pyyaml=={release}"],
            capture_output=True, text=True, timeout=300, check=False)
        if done.returncode:
            pytest.fail(f"cannot install PyYAML {release}: {done.stderr}")
    return where


def run(release: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pyyaml(release))}
    return subprocess.run([*PROBE, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=env, check=False)


@pytest.fixture(scope="module")
def printed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    where = tmp_path_factory.mktemp("yaml")
    (where / "probe.yaml").write_text(CONFIG)
    out = {}
    for release in RELEASES:
        version = run(release, "--version", cwd=where)
        assert f"  pyyaml        {release}" in version.stdout.splitlines(), version.stdout
        done = run(release, "validate", "--print", "--config", "probe.yaml", cwd=where)
        assert done.returncode == 0, done.stderr
        out[release] = done.stdout
    return out


def checks(text: str) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(text)
    return {c["name"]: c for c in data["checks"]}


@pytest.mark.parametrize("release", RELEASES)
def test_the_first_map_merged_wins_and_the_checks_own_keys_win_over_both(
    printed: dict[str, str], release: str
) -> None:
    got = checks(printed[release])
    intervals = {name: check["interval"] for name, check in got.items()}
    assert intervals == {"shop": "10s", "cart": "5s", "basket": "30s", "shop-copy": "10s"}
    assert got["cart"]["retry_interval"] == "1s"
    assert got["basket"]["retry_interval"] == "1s"
    assert got["cart"]["failure_threshold"] == got["basket"]["failure_threshold"] == 3


@pytest.mark.parametrize("release", RELEASES)
def test_yaml_1_1_booleans_timestamps_and_numbers_keep_their_meaning(
    printed: dict[str, str], release: str
) -> None:
    data = yaml.safe_load(printed[release])
    assert data["ticketing"]["routes"]["desk"]["tls_verify"] is False
    assert checks(printed[release])["shop"]["http"]["follow_redirects"] is False
    assert data["agent"]["max_concurrency"] == 1000
    (window,) = data["maintenance"]
    assert moment(window["start"]) == dt.datetime(2026, 12, 1, 2, tzinfo=dt.UTC)
    assert moment(window["end"]) == dt.datetime(2026, 12, 1, 3, tzinfo=dt.UTC)  # 04:00 at +01


def moment(value: object) -> dt.datetime:
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return when.astimezone(dt.UTC)


def test_every_pyyaml_release_reads_the_file_the_same_way(printed: dict[str, str]) -> None:
    first, *others = RELEASES
    for release in others:
        assert printed[release] == printed[first], release

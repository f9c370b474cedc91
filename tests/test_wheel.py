"""The product is the wheel people install, not this checkout: every module of the source tree is
in it, the suite runs against it, and `probe --version` and `probe_build_info` say what it is
built from."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker

import checks
import probe
from tests.harness.ports import free_port
from tests.harness.proc import PROBE, REPO
from tests.harness.wait import until_blocking

DISTRIBUTION = "probe-ticketing"


def installed_files() -> set[str]:
    files = metadata.files(DISTRIBUTION) or []
    return {str(f) for f in files if str(f).split("/")[0] in ("probe", "checks")
            and "__pycache__" not in str(f)}


def source_files() -> set[str]:
    found = set()
    for package in ("probe", "checks"):
        for path in (REPO / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                found.add(str(path.relative_to(REPO)))
    return found


def test_every_file_of_probe_and_checks_in_the_source_tree_is_in_the_installed_wheel() -> None:
    # 0.1.0's wheel had no probe/tickets/: `probe run` died at start on every install.
    assert source_files() - installed_files() == set()
    assert {"probe/tickets/outbox.py", "probe/helpdesks/http.py", "probe/py.typed",
            "checks/py.typed"} <= installed_files()


def test_the_installed_wheel_holds_nothing_the_source_tree_does_not() -> None:
    # a file deleted from the tree but left in an old build directory would ship otherwise
    assert installed_files() - source_files() == set()


def test_the_suite_imports_probe_from_the_installed_wheel_not_the_checkout() -> None:
    for package in (probe, checks):
        where = Path(package.__file__ or "").resolve()
        assert not where.is_relative_to(REPO / package.__name__), where
        assert "site-packages" in where.parts
    assert metadata.version(DISTRIBUTION) == probe.__version__ == "0.2.0"


def test_probe_version_names_python_openssl_and_the_libraries_that_talk_to_peers(
    tmp_path: Path,
) -> None:
    done = subprocess.run([*PROBE, "--version"], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "probe 0.2.0"
    shown = dict(line.split(None, 1) for line in lines[1:])
    assert shown["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert shown["openssl"] == ssl.OPENSSL_VERSION.removeprefix("OpenSSL ")
    for library in ("uvloop", "aiohttp", "aiosmtplib", "cryptography", "pyyaml"):
        assert shown[library] == metadata.version(library), library


def test_the_locked_versions_are_the_ones_installed() -> None:
    # scripts/test installs requirements/test.lock; a stray upgrade would show here
    lock = (REPO / "requirements" / "test.lock").read_text()
    pinned = re.findall(r"^([A-Za-z0-9_.-]+)==([^ ;\\\n]+)(?: ; ([^\\\n]+))?", lock, re.MULTILINE)
    assert pinned, "no pins in requirements/test.lock"
    for name, version, marker in pinned:
        if marker and not Marker(marker).evaluate():  # another platform's (colorama, tzdata)
            continue
        assert metadata.version(name) == version, name


def test_pip_install_of_the_checkout_runs_the_daemon_from_another_directory(
    tmp_path: Path,
) -> None:
    """What a user who installs probe into an environment of their own gets: `pip install .`
    (pyproject's ranges, the build's own isolated environment), then `probe run` somewhere else
    opens a ticket for a port that does not answer and resolves it when the port does."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, str(REPO)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listen, target = free_port(), free_port()
    (elsewhere / "probe.yaml").write_text(f"""
agent: {{name: fresh, state_dir: ./state, listen: "127.0.0.1:{listen}"}}
defaults: {{interval: 300ms, retry_interval: 200ms, timeout: 200ms, failure_threshold: 2}}
ticketing: {{routes: {{local: {{backend: local}}}}}}
checks:
  - name: port
    tcp: {{host: 127.0.0.1, port: {target}}}
""")
    probe_command = str(venv / "bin" / "probe")
    log = elsewhere / "probe.log"

    def tickets() -> str:
        return subprocess.run([probe_command, "tickets", "--config", "probe.yaml"],
                              cwd=elsewhere, capture_output=True, text=True, timeout=30,
                              check=True).stdout

    def ready() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/-/ready", timeout=5) as answer:
            text: str = answer.read().decode()
        return text

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/metrics", timeout=5) as answer:
            text: str = answer.read().decode()
        return text

    with log.open("wb") as out, subprocess.Popen(
            [probe_command, "run", "--config", "probe.yaml"], cwd=elsewhere, stdout=out,
            stderr=subprocess.STDOUT) as daemon:
        try:
            # Ready: its state database is made. A `probe tickets` started at the same instant
            # as a new daemon can meet the database half made (exit 2, seen under load).
            until_blocking("the daemon", lambda: "Ready" in ready(), 60,
                           context=log.read_text, tolerate=(OSError,))
            until_blocking("the ticket", lambda: "[probe] port DOWN" in tickets(), 30,
                           context=log.read_text, tolerate=(OSError,))
            assert 'probe_success{check="port",kind="tcp",service=""} 0.0' in metrics()
            with socket.create_server(("127.0.0.1", target)):
                until_blocking("the resolve", lambda: " resolved " in tickets(), 30,
                               context=log.read_text, tolerate=(OSError,))
                (ticket,) = tickets().splitlines()
            assert ticket.split()[:4] == ["#1", "resolved", "urgent", "-"], ticket
            assert re.search(r'^probe_build_info\{.*version="0\.2\.0"', metrics(), re.MULTILINE)
        finally:
            daemon.terminate()
            daemon.wait(10)
    assert daemon.returncode == 0, log.read_text()

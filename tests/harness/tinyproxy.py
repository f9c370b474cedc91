"""Debian's tinyproxy (package tinyproxy-bin) on loopback: a real HTTP proxy, with CONNECT for
https://, to send probe's helpdesk requests through; `log()` is what it says it forwarded.
`connect_ports` limits CONNECT to those ports (a proxy that refuses the others with a 403),
`credentials` ("user:password") makes it ask for Basic proxy authentication (407 without).

Missing, the tests skip, unless PROBE_REQUIRE_PROXY is set (CI sets it): then they fail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness.ports import free_port
from tests.harness.proc import terminate


def binary() -> str:
    path = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")
    if path is not None:
        return path
    why = "tinyproxy is not installed (Debian package tinyproxy-bin)"
    if os.environ.get("PROBE_REQUIRE_PROXY"):
        pytest.fail(f"{why}, and PROBE_REQUIRE_PROXY is set")
    pytest.skip(f"{why}; set PROBE_REQUIRE_PROXY=1 to make this a failure")


class Tinyproxy:
    def __init__(self, *, connect_ports: tuple[int, ...] = (),
                 credentials: str | None = None) -> None:
        # Its own directory under /tmp: as root it runs as `nobody`, who must reach its log
        # (pytest's directories are root's alone).
        self.directory = Path(tempfile.mkdtemp(prefix="probe-tinyproxy-"))
        self.connect_ports = connect_ports
        self.credentials = credentials
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        self.directory.chmod(0o777)
        for _attempt in range(3):
            self.port = free_port()
            config = self.directory / "tinyproxy.conf"
            lines = [f"Port {self.port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 30",
                     f"LogFile \"{self.log_file}\"", "LogLevel Info", "MaxClients 20",
                     *(f"ConnectPort {port}" for port in self.connect_ports)]
            if os.geteuid() == 0:
                lines += ["User nobody", "Group nogroup"]
            if self.credentials is not None:
                user, _, password = self.credentials.partition(":")
                lines.append(f"BasicAuth {user} {password}")
            config.write_text("\n".join(lines) + "\n")
            self.proc = subprocess.Popen([binary(), "-d", "-c", str(config)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            if self._listening():
                return self
            terminate(self.proc)
        raise AssertionError(f"tinyproxy did not start:\n{self.log()}")

    @property
    def log_file(self) -> Path:
        return self.directory / "tinyproxy.log"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _listening(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.directory, ignore_errors=True)

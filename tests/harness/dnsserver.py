"""A real DNS server for the tests: dnsmasq on 127.0.0.1, serving the zone probe.test.

dnsmasq (Debian package dnsmasq-base) runs once per test session on a free high port. It has
no upstream server and answers only for probe.test from its command line: a name under the zone
that it does not know is NXDOMAIN, and a name outside it is REFUSED, never forwarded.

tests/conftest.py registers this module as a plugin: a test asks for it by the name
`dns_server`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.ports import free_port

ZONE = "probe.test"
TTL = 300
WWW_V4 = "203.0.113.10"
WWW_V6 = "2001:db8::10"
MULTI_V4 = ("203.0.113.10", "203.0.113.11")
SPF = "v=spf1 -all"
BIG_TXT = ("x" * 200,) * 4  # 800 bytes: more than fits in a 512-byte UDP answer

RECORDS = [
    f"--host-record=www.{ZONE},{WWW_V4},{WWW_V6}",
    *(f"--host-record=multi.{ZONE},{address}" for address in MULTI_V4),
    f"--cname=alias.{ZONE},www.{ZONE}",
    f"--mx-host={ZONE},mail.{ZONE},10",
    f"--host-record=mail.{ZONE},203.0.113.25",
    # No shell: dnsmasq would keep quotes as part of the text. Commas separate the strings.
    f"--txt-record={ZONE},{SPF}",
    f"--txt-record=split.{ZONE},hello ,world",
    f"--txt-record=big.{ZONE},{','.join(BIG_TXT)}",
]


@dataclass(frozen=True, slots=True)
class DnsServer:
    host: str
    port: int
    log: Path

    @property
    def address(self) -> str:
        """As a dns check's `server` is written."""
        return f"{self.host}:{self.port}"


def _command(dnsmasq: str, port: int) -> list[str]:
    return [
        dnsmasq,
        "--keep-in-foreground",
        "--conf-file=/dev/null",  # not the system's /etc/dnsmasq.conf
        "--no-resolv",  # no upstream servers: nothing is ever forwarded
        "--no-hosts",
        "--pid-file=",
        "--log-facility=-",
        "--log-queries",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        f"--local=/{ZONE}/",
        f"--local-ttl={TTL}",
        *(["--user=root"] if os.geteuid() == 0 else []),  # root would drop to nobody otherwise
        *RECORDS,
    ]


def _wait_until_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="session", name="dns_server")
def dns_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    dnsmasq = shutil.which("dnsmasq", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if dnsmasq is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base): no DNS server to test")
    log = tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log"
    for _attempt in range(3):  # another process may take the port before dnsmasq binds it
        port = free_port(udp=True)
        with log.open("wb") as output:
            process = subprocess.Popen(
                _command(dnsmasq, port), stdout=output, stderr=subprocess.STDOUT
            )
        if _wait_until_listening(process, port):
            break
        process.kill()
        process.wait()
    else:
        pytest.fail(f"dnsmasq did not start:\n{log.read_text()}")
    try:
        yield DnsServer("127.0.0.1", port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

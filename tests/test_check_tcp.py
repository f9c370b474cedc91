"""The tcp check against real servers on 127.0.0.1: open and closed ports, banners, requests and
answers, silence, and TLS on top."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from checks.base import Result
from checks.tcp import PHASES, TcpSpec, run
from tests.harness.certs import CertFactory
from tests.harness.ports import closed_port
from tests.harness.tlsserver import answer, greet, hang_up, serve

SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n"
HTTP_400 = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: 150\r\nConnection: close\r\n\r\n<html><head><title>400</title></head>"
)


async def check(port: int, timeout: float = 2, **spec: Any) -> Result:
    spec.setdefault("host", "127.0.0.1")
    result = await run(TcpSpec(port=port, **spec), timeout=timeout)
    assert set(result.phases) == set(PHASES)
    return result


async def test_it_is_up_when_the_port_accepts_a_connection() -> None:
    async with serve() as port:
        result = await check(port)
    assert result.state == "up", result.reason
    assert result.evidence["address"] == "127.0.0.1"
    assert result.evidence["port"] == port
    assert "banner" not in result.evidence
    assert result.phases["connect"] > 0
    assert result.phases["tls"] == result.phases["exchange"] == 0


async def test_it_reports_connection_refused() -> None:
    result = await check(closed_port())
    assert (result.state, result.reason) == ("down", "connection refused")
    assert result.evidence["address"] == "127.0.0.1"


async def test_it_reports_a_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    # /etc/resolv.conf points at a resolver off this host, so a real lookup of a .invalid name
    # would leave the machine. Stand in for the system resolver, answering what RFC 6761 says a
    # resolver answers for .invalid; every other name still goes to the real one.
    real = socket.getaddrinfo

    def nxdomain_for_invalid(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain_for_invalid)
    result = await check(22, host="nothing.invalid")
    assert (result.state, result.reason) == ("down", "name does not resolve")
    assert result.phases["connect"] == 0


async def test_it_is_unknown_when_an_address_literal_is_of_the_other_family() -> None:
    result = await check(22, host="127.0.0.1", ip_family="ipv6")
    assert result.state == "unknown"
    assert "not an ipv6 address" in result.reason


async def test_it_is_up_when_the_banner_matches() -> None:
    async with serve(greet(SSH_BANNER)) as port:
        result = await check(port, expect="^SSH-2.0-")
    assert result.state == "up", result.reason
    assert result.evidence["banner"] == SSH_BANNER.decode()
    assert result.phases["exchange"] > 0


async def test_it_shows_what_it_got_when_the_banner_is_wrong() -> None:
    async with serve(answer(b"\r\n", HTTP_400)) as port:
        result = await check(port, send="\r\n", expect="^SSH-2.0-")
    assert result.state == "down"
    assert result.reason == (
        "expected /^SSH-2.0-/ but got 'HTTP/1.1 400 Bad Request\\r\\nServer: nginx\\r\\n"
        "Content-Type: text/html\\r\\nContent-Length...'"
    )
    assert result.evidence["banner"] == HTTP_400.decode()


async def test_it_sends_the_request_and_matches_the_answer() -> None:
    async with serve(answer(b"PING\n", b"+PONG\r\n")) as port:
        result = await check(port, send="PING\n", expect=r"^\+PONG")
    assert result.state == "up", result.reason
    assert result.evidence["banner"] == "+PONG\r\n"


async def test_it_says_so_when_the_peer_hangs_up_without_a_word() -> None:
    async with serve(hang_up) as port:
        result = await check(port, expect="^220 ")
    assert (result.state, result.reason) == ("down", "expected /^220 / but got nothing")


async def test_it_times_out_waiting_for_the_expected_answer() -> None:
    async with serve() as port:
        started = time.monotonic()
        result = await check(port, timeout=0.5, expect="^SSH-2.0-")
    assert (result.state, result.reason) == ("down", "timed out after 500ms during exchange")
    assert time.monotonic() - started < 5


async def test_it_is_down_when_slower_than_max_latency() -> None:
    async with serve(greet(SSH_BANNER, delay=0.3)) as port:
        result = await check(port, expect="^SSH-2.0-", max_latency="100ms")
    assert result.state == "down"
    assert result.reason.startswith("took ")
    assert result.reason.endswith(" (max 100ms)")


async def test_it_speaks_tls_to_a_server_signed_by_the_ca_file(certs: CertFactory) -> None:
    leaf = certs.issue()
    async with serve(greet(SSH_BANNER), tls=leaf.server_context()) as port:
        result = await check(
            port, tls=True, ca_file=certs.ca.cert_file, server_name="localhost", expect="^SSH-"
        )
    assert result.state == "up", result.reason
    assert result.evidence["tls_version"] in ("TLS 1.2", "TLS 1.3")
    assert result.evidence["banner"] == SSH_BANNER.decode()
    assert result.phases["tls"] > 0


async def test_it_verifies_an_address_against_the_certificate(certs: CertFactory) -> None:
    leaf = certs.issue(("localhost", "127.0.0.1"))
    async with serve(tls=leaf.server_context()) as port:
        result = await check(port, tls=True, ca_file=certs.ca.cert_file)
    assert result.state == "up", result.reason


async def test_it_rejects_a_certificate_it_cannot_verify(certs: CertFactory) -> None:
    leaf = certs.issue(self_signed=True)
    async with serve(tls=leaf.server_context()) as port:
        result = await check(port, tls=True, ca_file=certs.ca.cert_file, server_name="localhost")
    assert result.state == "down"
    assert result.reason == "TLS certificate rejected: self-signed certificate"


async def test_it_rejects_a_certificate_for_another_host(certs: CertFactory) -> None:
    leaf = certs.issue(("shop.example.com",))
    async with serve(tls=leaf.server_context()) as port:
        result = await check(port, tls=True, ca_file=certs.ca.cert_file, server_name="localhost")
    assert result.state == "down"
    assert result.reason.startswith("TLS certificate rejected: hostname mismatch")


async def test_it_accepts_any_certificate_with_tls_verify_off(certs: CertFactory) -> None:
    leaf = certs.issue(("shop.example.com",), self_signed=True)
    async with serve(tls=leaf.server_context()) as port:
        result = await check(port, tls=True, tls_verify=False)
    assert result.state == "up", result.reason


async def test_it_reports_a_failed_handshake_with_a_server_that_speaks_no_tls() -> None:
    async with serve(greet(SSH_BANNER)) as port:
        result = await check(port, tls=True, tls_verify=False)
    assert result.state == "down"
    assert result.reason.startswith("TLS handshake failed: ")


async def test_it_is_unknown_when_the_ca_file_is_no_certificate(tmp_path: Any) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    async with serve() as port:
        result = await check(port, tls=True, ca_file=bogus)
    assert result.state == "unknown"
    assert result.reason.startswith(f"cannot load ca_file {bogus}: ")

"""The tls check against real TLS servers on 127.0.0.1, one per kind of certificate trouble."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from checks.base import Result
from checks.tls import PHASES, TlsSpec, run
from tests.harness.certs import CertFactory, Issued
from tests.harness.ports import closed_port
from tests.harness.tlsserver import greet, serve

NOW = dt.datetime.now(dt.UTC)


async def check(port: int, timeout: float = 2, **spec: Any) -> Result:
    spec.setdefault("host", "127.0.0.1")
    result = await run(TlsSpec(port=port, **spec), timeout=timeout)
    assert set(result.phases) == set(PHASES)
    return result


async def check_served(leaf: Issued, ca: Path | None, **spec: Any) -> Result:
    """Serve `leaf` and check it as localhost, trusting `ca` (or the system's CAs if None)."""
    spec.setdefault("server_name", "localhost")
    async with serve(tls=leaf.server_context()) as port:
        return await check(port, ca_file=ca, **spec)


async def test_it_is_up_with_the_facts_of_a_valid_certificate(certs: CertFactory) -> None:
    leaf = certs.issue(("localhost", "127.0.0.1"), days=90)
    result = await check_served(leaf, certs.ca.cert_file)
    assert result.state == "up", result.reason
    evidence = result.evidence
    assert evidence["subject"] == "CN=localhost"
    assert evidence["issuer"] == "CN=probe test CA"
    assert evidence["sans"] == ["localhost", "127.0.0.1"]
    assert evidence["not_after"] == leaf.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert evidence["not_before"] == leaf.cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 89 < evidence["days_left"] <= 90
    assert int(evidence["serial"].replace(":", ""), 16) == leaf.cert.serial_number
    assert evidence["sha256_fingerprint"] == leaf.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert evidence["chain_length"] == 1
    assert evidence["tls_version"] in ("TLS 1.2", "TLS 1.3")
    assert evidence["cipher"]
    assert evidence["address"] == "127.0.0.1"
    assert result.phases["tls"] > 0
    json.dumps(result.as_dict())  # a ticket and the store take the evidence as it is


async def test_it_checks_an_address_against_the_certificate_when_given_no_name(
    certs: CertFactory,
) -> None:
    leaf = certs.issue(("localhost", "127.0.0.1"))
    result = await check_served(leaf, certs.ca.cert_file, server_name=None)
    assert result.state == "up", result.reason


async def test_it_sends_the_server_name_as_sni(certs: CertFactory) -> None:
    seen: list[str | None] = []

    def note_sni(_tls: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        seen.append(name)

    context = certs.issue(("shop.example.com",)).server_context()
    context.sni_callback = note_sni
    async with serve(tls=context) as port:
        result = await check(port, server_name="shop.example.com", ca_file=certs.ca.cert_file)
    assert result.state == "up", result.reason
    assert seen == ["shop.example.com"]


async def test_it_reports_an_expired_certificate(certs: CertFactory) -> None:
    leaf = certs.issue(not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=3))
    result = await check_served(leaf, certs.ca.cert_file)
    date = leaf.cert.not_valid_after_utc.date()
    assert (result.state, result.reason) == ("down", f"certificate expired 3 days ago ({date})")
    assert result.evidence["days_left"] < -2.9
    assert result.evidence["subject"] == "CN=localhost"


async def test_it_still_reports_expiry_with_verify_off(certs: CertFactory) -> None:
    leaf = certs.issue(
        self_signed=True,
        not_before=NOW - dt.timedelta(days=30),
        not_after=NOW - dt.timedelta(days=1, hours=1),
    )
    result = await check_served(leaf, None, verify=False)
    date = leaf.cert.not_valid_after_utc.date()
    assert (result.state, result.reason) == ("down", f"certificate expired 1 day ago ({date})")


async def test_it_reports_a_certificate_not_valid_yet(certs: CertFactory) -> None:
    leaf = certs.issue(not_before=NOW + dt.timedelta(days=10))
    result = await check_served(leaf, certs.ca.cert_file)
    date = leaf.cert.not_valid_before_utc.date()
    assert (result.state, result.reason) == ("down", f"certificate is not valid until {date}")


async def test_it_warns_of_a_certificate_about_to_expire(certs: CertFactory) -> None:
    leaf = certs.issue(days=3)
    result = await check_served(leaf, certs.ca.cert_file, min_days_left=14)
    date = leaf.cert.not_valid_after_utc.date()
    assert (result.state, result.reason) == ("down", f"certificate expires in 3 days ({date})")


async def test_it_counts_hours_in_the_last_day(certs: CertFactory) -> None:
    leaf = certs.issue(not_after=NOW + dt.timedelta(hours=5, minutes=10))
    result = await check_served(leaf, certs.ca.cert_file)
    date = leaf.cert.not_valid_after_utc.date()
    assert (result.state, result.reason) == ("down", f"certificate expires in 5 hours ({date})")


async def test_it_is_up_when_expiry_is_further_than_min_days_left(certs: CertFactory) -> None:
    result = await check_served(certs.issue(days=3), certs.ca.cert_file, min_days_left=2)
    assert result.state == "up", result.reason


async def test_it_reports_a_self_signed_certificate(certs: CertFactory) -> None:
    leaf = certs.issue(self_signed=True)
    result = await check_served(leaf, certs.ca.cert_file)
    assert (result.state, result.reason) == (
        "down", "TLS certificate rejected: self-signed certificate")
    assert result.evidence["issuer"] == result.evidence["subject"] == "CN=localhost"


async def test_it_accepts_a_self_signed_certificate_with_verify_off(certs: CertFactory) -> None:
    result = await check_served(certs.issue(self_signed=True), None, verify=False)
    assert result.state == "up", result.reason


async def test_it_reports_a_certificate_for_another_host(certs: CertFactory) -> None:
    leaf = certs.issue(("shop.example.com", "www.shop.example.com"))
    result = await check_served(leaf, certs.ca.cert_file)
    assert result.state == "down"
    assert result.reason == (
        "certificate is for shop.example.com, www.shop.example.com, not localhost"
    )


async def test_it_matches_a_wildcard_certificate(certs: CertFactory) -> None:
    leaf = certs.issue(("*.example.com",))
    up = await check_served(leaf, certs.ca.cert_file, server_name="shop.example.com")
    down = await check_served(leaf, certs.ca.cert_file, server_name="a.shop.example.com")
    assert up.state == "up", up.reason
    assert down.reason == "certificate is for *.example.com, not a.shop.example.com"


async def test_it_skips_the_name_check_with_verify_hostname_off(certs: CertFactory) -> None:
    leaf = certs.issue(("shop.example.com",))
    result = await check_served(leaf, certs.ca.cert_file, verify_hostname=False)
    assert result.state == "up", result.reason


async def test_it_reports_a_certificate_from_an_unknown_ca(certs: CertFactory) -> None:
    rogue = certs.make_ca("probe rogue CA")
    result = await check_served(certs.issue(issuer=rogue), certs.ca.cert_file)
    assert (result.state, result.reason) == (
        "down",
        "TLS certificate rejected: issued by an unknown CA (CN=probe rogue CA)",
    )
    assert result.evidence["issuer"] == "CN=probe rogue CA"


async def test_it_verifies_against_the_system_cas_without_a_ca_file(certs: CertFactory) -> None:
    async with serve(tls=certs.issue().server_context()) as port:
        result = await check(port, server_name="localhost")
    assert (result.state, result.reason) == (
        "down",
        "TLS certificate rejected: issued by an unknown CA (CN=probe test CA)",
    )


async def test_it_reports_each_key_type_and_size(certs: CertFactory) -> None:
    rsa = await check_served(certs.issue(key_type="rsa"), certs.ca.cert_file)
    ecdsa = await check_served(certs.issue(key_type="ecdsa"), certs.ca.cert_file)
    assert (rsa.state, rsa.evidence["key_type"], rsa.evidence["key_size"]) == ("up", "RSA", 2048)
    assert (ecdsa.state, ecdsa.evidence["key_type"], ecdsa.evidence["key_size"]) == (
        "up",
        "ECDSA",
        256,
    )


async def test_it_follows_a_chain_through_an_intermediate(certs: CertFactory) -> None:
    intermediate = certs.make_intermediate("probe intermediate CA")
    leaf = certs.issue(issuer=intermediate)
    async with serve(tls=leaf.server_context(chain=(intermediate,))) as port:
        result = await check(port, server_name="localhost", ca_file=certs.ca.cert_file)
    assert result.state == "up", result.reason
    # The chain as sent comes from a private call on Python 3.11 and 3.12 (public from 3.13,
    # checks.tls._peer_chain): a Python release without it would report a chain of one here.
    assert result.evidence["chain_length"] == 2
    assert result.evidence["issuer"] == "CN=probe intermediate CA"


async def test_it_reports_a_missing_intermediate_as_an_unknown_ca(certs: CertFactory) -> None:
    intermediate = certs.make_intermediate("probe intermediate CA")
    result = await check_served(certs.issue(issuer=intermediate), certs.ca.cert_file)
    assert (result.state, result.reason) == (
        "down",
        "TLS certificate rejected: issued by an unknown CA (CN=probe intermediate CA)",
    )


async def test_it_reports_connection_refused() -> None:
    result = await check(closed_port())
    assert (result.state, result.reason) == ("down", "connection refused")
    assert result.phases["tls"] == 0


async def test_it_reports_a_failed_handshake_with_a_server_that_speaks_no_tls() -> None:
    async with serve(greet(b"SSH-2.0-OpenSSH_9.6\r\n")) as port:
        result = await check(port)
    assert result.state == "down"
    assert result.reason.startswith("TLS handshake failed: ")
    assert "subject" not in result.evidence


async def test_it_times_out_on_a_server_that_never_speaks() -> None:
    async with serve() as port:
        started = time.monotonic()
        result = await check(port, timeout=0.5)
    assert (result.state, result.reason) == ("down", "timed out after 500ms during tls")
    assert time.monotonic() - started < 5


async def test_it_is_down_when_slower_than_max_latency(certs: CertFactory) -> None:
    context = certs.issue().server_context()
    # A server slow to answer the handshake. The sleep stalls the one event loop the test
    # shares with the check, which only makes the server slower still.
    context.sni_callback = lambda *_: time.sleep(0.3)
    async with serve(tls=context) as port:
        result = await check(
            port, server_name="localhost", ca_file=certs.ca.cert_file, max_latency="100ms"
        )
    assert result.state == "down"
    assert result.reason.startswith("took ")
    assert result.reason.endswith(" (max 100ms)")


async def test_a_chain_is_judged_again_as_soon_as_the_server_changes_it(
    certs: CertFactory,
) -> None:
    # A server that switches certificates between two checks: each check judges what it got,
    # with one connection while the chain is accepted.
    trusted = certs.issue(("localhost",)).server_context()
    self_signed = certs.issue(("localhost",), self_signed=True).server_context()
    serving = {"now": trusted}
    handshakes: list[str | None] = []

    def pick(tls: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        handshakes.append(name)
        tls.context = serving["now"]

    front = certs.issue(("localhost",)).server_context()
    front.sni_callback = pick
    states = []
    async with serve(tls=front) as port:
        for now in (trusted, trusted, trusted, self_signed, self_signed, trusted, trusted):
            serving["now"] = now
            before = len(handshakes)
            result = await check(port, server_name="localhost", ca_file=certs.ca.cert_file)
            states.append((result.state, result.reason, len(handshakes) - before))
    rejected = "TLS certificate rejected: self-signed certificate"
    assert [(state, reason) for state, reason, _ in states] == [
        ("up", ""), ("up", ""), ("up", ""),
        ("down", rejected), ("down", rejected),
        ("up", ""), ("up", ""),
    ]
    assert [n for *_, n in states][:3] == [1, 1, 1]  # an unchanged, accepted chain: one each
    assert states[-1][2] == 1

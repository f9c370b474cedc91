"""Targets that misbehave on purpose, against every check kind: malformed DNS answers, HTTP
responses that lie, stall or never end, certificates no CA should issue, TLS peers that are
not, and banners that never stop. Each gives a failed Result with a clear reason (or, where
it is healthy enough, an honest one), reads a bounded amount, and returns within its timeout;
none may crash.

The peers are raw asyncio servers on 127.0.0.1, written here. ICMP replies from another host
are already covered by tests/test_check_icmp.py (test_it_does_not_count_replies_from_another_host).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checks import dns as dns_check
from checks import http as http_check
from checks import tcp as tcp_check
from checks import tls as tls_check
from checks.base import Result
from checks.net import CheckFailed
from tests.harness import hostile_certs
from tests.harness.certs import CertFactory, Issued
from tests.harness.httpserver import serve_raw
from tests.harness.tlsserver import serve

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MIB = 1024 * 1024
BOUND = 5.0  # seconds: a generous ceiling on any run below, whose timeouts are 1 or 2 seconds


def well_formed(result: Result, phases: tuple[str, ...]) -> Result:
    """What every result owes its reader, whatever the target did."""
    assert set(result.phases) == set(phases)
    assert result.reason == "" if result.ok else result.reason
    assert "\n" not in result.reason
    assert result.duration < BOUND
    json.dumps(result.as_dict())  # a ticket and the store take the evidence as it is
    return result


# --- HTTP ----------------------------------------------------------------------------------


def responding(
    *parts: bytes, every: float = 0.0, then_forever: bytes = b"", seen: list[bytes] | None = None
) -> Handler:
    """Reads the request head, sends `parts` (pausing `every` seconds before each), then sends
    `then_forever` again and again until the client hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            head = await reader.readuntil(b"\r\n\r\n")
            if seen is not None:
                seen.append(head)
            for part in parts:
                await asyncio.sleep(every)
                writer.write(part)
                await writer.drain()
            while then_forever:
                writer.write(then_forever)
                await writer.drain()

    return handle


async def http(handler: Handler, timeout: float = 2.0, **spec: Any) -> Result:
    async with serve_raw(handler) as port:
        spec.setdefault("url", f"http://127.0.0.1:{port}/")
        started = time.perf_counter()
        result = await http_check.run(http_check.HttpSpec(**spec), timeout=timeout)
        assert time.perf_counter() - started < BOUND
    return well_formed(result, http_check.PHASES)


def redirect(location: bytes) -> bytes:
    return b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/pl",
         "the server closed the connection in the middle of the headers"),
        (b"HTTP/1.1 999 Whatever\r\n\r\n", "malformed HTTP response: 'HTTP/1.1 999 Whatever'"),
        (b"<html>hello from 1991</html>",
         "malformed HTTP response: '<html>hello from 1991</html>'"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
         "malformed HTTP response: header line 'no colon here'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nabc",
         "malformed HTTP response: Content-Length '99999"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\nabc",
         "malformed HTTP response: Content-Length '18446744073709551616'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc",
         "malformed HTTP response: Content-Length '-1'"),
        (CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", "invalid chunked encoding: chunk size 'zz'"),
        (CHUNKED + b"3\r\nabcdef0\r\n\r\n",
         "invalid chunked encoding: a chunk is longer than its size"),
        (CHUNKED + b"10000000000000000\r\nabc",
         "invalid chunked encoding: chunk size '10000000000000000'"),
        (CHUNKED + b"FFFFFFFFFFFFFFFF\r\nabcde",
         "invalid chunked encoding: the body ended in the middle of a chunk"),
        (CHUNKED + b"3\r\nabc",
         "invalid chunked encoding: the body ended in the middle of a chunk"),
        (redirect(b"ftp://127.0.0.1/file"),
         "redirected to 'ftp://127.0.0.1/file', which is not an http(s) URL"),
        (redirect(b"file:///etc/passwd"),
         "redirected to 'file:///etc/passwd', which is not an http(s) URL"),
        (redirect(b"http://[::1"), "redirected to 'http://[::1', which is not a valid URL"),
        (redirect("http://é..example/".encode()),
         "redirected to 'http://Ã©..example/', whose host name is not valid"),
        (redirect(b"http://127.0.0.1:99999/"), "'http://127.0.0.1:99999/' has an invalid port"),
    ],
    ids=["truncated-headers", "status-999", "http-0.9", "header-without-colon",
         "content-length-of-5000-digits", "content-length-2-to-the-64",
         "negative-content-length", "chunk-size-not-hex",
         "chunk-without-crlf", "chunk-size-2-to-the-64", "chunk-size-2-to-the-64-minus-1",
         "chunked-body-cut-short", "redirect-to-ftp", "redirect-to-file", "redirect-to-bad-url",
         "redirect-to-bad-host", "redirect-to-bad-port"],
)
async def test_it_reports_a_malformed_http_response(raw: bytes, reason: str) -> None:
    result = await http(responding(raw))
    assert result.state == "down"
    assert result.reason.startswith(reason), result.reason


@pytest.mark.parametrize(
    ("head", "forever"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"X-Junk: " + b"j" * 1000 + b"\r\n"),  # 1 MiB and more of lines
        (b"HTTP/1.1 200 OK\r\nX-Junk: ", b"j" * 4096),  # one endless line
        (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"),  # interim answers only
    ],
    ids=["many-header-lines", "one-endless-header-line", "endless-interim-responses"],
)
async def test_it_refuses_headers_without_end_after_64_kib(head: bytes, forever: bytes) -> None:
    result = await http(responding(head, then_forever=forever))
    assert (result.state, result.reason) == ("down", "response headers larger than 64 KiB")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ],
    ids=["content-length-100-mib", "content-length-2-to-the-63", "no-content-length"],
)
async def test_it_reads_no_more_than_max_body_bytes_of_an_endless_body(head: bytes) -> None:
    result = await http(responding(head, then_forever=b"x" * 65536), max_body_bytes=1000,
                        body_contains="needle")
    assert result.state == "down"
    assert result.reason == "body does not contain 'needle' (in the first 1000 bytes read)"
    assert result.evidence["body_bytes"] == 1000
    assert result.evidence["body_truncated"] is True


async def test_it_reads_no_more_than_max_body_bytes_of_endless_chunks() -> None:
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    result = await http(responding(CHUNKED, then_forever=chunk), max_body_bytes=1000)
    assert result.state == "up", result.reason
    assert result.evidence["body_bytes"] == 1000
    assert result.evidence["body_truncated"] is True


@pytest.mark.parametrize(
    ("parts", "phase"),
    [
        ([bytes([b]) for b in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], "processing"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", *[b"x"] * 100], "transfer"),
    ],
    ids=["headers-a-byte-at-a-time", "body-a-byte-at-a-time"],
)
async def test_it_stops_a_slowloris_response_at_its_timeout(parts: list[bytes], phase: str) -> None:
    result = await http(responding(*parts, every=0.2), timeout=1.0)
    assert (result.state, result.reason) == ("down", f"timed out after 1s during {phase}")


async def test_a_body_made_to_backtrack_is_judged_in_linear_time() -> None:
    # Python's re tries 2^n ways to split n a's before it sees the "!": this body would hold
    # the event loop, and every other check with it, for longer than the universe has existed.
    body = b"a" * 100_000 + b"!"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    result = await http(responding(head + body), body_regex="^(a|aa)+$")
    assert (result.state, result.reason) == ("down", "body does not match /^(a|aa)+$/")


async def test_it_gives_up_on_a_redirect_loop_after_max_redirects() -> None:
    result = await http(responding(redirect(b"/again")), max_redirects=3)
    assert (result.state, result.reason) == ("down", "too many redirects (3)")


async def test_it_reads_the_chunks_when_content_length_comes_with_chunked_encoding() -> None:
    # RFC 9112 6.3: Transfer-Encoding overrides Content-Length (a smuggler's favourite).
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" \
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    result = await http(responding(raw), body_contains="hello world")
    assert result.state == "up", result.reason
    assert result.evidence["body_bytes"] == 11
    assert "content_length" not in result.evidence


async def test_it_asks_for_identity_and_never_inflates_a_gzip_bomb() -> None:
    bomb = gzip.compress(b"\0" * (64 * MIB))
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    seen: list[bytes] = []
    result = await http(responding(head, bomb, seen=seen), body_contains="boom")
    assert b"\r\nAccept-Encoding: identity\r\n" in seen[0]
    assert result.state == "down"
    assert result.evidence["body_bytes"] == len(bomb) < MIB  # as sent: not inflated
    assert result.evidence["body_truncated"] is False


# --- TLS -----------------------------------------------------------------------------------


async def tls(served: Issued | None, certs: CertFactory, chain: tuple[Issued, ...] = (),
              handler: Handler | None = None, **spec: Any) -> Result:
    """The tls check of a server presenting `served` (and `chain`), trusting the test CA."""
    context = served.server_context(chain) if served else None
    async with serve(handler or _hold_tls, tls=context) as port:
        spec.setdefault("ca_file", certs.ca.cert_file)
        spec.setdefault("server_name", "localhost")
        result = await tls_check.run(
            tls_check.TlsSpec(host="127.0.0.1", port=port, **spec), timeout=2.0
        )
    return well_formed(result, tls_check.PHASES)


async def _hold_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


def unknown_extension(critical: bool) -> tuple[tuple[x509.ExtensionType, bool], ...]:
    oid = ObjectIdentifier("1.3.6.1.4.1.55555.1")
    return ((x509.UnrecognizedExtension(oid, b"\x05\x00"), critical),)


async def test_it_refuses_a_certificate_with_a_critical_unknown_extension(
    certs: CertFactory,
) -> None:
    result = await tls(hostile_certs.leaf(certs, extensions=unknown_extension(True)), certs)
    assert (result.state, result.reason) == (
        "down", "TLS certificate rejected: unhandled critical extension")


async def test_it_accepts_a_certificate_with_a_non_critical_unknown_extension(
    certs: CertFactory,
) -> None:
    result = await tls(hostile_certs.leaf(certs, extensions=unknown_extension(False)), certs)
    assert result.state == "up", result.reason


async def test_it_reports_a_certificate_with_an_empty_san(certs: CertFactory) -> None:
    result = await tls(hostile_certs.leaf(certs, sans=[]), certs)
    assert (result.state, result.reason) == (
        "down", "certificate is for no host name, not localhost")
    assert result.evidence["sans"] == []


async def test_a_san_with_a_nul_byte_never_matches_the_name_before_it(
    certs: CertFactory,
) -> None:
    served = hostile_certs.leaf(certs, sans=[x509.DNSName("localhost\x00.evil.example")])
    result = await tls(served, certs)
    assert result.state == "down"
    assert result.reason.endswith(", not localhost"), result.reason


async def test_a_line_break_in_a_certificate_name_stays_out_of_the_reason(
    certs: CertFactory,
) -> None:
    served = hostile_certs.leaf(certs, sans=[x509.DNSName("evil\nX-Probe-Forged: yes")])
    result = await tls(served, certs)
    assert (result.state, result.reason) == (
        "down", "certificate is for evil\\nX-Probe-Forged: yes, not localhost")
    ca = certs.make_ca("Evil\r\nCA")
    result = await tls(hostile_certs.leaf(certs, issuer=ca), certs)
    assert (result.state, result.reason) == (
        "down", "TLS certificate rejected: issued by an unknown CA (CN=Evil\\r\\nCA)")


async def test_it_shows_a_negative_serial_as_it_is(certs: CertFactory) -> None:
    with pytest.warns(Warning, match="serial number"):  # cryptography frowns, and reads it
        served = hostile_certs.with_negative_serial(certs)
        result = await tls(served, certs)
    # OpenSSL 3.0 takes it, as browsers do; a stricter verifier (Python 3.13's X509_STRICT)
    # may not. Either way the serial is shown as the certificate has it.
    if result.state == "down":
        assert result.reason.startswith("TLS certificate rejected: "), result.reason
    assert result.evidence["serial"] == "FF:10:20:30"


@pytest.mark.parametrize(
    ("make", "reason"),
    [(hostile_certs.with_duplicate_extension, "certificate has the subjectAltName extension twice"),
     (hostile_certs.with_junk_san, "certificate has an extension that cannot be parsed")],
    ids=["duplicate-extension", "junk-san"],
)
def test_a_leaf_with_broken_extensions_is_a_reason_not_a_crash(
    certs: CertFactory, make: Callable[[CertFactory], Issued], reason: str
) -> None:
    # OpenSSL will not serve such a leaf (it refuses to load it), so no peer here can present
    # one; servers on other TLS stacks can. This reads it as the check does after a handshake.
    with pytest.raises(CheckFailed) as caught:
        tls_check._describe((make(certs).cert,))
    assert caught.value.reason == reason


async def test_a_broken_certificate_sent_along_the_chain_is_shown_not_fatal(
    certs: CertFactory,
) -> None:
    served = certs.issue(("localhost", "127.0.0.1"))
    result = await tls(served, certs, (hostile_certs.with_duplicate_extension(certs),))
    assert result.state == "up", result.reason
    assert result.evidence["chain_length"] == 2


async def test_it_reports_a_one_day_certificate_of_the_far_future(certs: CertFactory) -> None:
    start = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    served = hostile_certs.leaf(certs, not_before=start, not_after=start + dt.timedelta(days=1))
    result = await tls(served, certs)
    assert (result.state, result.reason) == ("down", "certificate is not valid until 2100-01-01")


async def test_it_reads_a_4096_bit_rsa_key(certs: CertFactory) -> None:
    result = await tls(hostile_certs.big_rsa_leaf(certs), certs)
    assert result.state == "up", result.reason
    assert (result.evidence["key_type"], result.evidence["key_size"]) == ("RSA", 4096)


async def test_it_follows_a_chain_of_ten_intermediates(certs: CertFactory) -> None:
    intermediates = hostile_certs.chain(certs, 10)
    served = hostile_certs.leaf(certs, issuer=intermediates[0])
    result = await tls(served, certs, tuple(intermediates))
    assert result.state == "up", result.reason
    assert result.evidence["chain_length"] == 11


async def test_it_refuses_a_chain_with_an_expired_intermediate(certs: CertFactory) -> None:
    intermediates = hostile_certs.chain(certs, 3, expired_at=1)
    served = hostile_certs.leaf(certs, issuer=intermediates[0])
    result = await tls(served, certs, tuple(intermediates))
    assert (result.state, result.reason) == (
        "down", "TLS certificate rejected: certificate has expired")


async def _alert(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(5)  # the ClientHello's record header
    writer.write(b"\x15\x03\x03\x00\x02\x02\x28")  # fatal handshake_failure
    await writer.drain()


async def _http_on_tls_port(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(5)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()


@pytest.mark.parametrize(
    ("handler", "reason"),
    [(_alert, "TLS handshake failed: sslv3 alert handshake failure"),
     (_http_on_tls_port, "TLS handshake failed: ")],
    ids=["tls-alert", "http-on-the-tls-port"],
)
async def test_it_reports_a_peer_that_does_not_complete_a_handshake(
    certs: CertFactory, handler: Handler, reason: str
) -> None:
    result = await tls(None, certs, handler=handler)
    assert result.state == "down"
    assert result.reason.startswith(reason), result.reason


@pytest.mark.parametrize(
    "make",
    [hostile_certs.with_negative_serial],
    ids=["negative-serial"],
)
@pytest.mark.filterwarnings("ignore:Parsed a serial number")
async def test_the_http_check_takes_an_odd_certificate_in_its_stride(
    certs: CertFactory, make: Callable[[CertFactory], Issued]
) -> None:
    async with serve(_answer_http, tls=make(certs).server_context()) as port:
        spec = http_check.HttpSpec(url=f"https://127.0.0.1:{port}/", ca_file=certs.ca.cert_file)
        result = well_formed(await http_check.run(spec, timeout=2.0), http_check.PHASES)
    assert result.state in ("up", "down")
    if result.state == "down":
        assert result.reason.startswith("TLS certificate rejected: "), result.reason


async def _answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()


# --- TCP -----------------------------------------------------------------------------------


def banner(*parts: bytes, every: float = 0.0, hang_up: bool = False) -> Handler:
    """Sends `parts` (pausing `every` seconds before each), then hangs up if told to, else
    waits for the client to."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            await asyncio.sleep(every)
            writer.write(part)
            await writer.drain()
        if not hang_up:
            await reader.read()

    return handle


async def tcp(handler: Handler, timeout: float = 2.0, **spec: Any) -> Result:
    async with serve(handler) as port:
        result = await tcp_check.run(
            tcp_check.TcpSpec(host="127.0.0.1", port=port, **spec), timeout=timeout
        )
    return well_formed(result, tcp_check.PHASES)


async def test_it_reads_at_most_64_kib_of_a_10_mib_banner() -> None:
    result = await tcp(banner(b"x" * (10 * MIB)), expect="^SSH-2\\.0-")
    assert result.state == "down"
    assert result.reason == "expected /^SSH-2\\.0-/ but got '" + "x" * 80 + "...'"
    assert len(result.evidence["banner"]) == 200


async def test_it_shows_a_banner_of_invalid_utf8_and_still_matches_what_follows() -> None:
    junk = b"\xff\xfe\xc3(\x80"
    result = await tcp(banner(junk + b"\r\n", hang_up=True), expect="^SSH-")
    assert result.state == "down"
    assert result.reason == "expected /^SSH-/ but got '\ufffd\ufffd\ufffd(\ufffd\\r\\n'"
    result = await tcp(banner(junk + b"\r\nSSH-2.0-x\r\n"), expect="^SSH-")
    assert result.state == "up", result.reason


async def test_a_banner_made_to_backtrack_is_judged_in_linear_time() -> None:
    result = await tcp(banner(b"a" * 30_000 + b"!", hang_up=True), expect="^(a+)+$")
    assert result.state == "down"
    assert result.reason == "expected /^(a+)+$/ but got '" + "a" * 80 + "...'"


async def test_it_stops_a_banner_sent_a_byte_at_a_time_at_its_timeout() -> None:
    result = await tcp(banner(*[b"x"] * 50, every=0.2), timeout=1.0, expect="^SSH-")
    assert (result.state, result.reason) == ("down", "timed out after 1s during exchange")


# --- DNS -----------------------------------------------------------------------------------


class _Replier(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], bytes]) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.reply(data), addr)


@contextlib.asynccontextmanager
async def udp_server(reply: Callable[[bytes], bytes]) -> AsyncIterator[str]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Replier(reply), local_addr=("127.0.0.1", 0)
    )
    try:
        yield "127.0.0.1:{}".format(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


async def dns(server: str, **spec: Any) -> Result:
    spec.setdefault("name", "www.example.test")
    result = await dns_check.run(dns_check.DnsSpec(server=server, **spec), timeout=1.0)
    return well_formed(result, dns_check.PHASES)


def header(query: bytes, *, qid: int | None = None, flags: int = 0x8180, an: int = 0) -> bytes:
    """The header of an answer to `query`: its id (unless `qid`), one question, `an` answers."""
    own = struct.unpack("!H", query[:2])[0]
    return struct.pack("!HHHHHH", own if qid is None else qid, flags, 1, an, 0, 0)


def question(query: bytes) -> bytes:
    return query[12:]  # our query carries its question and nothing else


A_RECORD = b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01"  # IN A 60 127.0.0.1


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (lambda q: q[:5], "malformed DNS answer: shorter than a DNS header"),
        (lambda q: header(q, qid=struct.unpack("!H", q[:2])[0] ^ 1) + question(q),
         "malformed DNS answer: not an answer to our question"),
        (lambda q: header(q) + b"\x05other\x07example\x00\x00\x01\x00\x01",
         "malformed DNS answer: not an answer to our question"),
        (lambda q: header(q, flags=0x0100) + question(q),
         "malformed DNS answer: not an answer to our question"),
        (lambda q: header(q) + b"\xc0\x0c\x00\x01\x00\x01",
         "malformed DNS answer: a DNS compression pointer points forward instead of backward"),
        (lambda q: header(q, an=1) + question(q) + b"\xc0\x0d" + A_RECORD,
         "malformed DNS answer: the label type in DNS name wire format is unknown"),
        (lambda q: header(q, an=1) + question(q) + (b"\x3f" + b"a" * 63) * 5 + b"\x00" + A_RECORD,
         "malformed DNS answer: a DNS name is > 255 octets long"),
        (lambda q: header(q, an=1) + question(q) + b"\x80" + b"a" * 300 + b"\x00" + A_RECORD,
         "malformed DNS answer: the label type in DNS name wire format is unknown"),
        (lambda q: header(q, an=65535) + question(q), "malformed DNS answer"),
        (lambda q: header(q, an=1) + question(q) + b"\xc0\x0c" + A_RECORD[:8] + b"\xff\xff"
         + A_RECORD[10:], "malformed DNS answer"),
        (lambda q: header(q, an=1) + question(q) + b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c"
         b"\x00\x02\xc0\x0c", "malformed DNS answer: the CNAME chain is too long"),
        (lambda q: q[:2] + b"\x81\x80" + bytes(range(256)) * 255, "malformed DNS answer"),
        (lambda q: header(q, flags=0x818F) + question(q), "15"),
    ],
    ids=["truncated-header", "wrong-id", "another-question", "not-a-response",
         "pointer-to-itself", "pointer-into-a-label", "name-over-255-bytes",
         "unknown-label-type-then-300-bytes", "65535-answers-claimed", "rdata-length-65535",
         "cname-to-itself", "64-kib-of-junk", "rcode-15"],
)
async def test_it_reports_a_malformed_dns_answer(
    reply: Callable[[bytes], bytes], reason: str
) -> None:
    async with udp_server(reply) as server:
        result = await dns(server)
    assert result.state == "down"
    assert result.reason.startswith(reason), result.reason
    assert result.evidence["server"] == server


@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.binary(max_size=600), keep_header=st.booleans())
def test_no_reply_whatever_its_bytes_crashes_the_dns_check(junk: bytes, keep_header: bool) -> None:
    def reply(query: bytes) -> bytes:
        return (header(query, an=junk[0] if junk else 0) + question(query) if keep_header
                else query[:2]) + junk

    async def ask() -> Result:
        async with udp_server(reply) as server:
            return await dns(server, type="TXT")

    result = asyncio.run(ask())
    assert result.state in ("up", "down")


async def _tcp_dns(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    size = struct.unpack("!H", await reader.readexactly(2))[0]
    query = await reader.readexactly(size)
    writer.write(b"\xff\xff" + header(query, an=200) + question(query))  # then hangs up


async def _tcp_dns_junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    size = struct.unpack("!H", await reader.readexactly(2))[0]
    query = await reader.readexactly(size)
    writer.write(b"\xff\xff" + query[:2] + b"\x81\x80" + b"\xee" * 65531)
    await writer.drain()
    await reader.read()


@pytest.mark.parametrize(
    ("handler", "reason"),
    [(_tcp_dns, "connection closed before an answer"),
     (_tcp_dns_junk, "malformed DNS answer")],
    ids=["promises-65535-bytes-and-hangs-up", "65535-bytes-of-junk"],
)
async def test_it_reports_a_tcp_dns_server_that_misbehaves(handler: Handler, reason: str) -> None:
    async with serve(handler) as port:
        result = await dns(f"127.0.0.1:{port}", transport="tcp")
    assert result.state == "down"
    assert result.reason.startswith(reason), result.reason

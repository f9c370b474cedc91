"""The dns check against a real dnsmasq on loopback, and against tiny UDP servers that misbehave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import dns.message
import dns.rrset
import pytest
from pydantic import ValidationError

from checks.base import Result
from checks.dns import PHASES, DnsSpec, run
from tests.harness.dnsserver import (
    BIG_TXT,
    MULTI_V4,
    SPF,
    TTL,
    WWW_V4,
    WWW_V6,
    ZONE,
    DnsServer,
)
from tests.harness.ports import free_port


async def check(server: str | list[str], within: float = 2, **spec: Any) -> Result:
    spec.setdefault("name", f"www.{ZONE}")
    result = await run(DnsSpec(server=server, **spec), timeout=within)
    assert set(result.phases) == set(PHASES)
    return result


# --- answers from dnsmasq ------------------------------------------------------------------


async def test_it_finds_an_a_record(dns_server: DnsServer) -> None:
    result = await check(dns_server.address)
    assert result.state == "up", result.reason
    assert result.target == f"www.{ZONE} A"
    assert result.evidence["server"] == dns_server.address
    assert result.evidence["rcode"] == "NOERROR"
    assert result.evidence["answers"] == [WWW_V4]
    assert result.evidence["ttl"] == TTL
    assert result.evidence["authoritative"] is True
    assert result.evidence["transport"] == "udp"
    assert result.evidence["tcp_fallback"] is False
    assert "cname_chain" not in result.evidence
    assert result.phases["resolve"] == 0.0
    assert result.phases["connect"] == 0.0  # UDP has no connect


async def test_it_finds_an_aaaa_record(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, type="AAAA", expect=["2001:DB8:0::10"])
    assert result.state == "up", result.reason
    assert result.evidence["answers"] == [WWW_V6]


async def test_it_finds_a_cname_record(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, name=f"alias.{ZONE}", type="CNAME")
    assert result.state == "up", result.reason
    assert result.evidence["answers"] == [f"www.{ZONE}"]


async def test_it_follows_a_cname_to_the_address_and_shows_the_chain(
    dns_server: DnsServer,
) -> None:
    result = await check(dns_server.address, name=f"alias.{ZONE}", expect=[WWW_V4])
    assert result.state == "up", result.reason
    assert result.evidence["answers"] == [WWW_V4]
    assert result.evidence["cname_chain"] == [f"alias.{ZONE}", f"www.{ZONE}"]


async def test_it_finds_an_mx_record_whatever_the_case_and_final_dot(
    dns_server: DnsServer,
) -> None:
    result = await check(dns_server.address, name=ZONE, type="MX", expect=[f"10 MAIL.{ZONE}."])
    assert result.state == "up", result.reason
    assert result.evidence["answers"] == [f"10 mail.{ZONE}"]


async def test_it_finds_a_txt_record(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, name=ZONE, type="TXT", expect=[SPF])
    assert result.state == "up", result.reason
    assert result.evidence["answers"] == [SPF]


async def test_it_joins_the_strings_of_a_txt_record(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, name=f"split.{ZONE}", type="TXT")
    assert result.evidence["answers"] == ["hello world"]


async def test_it_reports_an_expected_address_that_is_missing(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, expect=["203.0.113.99"])
    assert result.state == "down"
    assert result.reason == f"missing 203.0.113.99 in answer (got {WWW_V4})"
    assert result.evidence["answers"] == [WWW_V4]


async def test_it_accepts_answers_beyond_the_expected_ones(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, name=f"multi.{ZONE}", expect=[MULTI_V4[0]])
    assert result.state == "up", result.reason
    assert sorted(result.evidence["answers"]) == sorted(MULTI_V4)


async def test_it_reports_an_unexpected_answer_when_the_set_must_be_exact(
    dns_server: DnsServer,
) -> None:
    result = await check(
        dns_server.address, name=f"multi.{ZONE}", expect=[MULTI_V4[0]], expect_exact=True
    )
    assert result.state == "down"
    assert result.reason == f"unexpected answer {MULTI_V4[1]}"


async def test_it_accepts_the_exact_set_in_any_order(dns_server: DnsServer) -> None:
    expect = list(reversed(MULTI_V4))
    result = await check(dns_server.address, name=f"multi.{ZONE}", expect=expect, expect_exact=True)
    assert result.state == "up", result.reason


async def test_it_reports_no_record_of_the_type_when_one_is_expected(
    dns_server: DnsServer,
) -> None:
    result = await check(dns_server.address, type="MX", expect=[f"10 mail.{ZONE}"])
    assert result.state == "down"
    assert result.reason == "no MX record"
    assert result.evidence["rcode"] == "NOERROR"


async def test_it_reports_nxdomain(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, name=f"nope.{ZONE}")
    assert result.state == "down"
    assert result.reason == "NXDOMAIN"
    assert result.evidence["rcode"] == "NXDOMAIN"
    assert result.evidence["answers"] == []


async def test_it_is_up_on_nxdomain_when_nxdomain_is_expected(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, name=f"nope.{ZONE}", expect_rcode="NXDOMAIN")
    assert result.state == "up", result.reason


async def test_it_reports_an_answer_where_nxdomain_is_expected(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, expect_rcode="NXDOMAIN")
    assert result.state == "down"
    assert result.reason == "NOERROR (expected NXDOMAIN)"


async def test_it_asks_over_tcp(dns_server: DnsServer) -> None:
    result = await check(dns_server.address, transport="tcp", expect=[WWW_V4])
    assert result.state == "up", result.reason
    assert result.evidence["transport"] == "tcp"
    assert result.evidence["tcp_fallback"] is False


async def test_it_asks_again_over_tcp_when_the_udp_answer_is_truncated(
    dns_server: DnsServer,
) -> None:
    result = await check(dns_server.address, name=f"big.{ZONE}", type="TXT")
    assert result.state == "up", result.reason
    assert result.evidence["answers"] == ["".join(BIG_TXT)]
    assert result.evidence["transport"] == "tcp"
    assert result.evidence["tcp_fallback"] is True


async def test_it_falls_through_to_the_next_server_when_one_refuses(
    dns_server: DnsServer,
) -> None:
    closed = f"127.0.0.1:{free_port(udp=True)}"
    result = await check([closed, dns_server.address], transport="tcp")
    assert result.state == "up", result.reason
    assert result.evidence["server"] == dns_server.address
    assert result.evidence["failed_servers"] == {closed: "connection refused"}


async def test_it_falls_through_a_closed_udp_port_to_the_next_server(
    dns_server: DnsServer,
) -> None:
    closed = f"127.0.0.1:{free_port(udp=True)}"
    result = await check([closed, dns_server.address], within=3)
    assert result.state == "up", result.reason
    assert result.evidence["server"] == dns_server.address
    assert closed in result.evidence["failed_servers"]


# --- servers that are not there, or misbehave ----------------------------------------------


async def test_it_reports_connection_refused_over_tcp() -> None:
    result = await check(f"127.0.0.1:{free_port(udp=True)}", transport="tcp")
    assert result.state == "down"
    assert result.reason == "connection refused"


async def test_it_reports_a_udp_port_nobody_listens_on() -> None:
    # The kernel answers with ICMP port unreachable, unless a firewall drops the query.
    result = await check(f"127.0.0.1:{free_port(udp=True)}", within=1)
    assert result.state == "down"
    assert result.reason in ("connection refused", "timed out after 1s during request")


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], bytes | None], delay: float) -> None:
        self.reply = reply
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        answer = self.reply(data)
        if answer is not None and self.transport is not None:
            asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, answer, addr)


@asynccontextmanager
async def udp_server(
    reply: Callable[[bytes], bytes | None], delay: float = 0.0
) -> AsyncIterator[str]:
    """A DNS server of our own on 127.0.0.1 that answers each datagram with `reply(datagram)`."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _UdpServer(reply, delay), local_addr=("127.0.0.1", 0)
    )
    try:
        yield "127.0.0.1:{}".format(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


def _answer(query: bytes) -> bytes:
    response = dns.message.make_response(dns.message.from_wire(query))
    name = response.question[0].name
    response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", WWW_V4))
    return response.to_wire()


async def test_it_reports_a_malformed_answer() -> None:
    # The query's id and a header that promises a question, followed by junk.
    async with udp_server(lambda query: query[:2] + b"\x81\x80\x00\x01" + b"\xff" * 20) as server:
        result = await check(server)
    assert result.state == "down"
    assert result.reason.startswith("malformed DNS answer"), result.reason
    assert result.evidence["server"] == server


async def test_it_reports_an_answer_too_short_to_be_dns() -> None:
    async with udp_server(lambda query: b"nonsense") as server:
        result = await check(server)
    assert result.state == "down"
    assert result.reason == "malformed DNS answer: shorter than a DNS header"


async def test_it_names_the_request_phase_when_the_server_never_answers() -> None:
    async with udp_server(lambda query: None) as server:
        result = await check(server, within=0.5)
    assert result.state == "down"
    assert result.reason == "timed out after 500ms during request"
    assert result.duration < 5
    assert result.evidence["server"] == server


async def test_it_times_out_on_the_second_server_after_the_first_failed() -> None:
    async with (
        udp_server(lambda query: b"nonsense") as broken,
        udp_server(lambda query: None) as silent,
    ):
        result = await check([broken, silent], within=0.5)
    assert result.state == "down"
    assert result.reason == "timed out after 500ms during request"
    assert result.evidence["server"] == silent
    assert result.evidence["failed_servers"] == {
        broken: "malformed DNS answer: shorter than a DNS header"
    }


async def test_it_reports_an_answer_slower_than_max_latency() -> None:
    async with udp_server(_answer, delay=0.3) as server:
        result = await check(server, max_latency="100ms", expect=[WWW_V4])
    assert result.state == "down"
    assert result.reason.startswith("took "), result.reason
    assert result.reason.endswith(" (max 100ms)")
    assert result.evidence["answers"] == [WWW_V4]


async def test_it_gives_every_query_an_id_of_its_own() -> None:
    ids: list[bytes] = []

    def answer(query: bytes) -> bytes:
        ids.append(query[:2])
        return _answer(query)

    async with udp_server(answer) as server:
        for _ in range(20):
            assert (await check(server)).state == "up"
    assert len(set(ids)) >= 18  # random 16-bit ids: two alike among 20 happens, three do not


async def test_it_refuses_an_answer_it_saw_before_replayed_under_its_old_id() -> None:
    first: list[bytes] = []

    def replay(query: bytes) -> bytes:
        first.append(first[0] if first else _answer(query))
        return first[-1]

    async with udp_server(replay) as server:
        answered = await check(server)
        replayed = await check(server)
    assert answered.state == "up", answered.reason
    assert replayed.state == "down"
    assert replayed.reason == "malformed DNS answer: not an answer to our question"


async def test_it_reads_the_same_answer_alike_when_asked_again(dns_server: DnsServer) -> None:
    results = [await check(dns_server.address, name=f"alias.{ZONE}") for _ in range(3)]
    assert [r.state for r in results] == ["up"] * 3
    assert all(r.evidence == results[0].evidence for r in results)
    assert results[0].evidence["cname_chain"] == [f"alias.{ZONE}", f"www.{ZONE}"]


async def test_it_reads_an_answer_over_512_bytes_that_is_not_truncated() -> None:
    addresses = [f"203.0.113.{n}" for n in range(1, 51)]  # 50 records: 800 bytes and more

    def many(query: bytes) -> bytes:
        response = dns.message.make_response(dns.message.from_wire(query))
        name = response.question[0].name
        response.answer.append(dns.rrset.from_text_list(name, 60, "IN", "A", addresses))
        return response.to_wire()

    async with udp_server(many) as server:
        result = await check(server, expect=addresses, expect_exact=True)
    assert result.state == "up", result.reason
    assert result.evidence["transport"] == "udp"
    assert len(result.evidence["answers"]) == 50


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"expect": ["203.0.113.300"]}, "'203.0.113.300' is not a A answer"),
        ({"type": "MX", "expect": ["mail.example.com"]}, "is not a MX answer"),
        ({"expect": [WWW_V4], "expect_rcode": "NXDOMAIN"}, "NXDOMAIN has none"),
        ({"name": "a..b"}, "is not a DNS name"),
        ({"server": []}, "leave it out to use the system resolver"),
        ({"server": "dns.example.com"}, "is not an IP address"),
    ],
)
def test_it_refuses_a_spec_that_cannot_work(spec: dict[str, Any], message: str) -> None:
    spec.setdefault("name", "www.example.com")
    with pytest.raises(ValidationError, match=message):
        DnsSpec(**spec)

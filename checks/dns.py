"""The dns check: one query to a server (or the system's resolver), its rcode and answers."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal, cast

import dns._asyncbackend  # the socket types: dns.asyncbackend does not re-export them
import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.SRV import SRV
from dns.rdtypes.txtbase import TXTBase
from pydantic import field_validator, model_validator

from checks.base import Gauge, Kind, PhaseTimer, Result, Spec
from checks.net import describe_os_error
from checks.values import Duration

PHASES = ("resolve", "connect", "request")  # as blackbox_exporter names them

RecordType = Literal["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SOA", "SRV", "CAA", "PTR"]
Rcode = Literal["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR", "NOTIMP", "YXDOMAIN"]


@functools.lru_cache(maxsize=4096)  # each run reads its servers
def parse_server(value: str) -> tuple[str, int]:
    """`192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53`, `[2001:db8::53]:5353` to (address, port)."""
    text = value.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{value!r} is not an address[:port]")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"{value!r} is not an address[:port]")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address[:port]") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: {port} is not a port (1-65535)")
    return host, port


class DnsSpec(Spec):
    kind: ClassVar[str] = "dns"

    name: str
    type: RecordType = "A"
    server: str | list[str] | None = None  # address[:port], one or several; default: system
    transport: Literal["udp", "tcp"] = "udp"
    expect: list[str] = []
    expect_exact: bool = False  # the answers must be exactly `expect`, not merely include it
    expect_rcode: Rcode = "NOERROR"
    max_latency: Duration | None = None

    @property
    def target(self) -> str:
        return f"{self.name} {self.type}"

    @property
    def servers(self) -> list[tuple[str, int]]:
        if self.server is None:
            return []
        listed = [self.server] if isinstance(self.server, str) else self.server
        return [parse_server(s) for s in listed]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            dns.name.from_text(value)
        except dns.exception.DNSException as err:
            raise ValueError(f"{value!r} is not a DNS name: {_sentence(err)}") from None
        return value

    @field_validator("server")
    @classmethod
    def _servers(cls, value: str | list[str] | None) -> str | list[str] | None:
        listed = [value] if isinstance(value, str) else value or []
        for server in listed:
            parse_server(server)
        if isinstance(value, list) and not value:
            raise ValueError("is empty: leave it out to use the system resolver")
        return value

    @model_validator(mode="after")
    def _expected_answers(self) -> DnsSpec:
        if self.expect and self.expect_rcode != "NOERROR":
            raise ValueError(f"expect needs answers, and {self.expect_rcode} has none")
        for value in self.expect:
            normalise_expected(self.type, value)
        return self


@functools.lru_cache(maxsize=4096)  # each run compares with them
def normalise_expected(rdtype: str, text: str) -> str:
    """An expected answer as written in the config, spelled the way `normalise` spells answers.

    Raises ValueError when it cannot be an answer of that type.
    """
    if rdtype == "TXT":  # taken literally: rdata syntax would split it at spaces
        return text
    try:
        if rdtype in ("CNAME", "NS", "PTR", "SOA"):  # SOA: its primary name server (mname)
            return _name_text(dns.name.from_text(text.strip()))
        return normalise(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text.strip()))
    except (dns.exception.DNSException, ValueError) as err:
        raise ValueError(f"{text!r} is not a {rdtype} answer: {_sentence(err)}") from None


def normalise(rdata: dns.rdata.Rdata) -> str:
    """One answer as the evidence shows it and `expect` is compared with: addresses in their
    canonical form, names in lower case without the final dot, TXT strings joined."""
    if isinstance(rdata, TXTBase):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if isinstance(rdata, CNAME | NS | PTR):
        return _name_text(rdata.target)
    if isinstance(rdata, MX):
        return f"{rdata.preference} {_name_text(rdata.exchange)}"
    if isinstance(rdata, SRV):
        return f"{rdata.priority} {rdata.weight} {rdata.port} {_name_text(rdata.target)}"
    if isinstance(rdata, SOA):
        return _name_text(rdata.mname)
    if rdata.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(ipaddress.ip_address(rdata.to_text()))
    return rdata.to_text()


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() or "."


def _sentence(err: Exception) -> str:
    """dnspython's messages are sentences ("The label type ... is unknown."); ours are clauses."""
    text = str(err).rstrip(".") or type(err).__name__
    acronym = len(first := text.split(" ", 1)[0]) > 1 and first.isupper()  # "DNS message is ..."
    return text if acronym else text[:1].lower() + text[1:]


@functools.cache
def system_servers() -> tuple[tuple[str, int], ...]:
    """The system resolver's name servers (/etc/resolv.conf), read once.

    Raises `dns.resolver.NoResolverConfiguration` or ValueError when there are none.
    """
    resolver = dns.resolver.Resolver()
    servers = []
    for server in resolver.nameservers:
        if isinstance(server, str):
            servers.append((server, resolver.nameserver_ports.get(server, resolver.port)))
        elif isinstance(server, dns.nameserver.Do53Nameserver):
            servers.append((server.address, server.port))
    if not servers:
        raise ValueError("no plain DNS name server configured")
    return tuple(servers)


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the check judges in a server's answer."""

    rcode: str
    authoritative: bool
    answers: tuple[str, ...] = ()
    ttl: int | None = None  # None: no answer section to take it from
    cname_chain: tuple[str, ...] = ()
    broken_chain: str = ""  # why the answers of a NOERROR could not be followed


async def run(spec: DnsSpec, *, timeout: float) -> Result:
    timer = PhaseTimer(spec.kind, spec.target, PHASES)
    try:
        servers = spec.servers or list(system_servers())
    except (dns.resolver.NoResolverConfiguration, OSError, ValueError) as err:
        return timer.unknown(f"no system name server to ask (/etc/resolv.conf): {_sentence(err)}")
    qid = secrets.randbits(16)  # unpredictable, so that a forged answer has to guess it
    failures: dict[str, str] = {}
    reply: _Reply | None = None
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            for host, port in servers:
                timer.evidence["server"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                try:
                    reply = await _ask(timer, spec, qid, host, port)
                    break
                except (OSError, EOFError, dns.exception.DNSException) as err:
                    failures[timer.evidence["server"]] = _describe(err)
    except TimeoutError:
        timed_out = True
    if len(servers) > 1 and failures:
        timer.evidence["failed_servers"] = failures
    if timed_out:
        return timer.timed_out(timeout)
    if reply is None:
        return timer.down(list(failures.values())[-1])
    return _judge(timer, spec, reply)


async def _ask(timer: PhaseTimer, spec: DnsSpec, qid: int, host: str, port: int) -> _Reply:
    """Our query to one server over `transport`; a truncated UDP answer is asked again over TCP.

    The TCP socket is ours so that its connect is timed as its own phase.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    timer.evidence["transport"] = spec.transport
    timer.evidence["tcp_fallback"] = False
    if spec.transport == "udp":
        with timer.phase("request"):
            try:
                return await _udp(spec.name, spec.type, qid, family, host, port)
            except dns.message.Truncated:
                timer.evidence["transport"] = "tcp"
                timer.evidence["tcp_fallback"] = True
    query = dns.message.make_query(spec.name, spec.type, id=qid)
    with timer.phase("connect"):
        stream = await _socket(family, socket.SOCK_STREAM, host, port)
    async with stream:
        with timer.phase("request"):
            return _summarise(await dns.asyncquery.tcp(query, host, port=port, sock=stream))


async def _udp(name: str, rdtype: str, qid: int, family: int, host: str, port: int) -> _Reply:
    """One datagram out and the first one back, as `dns.asyncquery.udp` does, at a fraction of
    its cost. The socket is connected so that the kernel reports an ICMP port unreachable as
    ConnectionRefusedError instead of leaving us to time out, and passes us only the server's
    datagrams.
    """
    wire = qid.to_bytes(2, "big") + _query(name, rdtype)[1][2:]
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))
        await loop.sock_sendall(sock, wire)
        answer = await loop.sock_recv(sock, 65535)
    # Read with the id zeroed, so that the same answer to another query is read only once.
    # Answers over 512 bytes are not kept: we do not offer EDNS, so no sane server sends one.
    read = _read if len(answer) <= 512 else _read.__wrapped__
    reply = read(name, rdtype, b"\0\0" + answer[2:])
    if answer[:2] != wire[:2]:  # after reading, as dnspython: junk is malformed, not foreign
        raise dns.query.BadResponse
    return reply


@functools.lru_cache(maxsize=4096)
def _query(name: str, rdtype: str) -> tuple[dns.message.Message, bytes]:
    """Our query for a name and type with id 0, and its wire form, built once: building them
    costs more than the rest of a UDP exchange."""
    query = dns.message.make_query(name, rdtype, id=0)
    return query, query.to_wire()


@functools.lru_cache(maxsize=4096)
def _read(name: str, rdtype: str, answer: bytes) -> _Reply:
    """An answer (with id 0) to our query for `name` and `rdtype`, read once: dnspython takes
    several times longer to parse one than the rest of a check, and a server mostly sends the
    same bytes again. Raises dnspython's errors for a malformed answer, BadResponse for one
    that does not answer our question, and Truncated."""
    response = dns.message.from_wire(answer, raise_on_truncation=True)
    if not _query(name, rdtype)[0].is_response(response):
        raise dns.query.BadResponse
    return _summarise(response)


def _summarise(response: dns.message.Message) -> _Reply:
    rcode = dns.rcode.to_text(response.rcode())
    authoritative = bool(response.flags & dns.flags.AA)
    if rcode != "NOERROR":
        return _Reply(rcode, authoritative)
    try:
        # dnspython parses the answer to a QUERY as a QueryMessage
        chain = cast(dns.message.QueryMessage, response).resolve_chaining()
    except dns.exception.DNSException as err:
        return _Reply(rcode, authoritative, broken_chain=f"malformed DNS answer: {_sentence(err)}")
    names = []
    if chain.cnames:
        names = [chain.cnames[0].name, *(next(iter(c)).target for c in chain.cnames)]
    return _Reply(
        rcode,
        authoritative,
        answers=tuple(normalise(rdata) for rdata in chain.answer or ()),
        ttl=chain.minimum_ttl if chain.answer is not None else None,
        cname_chain=tuple(_name_text(n) for n in names),
    )


async def _socket(family: int, kind: int, host: str, port: int) -> dns._asyncbackend.Socket:
    backend = dns.asyncbackend.get_backend("asyncio")
    sock: dns._asyncbackend.Socket = await backend.make_socket(  # type: ignore[no-untyped-call]
        family, kind, destination=(host, port)
    )
    return sock


_MALFORMED: dict[type[Exception], str] = {
    dns.message.ShortHeader: "shorter than a DNS header",
    dns.message.TrailingJunk: "junk after the end of the message",
    dns.query.BadResponse: "not an answer to our question",
}


def _describe(err: Exception) -> str:
    if isinstance(err, OSError):
        return describe_os_error(err)
    if isinstance(err, EOFError):
        return "connection closed before an answer"
    if type(err) is dns.exception.FormError:  # its message says no more than "malformed"
        return "malformed DNS answer"
    return f"malformed DNS answer: {_MALFORMED.get(type(err)) or _sentence(err)}"


def _judge(timer: PhaseTimer, spec: DnsSpec, reply: _Reply) -> Result:
    timer.evidence["rcode"] = reply.rcode
    timer.evidence["authoritative"] = reply.authoritative
    timer.evidence["answers"] = []
    if reply.rcode != spec.expect_rcode:
        if spec.expect_rcode == "NOERROR":
            return timer.down(reply.rcode)
        return timer.down(f"{reply.rcode} (expected {spec.expect_rcode})")
    if reply.rcode == "NOERROR":
        if reply.broken_chain:
            return timer.down(reply.broken_chain)
        answers = list(reply.answers)
        timer.evidence["answers"] = answers
        if reply.ttl is not None:
            timer.evidence["ttl"] = reply.ttl
        if reply.cname_chain:
            timer.evidence["cname_chain"] = list(reply.cname_chain)
        reason = _compare(spec, answers)
        if reason:
            return timer.down(reason)
    return timer.too_slow(spec.max_latency) or timer.up()


def _compare(spec: DnsSpec, answers: list[str]) -> str:
    """Why the answers do not meet `expect`, or "" when they do."""
    if not spec.expect and not spec.expect_exact:
        return ""
    if not answers and spec.expect:
        return f"no {spec.type} record"
    expected = [normalise_expected(spec.type, value) for value in spec.expect]
    missing = [value for value in expected if value not in answers]
    if missing:
        return f"missing {', '.join(missing)} in answer (got {', '.join(answers)})"
    unexpected = [answer for answer in answers if answer not in expected]
    if spec.expect_exact and unexpected:
        return f"unexpected answer {', '.join(unexpected)}"
    return ""


# --- what /metrics and a ticket's triage see -----------------------------------------------

def gauges(result: Result) -> Iterator[Gauge]:
    """blackbox_exporter's probe_dns_* series."""
    answers = result.evidence.get("answers")
    yield Gauge("probe_dns_answer_rrs", "Returns number of entries in the answer resource "
                "record list", len(answers) if isinstance(answers, list) else 0)
    yield Gauge("probe_dns_query_succeeded", "Displays whether or not the query was "
                "executed successfully", "rcode" in result.evidence)


def endpoint(spec: DnsSpec) -> tuple[str | None, int | None]:
    return None, None  # a name asked of servers: no host of its own to look at


KIND = Kind(spec=DnsSpec, run=run, phases=PHASES,
            phase_metric="probe_dns_duration_seconds", gauges=gauges, endpoint=endpoint)

"""Triage evidence for a new ticket, gathered the way a support engineer would: what the
target's name resolves to, which of its ports answer, its certificate, whether it answers
ping, the routers on the way to it, what its HTTP endpoint says — in parallel, under a short
deadline. Each piece is run
by the check kinds themselves; a piece that cannot be had says why. Which host and port a
check is about, its kind says (`checks.Kind.endpoint`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.resolver
from icmplib import (
    ICMPLibError,
    ICMPReply,
    ICMPRequest,
    ICMPv4Socket,
    ICMPv6Socket,
    SocketPermissionError,
    TimeoutExceeded,
)

from checks import KINDS, execute
from checks.base import Result, Spec
from checks.http import HttpSpec
from checks.icmp import IcmpSpec
from checks.net import describe_os_error, resolve
from checks.tcp import TcpSpec
from checks.tls import TlsSpec
from checks.values import format_duration
from probe.config import Check
from probe.secrets import known

EXTRA_PORTS = (80, 443, 22)
MAX_HOPS = 30  # as traceroute's default
HOP_WAIT = 0.5  # seconds for each router's answer: a silent one costs no more


async def gather(checks: Sequence[Check], deadline: float = 5.0) -> list[tuple[str, str]]:
    hosts: dict[str, set[int]] = {}
    http_specs = []
    for check in checks:
        host, port = KINDS[check.kind].endpoint(check.spec)
        if host:
            hosts.setdefault(host, set())
            if port:
                hosts[host].add(port)
        # Only an http check has a URL to ask again; every kind's host is in `hosts` above.
        if isinstance(check.spec, HttpSpec):
            http_specs.append(check.spec)
    jobs: list[tuple[str, asyncio.Task[str]]] = []
    for host, ports in hosts.items():
        jobs.append((f"DNS {host}", asyncio.create_task(_dns(host, deadline))))
        jobs.append((f"TCP {host}", asyncio.create_task(_ports(host, ports, deadline))))
        if 443 in ports or any(urlsplit(s.url).scheme == "https" for s in http_specs):
            jobs.append((f"TLS {host}", asyncio.create_task(_tls(host, deadline))))
        jobs.append((f"ICMP {host}", asyncio.create_task(_icmp(host, deadline))))
        jobs.append((f"Route {host}", asyncio.create_task(_route(host, deadline))))
    for spec in http_specs:
        jobs.append((f"HTTP {known.redact(spec.url)}", asyncio.create_task(_http(spec, deadline))))
    if not jobs:
        return []
    await asyncio.wait([task for _, task in jobs], timeout=deadline + 1)
    lines = []
    for label, task in jobs:
        if not task.done():
            task.cancel()
            lines.append((label, f"no answer within {format_duration(deadline)}"))
        elif task.exception() is not None:
            lines.append((label, f"could not be gathered: {task.exception()}"))
        else:
            lines.append((label, task.result()))
    return lines


async def _run(spec: Spec, timeout: float) -> Result:
    # What a target answers may echo a token from its URL: the note is shown to people.
    return known.redact_result(await execute(spec, timeout=timeout))


async def _dns(host: str, timeout: float) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "an address, not a name: nothing to resolve"
    if host == "localhost" or host.endswith(".localhost"):
        return "resolved by this machine (RFC 6761): not asked of DNS"
    resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    answers = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype)
        except dns.resolver.NoAnswer:
            continue
        except dns.resolver.NXDOMAIN:
            return "NXDOMAIN: the name does not exist"
        except (dns.exception.DNSException, OSError) as err:
            return f"lookup failed: {err}"
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        answers += [f"{rdtype} {r} (TTL {ttl}s)" for r in answer]
    return ", ".join(answers) or "no A or AAAA records"


async def _ports(host: str, ports: set[int], timeout: float) -> str:
    chosen = sorted(ports) + [p for p in EXTRA_PORTS if p not in ports]
    results = await asyncio.gather(
        *(_run(TcpSpec(host=host, port=port), min(timeout, 3.0)) for port in chosen)
    )
    return "; ".join(
        f"{port} open ({format_duration(r.duration)})" if r.ok else f"{port} {r.reason}"
        for port, r in zip(chosen, results, strict=True)
    )


async def _tls(host: str, timeout: float) -> str:
    result = await _run(TlsSpec(host=host, port=443, min_days_left=0), timeout)
    ev = result.evidence
    if "subject" not in ev:
        return result.reason
    verdict = "chain OK" if result.ok else result.reason
    return (f"{ev['subject']}, issued by {ev.get('issuer')}, expires {ev.get('not_after')} "
            f"({ev.get('days_left')} days), {verdict}")


async def _icmp(host: str, timeout: float) -> str:
    spec = IcmpSpec.model_validate({"host": host, "count": 3, "interval": "100ms"})
    result = await _run(spec, min(timeout, 3.0))
    ev = result.evidence
    if result.state == "unknown":
        return result.reason
    if "loss" not in ev:
        return result.reason
    rtt = ev.get("rtt_avg")
    average = f", average {format_duration(rtt)}" if isinstance(rtt, float) else ""
    return f"{round(ev['loss'] * 100)}% loss of {ev.get('sent')}{average}"


async def _route(host: str, timeout: float) -> str:
    """The routers on the way to `host`, as traceroute shows them: an echo with a TTL of 1, 2,
    ... until the host answers, each router's address and round trip, `*` for one that says
    nothing within HOP_WAIT; within `timeout`, with what was found by then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout(timeout):
            address = (await resolve(host, "auto"))[0]
    except TimeoutError:
        return f"{host} not resolved within {format_duration(timeout)}"
    except OSError as err:
        return f"not traced: {describe_os_error(err)}"
    try:
        # A router's answer (time exceeded) reaches a raw socket only: not a ping socket.
        sock = (ICMPv6Socket if ":" in address else ICMPv4Socket)(privileged=True)
    except SocketPermissionError:
        return ("not traced: a traceroute needs CAP_NET_RAW (the unit grants it: "
                "AmbientCapabilities=CAP_NET_RAW)")
    except ICMPLibError as err:
        return f"not traced: {err}"
    hops: list[str] = []
    ident = secrets.randbits(16)
    try:
        for ttl in range(1, MAX_HOPS + 1):
            left = deadline - loop.time()
            if left <= 0:
                return _hops(hops, f"not reached within {format_duration(timeout)}")
            request = ICMPRequest(address, id=ident, sequence=ttl, ttl=ttl, payload_size=24)
            try:
                # icmplib's own exchange, a hop at a time in a thread: each bounded by its
                # wait, and the router's address is only in what recvfrom says.
                reply = await asyncio.to_thread(_exchange, sock, request, min(HOP_WAIT, left))
            except TimeoutExceeded:
                hops.append("*")
                continue
            except (ICMPLibError, OSError) as err:
                return _hops(hops, f"stopped: {err}")
            hops.append(f"{reply.source} {format_duration(max(0.0, reply.time - request.time))}")
            if reply.type in (0, 129):  # an echo reply: the host itself
                return _hops(hops, f"reached in {ttl} hop{'s' * (ttl != 1)}")
            if reply.type == (1 if ":" in address else 3):  # destination unreachable
                return _hops(hops, f"unreachable, said {reply.source}")
        return _hops(hops, f"not reached in {MAX_HOPS} hops")
    finally:
        sock.close()


def _exchange(sock: ICMPv4Socket, request: ICMPRequest, wait: float) -> ICMPReply:
    sock.send(request)
    reply: ICMPReply = sock.receive(request, wait)
    return reply


def _hops(hops: list[str], end: str) -> str:
    """The hops in a line, a run of silent ones at the end told once."""
    answered = max((i for i, hop in enumerate(hops) if hop != "*"), default=-1)
    silent = len(hops) - answered - 1
    shown = hops[:answered + 1] + (["*"] if silent == 1 else
                                   [f"* ({silent} silent)"] if silent else [])
    return (" > ".join(shown) + ": " if shown else "") + end


async def _http(spec: HttpSpec, timeout: float) -> str:
    result = await _run(spec, timeout)
    ev = result.evidence
    if "status_code" not in ev:
        return result.reason
    excerpt = " ".join(str(ev.get("body_excerpt", "")).split())[:120]
    return f"HTTP {ev['status_code']} in {format_duration(result.duration)}: {excerpt!r}"

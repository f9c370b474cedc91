"""Triage evidence for a new ticket, gathered the way a support engineer would: what the
target's name resolves to, which of its ports answer, its certificate, whether it answers
ping, what its HTTP endpoint says — in parallel, under a short deadline. Each piece is run
by the check kinds themselves; a piece that cannot be had says why. Which host and port a
check is about, its kind says (`checks.Kind.endpoint`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.resolver

from checks import KINDS, execute
from checks.base import Result, Spec
from checks.http import HttpSpec
from checks.icmp import IcmpSpec
from checks.tcp import TcpSpec
from checks.tls import TlsSpec
from checks.values import format_duration
from probe.config import Check
from probe.secrets import known

EXTRA_PORTS = (80, 443, 22)


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


async def _http(spec: HttpSpec, timeout: float) -> str:
    result = await _run(spec, timeout)
    ev = result.evidence
    if "status_code" not in ev:
        return result.reason
    excerpt = " ".join(str(ev.get("body_excerpt", "")).split())[:120]
    return f"HTTP {ev['status_code']} in {format_duration(result.duration)}: {excerpt!r}"

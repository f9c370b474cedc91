"""The tcp check: a connection to host:port, optionally a TLS handshake, a payload sent and an
answer (a banner, say) expected. The connection steps are `checks.net`'s, which http and tls
share.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import ClassVar

from pydantic import field_validator

from checks.base import Gauge, Kind, PhaseTimer, Result, Spec
from checks.net import (
    CheckFailed,
    IpFamily,
    client_context,
    describe_os_error,
    describe_ssl_error,
    handshake,
    open_first,
    resolve_host,
    tls_version_name,
)
from checks.values import Duration, Port, ReadableFile, compile_regex

PHASES = ("resolve", "connect", "tls", "exchange")

# Enough for any banner or greeting; a peer that streams forever must not fill our memory.
_MAX_READ = 64 * 1024


class TcpSpec(Spec):
    kind: ClassVar[str] = "tcp"

    host: str
    port: Port
    max_latency: Duration | None = None
    send: str | None = None
    expect: str | None = None  # a regular expression the answer must match, e.g. ^SSH-2.0-
    tls: bool = False
    tls_verify: bool = True
    server_name: str | None = None
    ca_file: ReadableFile | None = None
    ip_family: IpFamily = "auto"

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @field_validator("expect")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_regex(value, multiline=True)
        return value


async def run(spec: TcpSpec, *, timeout: float) -> Result:
    timer = PhaseTimer(TcpSpec.kind, spec.target, PHASES)
    try:
        async with asyncio.timeout(timeout):
            await _check(spec, timer)
    except TimeoutError:
        return timer.timed_out(timeout)
    except CheckFailed as failed:
        return failed.result(timer)
    return timer.too_slow(spec.max_latency) or timer.up()


async def _check(spec: TcpSpec, timer: PhaseTimer) -> None:
    timer.evidence["port"] = spec.port
    addresses = await resolve_host(timer, spec.host, spec.ip_family)
    reader, writer = await open_first(timer, addresses, spec.port)
    try:
        if spec.tls:
            context = client_context(spec.ca_file, verify=spec.tls_verify, check_hostname=True)
            tls = await handshake(timer, writer, context, spec.server_name or spec.host)
            timer.evidence["tls_version"] = tls_version_name(tls.version())
        if spec.send is not None or spec.expect is not None:
            with timer.phase("exchange"):
                await _exchange(spec, timer, reader, writer)
    finally:
        writer.close()


async def _exchange(
    spec: TcpSpec, timer: PhaseTimer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        if spec.send is not None:
            writer.write(spec.send.encode())
            await writer.drain()
        if spec.expect is None:
            return
        # MULTILINE: an expected greeting may follow other lines (an SMTP banner's continuation).
        pattern = compile_regex(spec.expect, multiline=True)
        data, text = b"", ""
        while len(data) < _MAX_READ:
            chunk = await reader.read(_MAX_READ - len(data))
            if not chunk:
                break
            data += chunk
            text = data.decode(errors="replace")
            timer.evidence["banner"] = text[:200]
            if pattern.search(data):
                return
    except ssl.SSLError as err:
        raise CheckFailed(f"TLS failed: {describe_ssl_error(err)}") from err
    except OSError as err:
        raise CheckFailed(describe_os_error(err)) from err
    got = repr(text[:80] + "...") if len(text) > 80 else repr(text) if text else "nothing"
    raise CheckFailed(f"expected /{spec.expect}/ but got {got}")


# --- what /metrics and a ticket's triage see -----------------------------------------------

def gauges(result: Result) -> tuple[Gauge, ...]:
    return ()  # blackbox_exporter's tcp prober has none beyond every kind's


def endpoint(spec: TcpSpec) -> tuple[str | None, int | None]:
    return spec.host, spec.port


KIND = Kind(spec=TcpSpec, run=run, phases=PHASES,
            phase_metric="probe_tcp_duration_seconds", gauges=gauges, endpoint=endpoint)

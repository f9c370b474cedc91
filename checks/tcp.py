"""The tcp check: a connection to host:port, optionally a TLS handshake, a payload sent and an
answer (a banner, say) expected.

It also owns the connection steps the tls check shares: resolving, connecting to the first
address that answers, the TLS handshake, client SSL contexts, and the words for their failures.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from pathlib import Path
from typing import ClassVar

from pydantic import field_validator

from checks.base import (
    Duration,
    Gauge,
    IpFamily,
    Kind,
    Port,
    Probe,
    ReadableFile,
    Result,
    Spec,
    State,
    compile_regex,
    describe_os_error,
    format_duration,
    resolve,
    tls_version_name,
)

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
    probe = Probe(TcpSpec.kind, spec.target, PHASES)
    try:
        async with asyncio.timeout(timeout):
            await _check(spec, probe)
    except TimeoutError:
        return probe.timed_out(timeout)
    except CheckFailed as failed:
        return failed.result(probe)
    return too_slow(probe, spec.max_latency) or probe.up()


async def _check(spec: TcpSpec, probe: Probe) -> None:
    probe.evidence["port"] = spec.port
    addresses = await resolve_host(probe, spec.host, spec.ip_family)
    reader, writer = await open_first(probe, addresses, spec.port)
    try:
        if spec.tls:
            context = client_context(spec.ca_file, verify=spec.tls_verify, check_hostname=True)
            try:
                tls = await handshake(probe, writer, context, spec.server_name or spec.host)
            except ssl.SSLCertVerificationError as err:
                raise CheckFailed(f"TLS certificate rejected: {err.verify_message}") from err
            probe.evidence["tls_version"] = tls_version_name(tls.version())
        if spec.send is not None or spec.expect is not None:
            with probe.phase("exchange"):
                await _exchange(spec, probe, reader, writer)
    finally:
        writer.close()


async def _exchange(
    spec: TcpSpec, probe: Probe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
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
            probe.evidence["banner"] = text[:200]
            if pattern.search(data):
                return
    except ssl.SSLError as err:
        raise CheckFailed(f"TLS failed: {describe_ssl_error(err)}") from err
    except OSError as err:
        raise CheckFailed(describe_os_error(err)) from err
    got = repr(text[:80] + "...") if len(text) > 80 else repr(text) if text else "nothing"
    raise CheckFailed(f"expected /{spec.expect}/ but got {got}")


# --- the steps the tls check shares --------------------------------------------------------


class CheckFailed(Exception):
    """What is wrong with the target (or, with state "unknown", with the check itself), found
    deep inside a check and turned into its Result by `run`."""

    def __init__(self, reason: str, state: State = "down") -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state

    def result(self, probe: Probe) -> Result:
        return probe.unknown(self.reason) if self.state == "unknown" else probe.down(self.reason)


def too_slow(probe: Probe, max_latency: float | None) -> Result | None:
    took = probe.elapsed()
    if max_latency is not None and took > max_latency:
        return probe.down(f"took {format_duration(took)} (max {format_duration(max_latency)})")
    return None


async def resolve_host(probe: Probe, host: str, family: IpFamily) -> list[str]:
    with probe.phase("resolve"):
        try:
            addresses = await resolve(host, family)
        except socket.gaierror as err:
            raise CheckFailed(describe_os_error(err)) from err
        except OSError as err:  # an address literal of the other family: the config is wrong
            raise CheckFailed(describe_os_error(err), "unknown") from err
    probe.evidence["addresses"] = addresses
    return addresses


async def open_first(
    probe: Probe, addresses: list[str], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of `addresses` that accepts one; evidence["address"] says
    which (or, when none does, the last one tried)."""
    error: OSError | None = None
    for address in addresses:
        probe.evidence["address"] = address
        try:
            with probe.phase("connect"):
                return await asyncio.open_connection(address, port)
        except OSError as err:
            error = err
    raise CheckFailed(describe_os_error(error) if error else "name does not resolve")


async def handshake(
    probe: Probe, writer: asyncio.StreamWriter, context: ssl.SSLContext, server_name: str
) -> ssl.SSLObject:
    """Upgrade the connection to TLS, with `server_name` as SNI (Python sends none for an IP
    address). A rejected certificate raises `ssl.SSLCertVerificationError`, for the caller to
    explain; any other failure is a `CheckFailed`."""
    with probe.phase("tls"):
        try:
            await writer.start_tls(context, server_hostname=server_name.strip("[]"))
        except ssl.SSLCertVerificationError:
            raise
        except ssl.SSLError as err:
            raise CheckFailed(f"TLS handshake failed: {describe_ssl_error(err)}") from err
        except OSError as err:
            raise CheckFailed(f"TLS handshake failed: {describe_os_error(err)}") from err
    tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
    return tls


def describe_ssl_error(err: ssl.SSLError) -> str:
    """OpenSSL's reason code in words ("wrong version number"), without the file and line."""
    if err.reason:
        return str(err.reason).lower().replace("_", " ")
    return str(err.args[1] if len(err.args) > 1 else err)


def client_context(ca_file: Path | None, *, verify: bool, check_hostname: bool) -> ssl.SSLContext:
    """A client context that trusts `ca_file` (else the system's CAs), or verifies nothing.

    Contexts are cached: loading the system's CAs costs more CPU than a handshake. The cache
    key has the file's mtime, so a renewed CA file is read again. A file that cannot be loaded
    is the check's own problem, not the target's: state "unknown".
    """
    if not verify:
        return _unverified_context()
    try:
        stamp = ca_file.stat().st_mtime_ns if ca_file else 0
        return _verifying_context(str(ca_file) if ca_file else None, stamp, check_hostname)
    except (OSError, ssl.SSLError) as err:
        raise CheckFailed(f"cannot load ca_file {ca_file}: {err}", "unknown") from err


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@functools.lru_cache(maxsize=64)
def _verifying_context(ca_file: str | None, _mtime: int, check_hostname: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = check_hostname
    return context


# --- what /metrics and a ticket's triage see -----------------------------------------------

def gauges(result: Result) -> tuple[Gauge, ...]:
    return ()  # blackbox_exporter's tcp prober has none beyond every kind's


def endpoint(spec: TcpSpec) -> tuple[str | None, int | None]:
    return spec.host, spec.port


KIND = Kind(spec=TcpSpec, run=run, phases=PHASES,
            phase_metric="probe_tcp_duration_seconds", gauges=gauges, endpoint=endpoint)

"""The network steps the check kinds share, and the words for their failures: resolving a name,
connecting to the first address that answers, the TLS handshake and the client contexts it
uses (tcp and tls connect through these), and the words for OS and SSL errors.

A step that fails raises `CheckFailed`, which the kind's `run` turns into its Result.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Literal

from checks.base import PhaseTimer, Result, State

IpFamily = Literal["auto", "ipv4", "ipv6"]



class CheckFailed(Exception):
    """What is wrong with the target (or, with state "unknown", with the check itself), found
    deep inside a check and turned into its Result by `run`."""

    def __init__(self, reason: str, state: State = "down") -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state

    def result(self, timer: PhaseTimer) -> Result:
        return timer.unknown(self.reason) if self.state == "unknown" else timer.down(self.reason)


# --- names and addresses -------------------------------------------------------------------

_FAMILIES = {"auto": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


@functools.lru_cache(maxsize=16384)
def _literal(host: str) -> tuple[str, int] | None:
    """An address literal in its canonical form, and its IP version; None for a name.
    Cached: parsing an address costs more than the rest of a tcp check's Python."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return str(address), address.version


def is_address(host: str) -> bool:
    """Whether `resolve` takes `host` as it is, without a lookup."""
    return _literal(host) is not None


async def resolve(host: str, family: IpFamily = "auto") -> list[str]:
    """The addresses of `host`, IPv6 first where both exist (as blackbox_exporter prefers).

    An address literal is returned as it is, without a lookup. Raises `OSError` (a
    `socket.gaierror`) when the name does not resolve.
    """
    literal = _literal(host)
    if literal is not None:
        address, version = literal
        if (family, version) in (("ipv4", 6), ("ipv6", 4)):
            raise OSError(f"{host} is not an {family} address")
        return [address]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, None, family=_FAMILIES[family], type=socket.SOCK_STREAM
    )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return sorted(addresses, key=lambda a: ":" not in a)


# --- connecting ----------------------------------------------------------------------------

async def resolve_host(timer: PhaseTimer, host: str, family: IpFamily) -> list[str]:
    """The addresses of `host`, timed as the "resolve" phase and kept in the evidence."""
    with timer.phase("resolve"):
        try:
            addresses = await resolve(host, family)
        except socket.gaierror as err:
            raise CheckFailed(describe_os_error(err)) from err
        except OSError as err:  # an address literal of the other family: the spec is wrong
            raise CheckFailed(describe_os_error(err), "unknown") from err
    timer.evidence["addresses"] = addresses
    return addresses


async def open_first(
    timer: PhaseTimer, addresses: list[str], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of `addresses` that accepts one; evidence["address"] says
    which (or, when none does, the last one tried)."""
    error: OSError | None = None
    for address in addresses:
        timer.evidence["address"] = address
        try:
            with timer.phase("connect"):
                return await asyncio.open_connection(address, port)
        except OSError as err:
            error = err
    raise CheckFailed(describe_os_error(error) if error else "name does not resolve")


async def handshake(
    timer: PhaseTimer, writer: asyncio.StreamWriter, context: ssl.SSLContext, server_name: str
) -> ssl.SSLObject:
    """Upgrade the connection to TLS, with `server_name` as SNI (Python sends none for an IP
    address). A rejected certificate raises `ssl.SSLCertVerificationError`, for the caller to
    explain; any other failure is a `CheckFailed`."""
    with timer.phase("tls"):
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


# --- TLS client contexts -------------------------------------------------------------------

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


# --- the words for failures ----------------------------------------------------------------

def describe_os_error(err: OSError) -> str:
    """A short reason a human understands, from a socket-level error."""
    if isinstance(err, socket.gaierror):
        if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return "name does not resolve"
        return f"name lookup failed: {err.strerror or err}"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset by peer"
    if err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    text = str(err)
    return text or type(err).__name__


def describe_ssl_error(err: ssl.SSLError) -> str:
    """OpenSSL's reason code in words ("wrong version number"), without the file and line."""
    if err.reason:
        return str(err.reason).lower().replace("_", " ")
    return str(err.args[1] if len(err.args) > 1 else err)


def tls_version_name(version: str | None) -> str | None:
    """Python's `TLSv1.3` as blackbox_exporter and people write it: `TLS 1.3`."""
    return version.replace("TLSv", "TLS ") if version else None

"""The network steps the check kinds share, and the words for their failures: resolving a name,
connecting to the first address that answers, the TLS handshake and the client contexts it
uses. http, tcp and tls connect through these, so that a failure means one thing and reads one
way whichever kind met it:

- a name that does not resolve, a refused or reset connection, a failed handshake: `down`;
- no file descriptors, buffers or memory left on this host (EMFILE, ENFILE, ENOBUFS, ENOMEM),
  or no such address family here, for every address: `unknown`, since the probe could not
  run, which says nothing of the target;
- a certificate OpenSSL refuses: "TLS certificate rejected: <why>".

A step that fails raises `CheckFailed`, which the kind's `run` turns into its Result.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Literal

from checks.base import PhaseTimer, Result, State

IpFamily = Literal["auto", "ipv4", "ipv6"]

# Errors that say this host cannot make the connection at all, whatever the target's health.
_LOCAL_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAFNOSUPPORT}
)
# The read limit of a connection's streams (asyncio's default): a longer line is an error.
STREAM_LIMIT = 64 * 1024
# OpenSSL's X509_V_ERR_* codes: the leaf signed itself, and "no trusted root for this chain".
_SELF_SIGNED_LEAF = 18
_UNKNOWN_ISSUER = frozenset({2, 19, 20, 21})


class CheckFailed(Exception):
    """What is wrong with the target (or, with state "unknown", with the check itself), found
    deep inside a check and turned into its Result by `run`."""

    def __init__(self, reason: str, state: State = "down") -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state

    def result(self, timer: PhaseTimer) -> Result:
        return timer.unknown(self.reason) if self.state == "unknown" else timer.down(self.reason)


class CertificateRejected(CheckFailed):
    """OpenSSL refused the server's certificate during the handshake; `error` says why, for a
    kind that looks further (tls fetches the certificate and says more)."""

    def __init__(self, error: ssl.SSLCertVerificationError) -> None:
        super().__init__(certificate_rejected(error))
        self.error = error


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
    timer: PhaseTimer, addresses: list[str], port: int, *, limit: int = STREAM_LIMIT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of `addresses` that accepts one, timed as the "connect" phase;
    evidence["address"] is the one being tried, then the one connected to.

    When none accepts, the reason is the first error that says something of the target
    (refused, unreachable, reset), and it is down. Only when every address failed for want of
    something on this host (`_LOCAL_ERRNOS`) is the check unknown."""
    errors: list[tuple[str, OSError]] = []
    for address in addresses:
        timer.evidence["address"] = address
        try:
            with timer.phase("connect"):
                return await asyncio.open_connection(address, port, limit=limit)
        except OSError as err:
            errors.append((address, err))
    if not errors:
        raise CheckFailed("name does not resolve")
    remote = [(address, err) for address, err in errors if err.errno not in _LOCAL_ERRNOS]
    address, error = (remote or errors)[0]
    timer.evidence["address"] = address
    raise CheckFailed(describe_os_error(error), "down" if remote else "unknown")


async def handshake(
    timer: PhaseTimer, writer: asyncio.StreamWriter, context: ssl.SSLContext, server_name: str
) -> ssl.SSLObject:
    """Upgrade the connection to TLS, timed as the "tls" phase, with `server_name` as SNI
    (Python sends none for an IP address). A rejected certificate raises `CertificateRejected`,
    any other failure a `CheckFailed`."""
    with timer.phase("tls"):
        try:
            await writer.start_tls(context, server_hostname=server_name.strip("[]"))
        except ssl.SSLCertVerificationError as err:
            raise CertificateRejected(err) from err
        except ssl.SSLError as err:
            raise CheckFailed(f"TLS handshake failed: {describe_ssl_error(err)}") from err
        except OSError as err:
            raise CheckFailed(f"TLS handshake failed: {describe_os_error(err)}") from err
    tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
    return tls


# --- TLS client contexts -------------------------------------------------------------------

def client_context(
    ca_file: Path | None, *, verify: bool, check_hostname: bool, alpn: tuple[str, ...] = ()
) -> ssl.SSLContext:
    """A client context that trusts `ca_file` (else the system's CAs), or verifies nothing;
    offering the `alpn` protocols, if any.

    Contexts are cached: loading the system's CAs costs more CPU than a handshake. The cache
    key has the file's mtime, so a renewed CA file is read again. A file that cannot be loaded
    is the check's own problem, not the target's: state "unknown".
    """
    if not verify:
        return _unverified_context(alpn)
    try:
        stamp = ca_file.stat().st_mtime_ns if ca_file else 0
        return _verifying_context(str(ca_file) if ca_file else None, stamp, check_hostname, alpn)
    except OSError as err:  # ssl.SSLError is one
        what = f"ca_file {ca_file}" if ca_file else "the system's CA certificates"
        raise CheckFailed(f"cannot load {what}: {err}", "unknown") from err


@functools.lru_cache(maxsize=8)
def _unverified_context(alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@functools.lru_cache(maxsize=64)
def _verifying_context(
    ca_file: str | None, _mtime: int, check_hostname: bool, alpn: tuple[str, ...]
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = check_hostname
    if alpn:
        context.set_alpn_protocols(alpn)
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
    text = str(err.args[1]) if len(err.args) > 1 else str(err)
    return text or type(err).__name__


def certificate_rejected(
    err: ssl.SSLCertVerificationError, *, self_issued: bool = False, issuer: str | None = None
) -> str:
    """A certificate OpenSSL refused, in the one wording every kind uses: "TLS certificate
    rejected: " and why. OpenSSL's words for "no trusted root" vary with its version and tell a
    human little, so those are said plainly; a kind that has the certificates (tls fetches
    them again) passes whether the leaf issued itself and who the chain's issuer is."""
    code = err.verify_code
    if code == _SELF_SIGNED_LEAF or (code in _UNKNOWN_ISSUER and self_issued):
        why = "self-signed certificate"
    elif code in _UNKNOWN_ISSUER:
        why = f"issued by an unknown CA ({issuer})" if issuer else "issued by an unknown CA"
    else:
        message = (err.verify_message or describe_ssl_error(err)).rstrip(".")
        why = message[:1].lower() + message[1:]
    return f"TLS certificate rejected: {why}"


def tls_version_name(version: str | None) -> str | None:
    """Python's `TLSv1.3` as blackbox_exporter and people write it: `TLS 1.3`."""
    return version.replace("TLSv", "TLS ") if version else None

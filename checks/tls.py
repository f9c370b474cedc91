"""The tls check: a handshake with host:port, the certificate chain verified, and how long the
certificate has left.

OpenSSL verifies the chain during the one handshake a healthy target costs. It then aborts the
handshake before we see the certificate, so for a rejected one a second handshake, without
verification, fetches it: every problem is then told in its own words ("certificate expired 3
days ago (2026-11-20)") rather than OpenSSL's, and the ticket still shows the certificate.
Dates and the host name are checked here, on the parsed certificate, so that `verify: false`
and `verify_hostname: false` each switch off only their own part. A chain OpenSSL refuses for
anything else reads as http and tcp word it ("TLS certificate rejected: self-signed
certificate"), with the unknown CA named.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import ipaddress
import ssl
from collections.abc import Iterator
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from checks.base import Gauge, Kind, PhaseTimer, Result, Spec
from checks.net import (
    CertificateRejected,
    CheckFailed,
    IpFamily,
    certificate_rejected,
    client_context,
    handshake,
    open_first,
    resolve_host,
    tls_version_name,
)
from checks.values import Duration, Port, ReadableFile

PHASES = ("resolve", "connect", "tls")


class TlsSpec(Spec):
    kind: ClassVar[str] = "tls"

    host: str
    port: Port = 443
    server_name: str | None = None
    min_days_left: int = 14
    verify: bool = True
    verify_hostname: bool = True
    ca_file: ReadableFile | None = None
    max_latency: Duration | None = None
    ip_family: IpFamily = "auto"

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


async def run(spec: TlsSpec, *, timeout: float) -> Result:
    timer = PhaseTimer(TlsSpec.kind, spec.target, PHASES)
    try:
        async with asyncio.timeout(timeout):
            chain, rejected = await _fetch_chain(spec, timer)
    except TimeoutError:
        return timer.timed_out(timeout)
    except CheckFailed as failed:
        return failed.result(timer)
    problem = _problem(spec, chain, rejected)
    if problem:
        return timer.down(problem)
    expiry = _expiry(spec, chain[0])
    if expiry:
        # The target still works: a ticket may say so, and take a lower priority than an outage.
        timer.evidence["expiring"] = True
        return timer.down(expiry)
    return timer.too_slow(spec.max_latency) or timer.up()


async def _fetch_chain(
    spec: TlsSpec, timer: PhaseTimer
) -> tuple[list[x509.Certificate], ssl.SSLCertVerificationError | None]:
    """The certificates the server sent, leaf first, and OpenSSL's verdict if it rejected them."""
    server_name = spec.server_name or spec.host
    context = client_context(spec.ca_file, verify=spec.verify, check_hostname=False)
    addresses = await resolve_host(timer, spec.host, spec.ip_family)
    rejected = None
    _, writer = await open_first(timer, addresses, spec.port)
    try:
        try:
            tls = await handshake(timer, writer, context, server_name)
        except CertificateRejected as refused:
            rejected = refused.error
            writer.close()
            _, writer = await open_first(timer, [timer.evidence["address"]], spec.port)
            unverified = client_context(None, verify=False, check_hostname=False)
            tls = await handshake(timer, writer, unverified, server_name)
        ders = tuple(_peer_chain(tls))
        cipher = tls.cipher()
        timer.evidence["tls_version"] = tls_version_name(tls.version())
        timer.evidence["cipher"] = cipher[0] if cipher else None
    finally:
        # Nothing was said over the connection: drop it rather than wait for the server's
        # answer to a close_notify (a round trip, and a wake-up, for nothing).
        writer.transport.abort()
    if not ders:
        raise CheckFailed("the server sent no certificate")
    chain, described = _read(ders)
    leaf_days = (chain[0].not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    timer.evidence.update(described, sans=list(described["sans"]), days_left=round(leaf_days, 2))
    return list(chain), rejected


@functools.lru_cache(maxsize=1024)
def _read(ders: tuple[bytes, ...]) -> tuple[tuple[x509.Certificate, ...], dict[str, Any]]:
    """The chain parsed and described, once per distinct chain: a server sends the same
    certificates on every check, and parsing them is a tenth of a check's CPU."""
    try:
        chain = tuple(x509.load_der_x509_certificate(der) for der in ders)
    except ValueError as err:
        raise CheckFailed("the server sent a certificate that cannot be parsed") from err
    return chain, _describe(chain)


def _peer_chain(tls: ssl.SSLObject) -> list[bytes]:
    """The certificates as sent (DER), leaf first. Python 3.13 made this public; 3.10 to 3.12
    have the same call on the private object, which beats reporting a chain of one."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return list(public() or ())
    private = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if private is not None:
        der = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
        return [cert.public_bytes(der) for cert in private() or ()]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _problem(
    spec: TlsSpec, chain: list[x509.Certificate], rejected: ssl.SSLCertVerificationError | None
) -> str | None:
    """The first thing wrong with the certificate, in the order a human would fix them; that
    it expires soon comes after all of them (`_expiry`)."""
    leaf = chain[0]
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now < not_before:
        return f"certificate is not valid until {not_before.date()}"
    if now > not_after:
        return f"certificate expired {_span(now - not_after)} ago ({not_after.date()})"
    if rejected is not None:
        return certificate_rejected(rejected, self_issued=leaf.issuer == leaf.subject,
                                    issuer=_printable(chain[-1].issuer.rfc4514_string()))
    name = (spec.server_name or spec.host).strip("[]")
    if spec.verify_hostname and not _matches(name, _names(leaf)):
        names = _names(leaf)
        shown = ", ".join(map(_printable, names[:3]))
        shown += f" and {len(names) - 3} more" if len(names) > 3 else ""
        return f"certificate is for {shown or 'no host name'}, not {name}"
    return None


def _expiry(spec: TlsSpec, leaf: x509.Certificate) -> str | None:
    """That a certificate, good otherwise, expires within `min_days_left`."""
    left = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left < dt.timedelta(days=spec.min_days_left):
        return f"certificate expires in {_span(left)} ({leaf.not_valid_after_utc.date()})"
    return None


def _printable(text: str) -> str:
    """Text the server chose (a name in its certificate) as it may stand in a one-line reason:
    a line break or a NUL escaped, not obeyed."""
    return text if text.isprintable() else repr(text)[1:-1]


def _span(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    if days >= 1:
        return f"{round(days)} day" + ("s" if round(days) != 1 else "")
    hours = max(1, round(days * 24))
    return f"{hours} hour" + ("s" if hours != 1 else "")


@functools.lru_cache(maxsize=1024)  # the same (cached) leaf every check of a server
def _names(cert: x509.Certificate) -> tuple[str, ...]:
    """The names a certificate is for: its SANs, or (only when it has none) its common name."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    except x509.DuplicateExtension as err:  # parsed when first asked for, not with the rest
        raise CheckFailed(f"certificate has the {_oid_name(err.oid)} extension twice") from err
    except ValueError as err:
        raise CheckFailed("certificate has an extension that cannot be parsed") from err
    return (
        *sans.get_values_for_type(x509.DNSName),
        *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)),
    )


def _matches(name: str, names: tuple[str, ...]) -> bool:
    """RFC 6125 matching: exact, or a wildcard standing for the whole leftmost label."""
    try:
        return str(ipaddress.ip_address(name)) in names
    except ValueError:
        pass
    with contextlib.suppress(UnicodeError):
        name = name.encode("idna").decode()  # certificates carry the xn-- form
    name = name.lower().rstrip(".")
    label, _, parent = name.partition(".")
    for pattern in names:
        pattern = pattern.lower().rstrip(".")
        if pattern == name or (pattern.startswith("*.") and label and pattern[2:] == parent):
            return True
    return False


def _describe(chain: tuple[x509.Certificate, ...]) -> dict[str, Any]:
    """What the evidence says of a chain, but for the days left (which change)."""
    leaf = chain[0]
    key_type, key_size = _key(leaf)
    serial = leaf.serial_number
    size = (serial.bit_length() + (8 if serial < 0 else 7)) // 8  # RFC 5280 forbids < 0; some do
    return {
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "sans": list(_names(leaf)),
        "not_before": _iso(leaf.not_valid_before_utc),
        "not_after": _iso(leaf.not_valid_after_utc),
        "days_left": None,
        "key_type": key_type,
        "key_size": key_size,
        "serial": serial.to_bytes(max(1, size), "big", signed=serial < 0).hex(":").upper(),
        "sha256_fingerprint": leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
        "chain_length": len(chain),
    }


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = getattr(oid, "_name", None)  # cryptography's name for the OIDs it knows
    return name if isinstance(name, str) and name != "Unknown OID" else oid.dotted_string


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(cert: x509.Certificate) -> tuple[str, int]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ECDSA", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, 0


# --- what /metrics and a ticket's triage see -----------------------------------------------

def gauges(result: Result) -> Iterator[Gauge]:
    """blackbox_exporter's probe_ssl_last_chain_info (the expiry is every kind's series)."""
    ev = result.evidence
    if "sha256_fingerprint" in ev:
        yield Gauge(
            "probe_ssl_last_chain_info", "Contains SSL leaf certificate information", 1,
            {
                "fingerprint_sha256": str(ev["sha256_fingerprint"]).replace(":", "").lower(),
                "issuer": str(ev.get("issuer", "")),
                "subject": str(ev.get("subject", "")),
                "subjectalternative": ",".join(map(str, ev.get("sans", []))),
            },
        )


def endpoint(spec: TlsSpec) -> tuple[str | None, int | None]:
    return spec.host, spec.port


KIND = Kind(spec=TlsSpec, run=run, phases=PHASES,
            phase_metric="probe_tls_duration_seconds", gauges=gauges, endpoint=endpoint)

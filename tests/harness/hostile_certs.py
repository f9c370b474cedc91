"""Certificates no CA should issue, for the tls and http checks to meet: odd extensions, a
negative serial, a duplicated extension, an undecodable SAN, long chains, big keys.

`cryptography`'s builder refuses to make some of them, so those are made from a proper one by
editing its DER (the to-be-signed part) and signing it again with the issuer's key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from tests.harness.certs import CertFactory, Issued, PrivateKey

HOSTS = ("localhost", "127.0.0.1")


def leaf(
    certs: CertFactory,
    *,
    sans: list[x509.GeneralName] | None = None,
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    key: PrivateKey | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    issuer: Issued | None = None,
    stem: str = "odd",
) -> Issued:
    """A leaf for `HOSTS` signed by `issuer` (the test CA), with what is asked changed."""
    signer = issuer or certs.ca
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    if sans is None:
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(signer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()), False
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return certs.save(builder.sign(signer.key, hashes.SHA256()), key, stem)


def big_rsa_leaf(certs: CertFactory, bits: int = 4096) -> Issued:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return leaf(certs, key=key, stem=f"rsa{bits}")


def chain(certs: CertFactory, length: int, *, expired_at: int | None = None) -> list[Issued]:
    """`length` intermediates under the test CA, the last one first (the order a server sends
    them in); the one at depth `expired_at` (0: right under the CA) expired an hour ago."""
    made: list[Issued] = []
    now = dt.datetime.now(dt.UTC)
    for depth in range(length):
        expired = now - dt.timedelta(hours=1) if depth == expired_at else None
        made.append(certs.make_intermediate(f"probe test intermediate {depth}",
                                            made[-1] if made else None,
                                            path_length=None, not_after=expired))
    return made[::-1]


# --- DER surgery ---------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _elements(der: bytes) -> list[bytes]:
    """The TLVs inside a constructed value's content, each whole (tag, length and content)."""
    out, at = [], 0
    while at < len(der):
        size, head = der[at + 1], 2
        if size & 0x80:
            count = size & 0x7F
            size, head = int.from_bytes(der[at + 2 : at + 2 + count], "big"), 2 + count
        out.append(der[at : at + head + size])
        at += head + size
    return out


def _content(tlv: bytes) -> bytes:
    size, head = tlv[1], 2
    if size & 0x80:
        head = 2 + (size & 0x7F)
    return tlv[head:]


def edited(
    certs: CertFactory, issued: Issued, signer: Issued, edit: Callable[[list[bytes]], list[bytes]],
    stem: str,
) -> Issued:
    """`issued` with the elements of its to-be-signed part changed by `edit`, signed again
    by `signer` (its issuer)."""
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    tbs, algorithm, _ = _elements(_content(der))
    new_tbs = _tlv(0x30, b"".join(edit(_elements(_content(tbs)))))
    key = signer.key
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(new_tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    cert_der = _tlv(0x30, new_tbs + algorithm + _tlv(0x03, b"\x00" + signature))
    return certs.save(x509.load_der_x509_certificate(cert_der), issued.key, stem)


def with_negative_serial(certs: CertFactory) -> Issued:
    def negative(parts: list[bytes]) -> list[bytes]:
        version, _serial, *rest = parts
        return [version, _tlv(0x02, b"\xff\x10\x20\x30"), *rest]

    return edited(certs, leaf(certs), certs.ca, negative, "negative-serial")


def with_junk_san(certs: CertFactory) -> Issued:
    """A SAN extension whose value is no GeneralNames (a BOOLEAN of the same length)."""
    good = x509.SubjectAlternativeName([x509.DNSName("x")]).public_bytes()

    def junk(parts: list[bytes]) -> list[bytes]:
        *head, extensions = parts
        assert extensions.count(good) == 1
        return [*head, extensions.replace(good, b"\x01\x03abc")]

    return edited(certs, leaf(certs, sans=[x509.DNSName("x")]), certs.ca, junk, "junk-san")


def with_duplicate_extension(certs: CertFactory) -> Issued:
    def duplicate(parts: list[bytes]) -> list[bytes]:
        *head, explicit = parts  # [3] { SEQUENCE OF Extension }
        extensions = _elements(_content(_content(explicit)))
        doubled = _tlv(0x30, b"".join([*extensions, extensions[0]]))
        return [*head, _tlv(0xA3, doubled)]

    return edited(certs, leaf(certs), certs.ca, duplicate, "duplicate-extension")

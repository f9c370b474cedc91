"""Certificates made for the tests with `cryptography`: a CA, and leaf certificates that are
valid, expired, not yet valid, about to expire, self-signed, for another host, RSA or ECDSA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey
    cert_file: Path
    key_file: Path

    def server_context(self, chain: tuple[Issued, ...] = ()) -> ssl.SSLContext:
        """An SSLContext that serves this certificate (and `chain` after it)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if chain:
            bundle = self.cert_file.with_suffix(".chain.pem")
            bundle.write_bytes(
                b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (self, *chain))
            )
            ctx.load_cert_chain(bundle, self.key_file)
        else:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class CertFactory:
    """Writes keys and certificates into `directory`; `ca` signs what `issue` makes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._n = 0
        self.ca = self.make_ca("probe test CA")

    def _write(self, cert: x509.Certificate, key: PrivateKey, stem: str) -> Issued:
        self._n += 1
        cert_file = self.directory / f"{self._n}-{stem}.pem"
        key_file = self.directory / f"{self._n}-{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Issued(cert, key, cert_file, key_file)

    def make_ca(self, common_name: str, key_type: str = "ecdsa") -> Issued:
        key = _key(key_type)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return self._write(cert, key, "ca")

    def issue(
        self,
        hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
        *,
        key_type: str = "ecdsa",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        days: float = 90,
        issuer: Issued | None = None,
        self_signed: bool = False,
        ca: bool = False,
    ) -> Issued:
        """A certificate for `hosts` (names and IP addresses), signed by `issuer` (the test
        CA by default) or by itself, valid from `not_before` for `days` unless `not_after`."""
        key = _key(key_type)
        now = dt.datetime.now(dt.UTC)
        start = not_before or now - dt.timedelta(hours=1)
        end = not_after or now + dt.timedelta(days=days)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        signer = None if self_signed else issuer or self.ca
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(signer.cert.subject if signer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if signer:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()), False
            )
        cert = builder.sign(signer.key if signer else key, hashes.SHA256())
        return self._write(cert, key, hosts[0].replace(":", "_"))

    def save(self, cert: x509.Certificate, key: PrivateKey, stem: str) -> Issued:
        """Write a certificate made elsewhere (by hand, to be odd) with its key."""
        return self._write(cert, key, stem)

    def make_intermediate(
        self,
        common_name: str,
        issuer: Issued | None = None,
        *,
        path_length: int | None = 0,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """A CA certificate signed by `issuer` (the test CA by default), with the key usage and
        key identifiers that strict verifiers (Python 3.13's X509_STRICT) insist on."""
        signer = issuer or self.ca
        key = _key("ecdsa")
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(signer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(not_after or now + dt.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                           critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()), False
            )
            .sign(signer.key, hashes.SHA256())
        )
        return self._write(cert, key, "intermediate")

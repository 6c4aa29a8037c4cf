"""Test certificates made with the ``cryptography`` package: a CA, a server
certificate for localhost / 127.0.0.1 / ::1 and a client certificate signed
by it, and an unrelated CA (to show a server the client must not trust)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Pair:
    cert: bytes
    key: bytes


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, server: bool) -> Pair:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass(frozen=True)
class Certs:
    """PEM bytes, and the same written to files in ``folder``."""

    folder: Path
    ca: bytes
    server: Pair
    client: Pair
    other_ca: bytes

    def path(self, name: str) -> str:
        return str(self.folder / name)


def make(folder: Path) -> Certs:
    """Writes ca.pem, server.pem, server-key.pem, client.pem, client-key.pem
    (the names `tandem-orchestrator dev-certs` uses) and other-ca.pem."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca("tandem test CA")
    other = _ca("some other CA")
    certs = Certs(
        folder=folder,
        ca=ca[0].public_bytes(serialization.Encoding.PEM),
        server=_leaf(ca, "tandem test server", server=True),
        client=_leaf(ca, "tandem-test-client", server=False),
        other_ca=other[0].public_bytes(serialization.Encoding.PEM),
    )
    for name, data in (
        ("ca.pem", certs.ca),
        ("server.pem", certs.server.cert),
        ("server-key.pem", certs.server.key),
        ("client.pem", certs.client.cert),
        ("client-key.pem", certs.client.key),
        ("other-ca.pem", certs.other_ca),
    ):
        (folder / name).write_bytes(data)
    return certs

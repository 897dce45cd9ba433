"""A throwaway PKI for the TLS tests, made fresh by each test module with `cryptography`.

EC P-256 keys: a handshake costs a fraction of an RSA one, which counts on a loaded 2-core
machine. The certificates meet OpenSSL's strict X.509 checks (key identifiers, critical basic
constraints), so newer Pythons that turn those on accept them too.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOSTS = ("localhost", "127.0.0.1")  # what the server certificates are valid for
OTHER_HOST = "127.0.0.2"  # on loopback too, and in no certificate
VALID = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed every certificate below
    other_ca: Path  # a CA that signed none of them: trusting it alone is the wrong CA
    server: Pair  # valid now, for HOSTS
    expired: Pair  # for HOSTS, expired a day ago
    client: Pair  # a client certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    hosts: tuple[str, ...] = (),
    expires_in: datetime.timedelta = VALID,
) -> x509.Certificate:
    """A CA certificate when `issuer` is None (self-signed), else a leaf it signs."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(subject) if issuer_cert is None else issuer_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, now + expires_in) - VALID)
        .not_valid_after(now + expires_in)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    if hosts:
        names = [
            x509.IPAddress(ipaddress.ip_address(host)) if host[0].isdigit() else x509.DNSName(host)
            for host in hosts
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(folder: Path) -> Pki:
    """Every file of a Pki, written into `folder`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("stockkeeper test CA", ca_key, None)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_cert = _certificate("another test CA", other_key, None)

    def leaf(
        name: str, hosts: tuple[str, ...] = (), expires_in: datetime.timedelta = VALID
    ) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, (ca_cert, ca_key), hosts=hosts, expires_in=expires_in)
        return Pair(
            _write_cert(folder / f"{name}.crt", cert), _write_key(folder / f"{name}.key", key)
        )

    return Pki(
        ca=_write_cert(folder / "ca.crt", ca_cert),
        other_ca=_write_cert(folder / "other-ca.crt", other_cert),
        server=leaf("server", hosts=HOSTS),
        expired=leaf("expired", hosts=HOSTS, expires_in=-VALID),
        client=leaf("client"),
    )


def postgres_url(
    port: int, root: Path | None, sslmode: str = "verify-full", host: str = "127.0.0.1"
) -> str:
    """A libpq-style URL of the private TLS PostgreSQL, trusting the CA at `root`."""
    url = f"postgresql://postgres@{host}:{port}/postgres?sslmode={sslmode}"
    return url if root is None else f"{url}&sslrootcert={root}"

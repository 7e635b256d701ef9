"""Throwaway self-signed certificates for the tests' loopback servers (never deployed)."""

from __future__ import annotations

import datetime
from ipaddress import ip_address
from pathlib import Path


def self_signed(directory: Path, common_name: str, *, ips: tuple[str, ...] = (), dns: tuple[str, ...] = (),
                stem: str = "cert") -> tuple[Path, Path]:
    """A one-day EC certificate (also its own CA) for `ips` and `dns`; returns (cert.pem, key.pem) paths, the
    key 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.IPAddress(ip_address(ip)) for ip in ips] + [x509.DNSName(host) for host in dns]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path

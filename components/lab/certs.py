"""Self-signed certificates made at run time, for the lab and the tests.

A closed lab cannot get certificates from Let's Encrypt, and committed key material
would be a secret in the repository; so every TLS endpoint of the lab or of a test
gets a fresh EC key and certificate in its own folder, with the key file 0600."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.tools import home_files


class SelfSigned(NamedTuple):
    cert: Path
    key: Path
    sha256: str
    """SHA-256 of the DER certificate: what a client that pins it compares."""


def self_signed(hostnames: Iterable[str], directory: Path, stem: str = "test", valid_days: float = 2) -> SelfSigned:
    """A certificate for ``hostnames`` (the first is the subject; an IP address is named
    as one, for a server that clients reach by address), written to
    ``directory/<stem>.crt`` and ``.key``, valid for two days: long enough for any
    lab session, short enough to be worthless if a copy is left behind.  Another
    ``valid_days`` makes one close to its end (or past it, below zero), for the
    alert on expiring certificates."""
    hostnames = list(hostnames)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(days=valid_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - datetime.timedelta(minutes=5), end - datetime.timedelta(days=1)))
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hostnames]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    home_files.write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return SelfSigned(cert_path, key_path, hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest())


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)

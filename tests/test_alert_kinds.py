"""The alert daemon's looks at its own edge, with the real script imported as a module:
the certificate its Traefik serves for each ``http`` hostname (read from the DER, as
Debian's python3 must), each found fault's text, and an edge's own faults sent by that
edge whether it leads or not."""

from __future__ import annotations

import datetime
import importlib.util
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from components.lab.certs import self_signed
from components.renderers import templates

_spec = importlib.util.spec_from_file_location("cgnat_edge_alerts", templates.DIRECTORY / "cgnat-edge-alerts.py")
assert _spec and _spec.loader
alerts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(alerts)

UTC = datetime.UTC
CFG: dict[str, Any] = {
    "stack": "cgnat-edge/test",
    "edge": "ams",
    "edges": [],
    "services": {},
    "certs": [],
    "certDays": 14,
    "certPort": 443,
    "timeout": 3,
}


def _der(not_after: datetime.datetime, *, rsa_key: bool = False, not_before: datetime.datetime | None = None) -> bytes:
    key: Any = rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloud.example.org")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or datetime.datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


# -- reading notAfter from the DER ------------------------------------------------------------


@pytest.mark.parametrize(
    ("end", "rsa_key"),
    [
        (datetime.datetime(2030, 6, 15, 12, 30, 45, tzinfo=UTC), False),  # UTCTime, 20xx
        (datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), True),  # UTCTime's last year; long lengths
        (datetime.datetime(2050, 1, 1, 0, 0, 1, tzinfo=UTC), False),  # GeneralizedTime from 2050 on
        (datetime.datetime(2120, 2, 29, 8, 0, 0, tzinfo=UTC), True),
    ],
)
def test_not_after_is_read_from_the_der_as_cryptography_wrote_it(end: datetime.datetime, rsa_key: bool):
    der = _der(end, rsa_key=rsa_key)
    assert x509.load_der_x509_certificate(der).not_valid_after_utc == end
    assert alerts.not_after(der) == end.timestamp()


def test_a_utctime_before_2000_is_read_in_the_last_century():
    end = datetime.datetime(1999, 3, 1, tzinfo=UTC)
    der = _der(end, not_before=datetime.datetime(1998, 1, 1, tzinfo=UTC))
    assert alerts.not_after(der) == end.timestamp()


def test_what_is_not_a_certificate_is_a_value_error():
    der = _der(datetime.datetime(2030, 1, 1, tzinfo=UTC))
    for broken in (der[:40], b"\x30\x03\x02\x01\x01", b""):
        with pytest.raises((ValueError, IndexError)):
            alerts.not_after(broken)


def test_the_labs_certificate_ends_when_asked(tmp_path: Path):
    made = self_signed(["cloud.example.org"], tmp_path, "soon", valid_days=3)
    end = x509.load_pem_x509_certificate(made.cert.read_bytes()).not_valid_after_utc
    now = datetime.datetime.now(UTC)
    assert abs((end - now) - datetime.timedelta(days=3)) < datetime.timedelta(minutes=1)
    gone = self_signed(["cloud.example.org"], tmp_path, "gone", valid_days=-1)
    past = x509.load_pem_x509_certificate(gone.cert.read_bytes())
    assert past.not_valid_after_utc < now and past.not_valid_before_utc < past.not_valid_after_utc


# -- the certificate a TLS server serves, by SNI ----------------------------------------------


@pytest.fixture
def traefik(tmp_path: Path) -> Iterator[int]:
    """A TLS server on loopback that serves each hostname its own certificate, like
    Traefik's websecure entrypoint: cloud's ends in 3 days, blog's in 60, anything else
    gets a default one (Traefik's own, when no router matches)."""
    contexts = {}
    for host, days in (("cloud.example.org", 3), ("blog.example.org", 60), ("default", 365)):
        made = self_signed([host], tmp_path, host, valid_days=days)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(made.cert, made.key)
        contexts[host] = context

    def pick(sock: Any, name: Any, _context: ssl.SSLContext) -> None:
        sock.context = contexts.get(name or "", contexts["default"])

    server_context = contexts["default"]
    server_context.sni_callback = pick
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def test_served_cert_is_the_one_for_the_hostname_asked(traefik: int):
    for host, cn in (("cloud.example.org", "cloud.example.org"), ("other.example.org", "default")):
        der = alerts.served_cert(host, traefik, 3)
        subject = x509.load_der_x509_certificate(der).subject
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn


def test_only_a_certificate_within_cert_days_is_a_fault(traefik: int):
    cfg = {**CFG, "certs": ["blog.example.org", "cloud.example.org"], "certPort": traefik}
    now = datetime.datetime.now(UTC).timestamp()
    found = alerts.cert_faults(cfg, now)
    assert list(found) == ["cert-expiry:cloud.example.org"]
    assert found["cert-expiry:cloud.example.org"].startswith("It ends ")
    assert found["cert-expiry:cloud.example.org"].endswith("(in 71 h 59 min).")
    assert list(alerts.cert_faults({**cfg, "certDays": 61}, now)) == [
        "cert-expiry:blog.example.org",
        "cert-expiry:cloud.example.org",
    ]
    # 4 days on, cloud's has ended: said so, not as a time to come.
    later = alerts.cert_faults(cfg, now + 4 * 86400)
    assert re.search(r"\((23 h 59|24 h 0) min ago\)\.$", later["cert-expiry:cloud.example.org"])


def test_a_traefik_that_does_not_answer_is_no_certificate_fault():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    cfg = {**CFG, "certs": ["cloud.example.org"], "certPort": port}
    assert alerts.cert_faults(cfg, 0) == {}


def test_the_certificate_message_names_the_edge_the_host_its_end_and_the_fix():
    event = ("firing", "cert-expiry:cloud.example.org", 1_700_000_000, 1_700_000_060)
    msg = alerts.message(CFG, event, "It ends 2023-11-20 00:00:00 UTC (in 5 days).")
    assert msg["title"] == "[cgnat-edge/test] The certificate edge ams serves for cloud.example.org expires soon"
    assert msg["message"].startswith("Since 2023-11-14 22:13:20 UTC (60 s). It ends 2023-11-20 00:00:00 UTC (in 5")
    assert "journalctl -u 'traefik@*'" in msg["message"] and msg["message"].endswith("(Reported by edge ams.)")
    assert msg["kind"] == "cert-expiry" and msg["subject"] == "cloud.example.org" and msg["edge"] == "ams"
    done = alerts.message(CFG, ("resolved", "cert-expiry:cloud.example.org", 1_700_000_000, 1_700_003_600))
    assert done["title"] == "[cgnat-edge/test] Resolved: edge ams serves a renewed certificate for cloud.example.org"

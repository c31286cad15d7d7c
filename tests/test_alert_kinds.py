"""The alert daemon's looks at its own edge, with the real script imported as a module:
the certificate its Traefik serves for each ``http`` hostname (read from the DER, as
Debian's python3 must), each found fault's text, and an edge's own faults sent by that
edge whether it leads or not."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import socket
import ssl
import subprocess
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


# -- the push, the upgrades, the protection ---------------------------------------------------

NOW = 1_700_000_000.0
HOUR = 3600.0


def _aged(path: Path, text: str, age_s: float) -> Path:
    path.write_text(text)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def test_a_rolled_back_push_is_a_fault_until_a_push_is_ok(tmp_path: Path):
    record = tmp_path / "push-result.json"
    cfg = {**CFG, "push": str(record)}
    assert alerts.push_faults(cfg, NOW) == {}, "no push recorded yet"
    reason = "the edge does not run the new configuration (see DIFFERS above)"
    record.write_text(json.dumps({"result": "rolled-back", "at": 1_699_999_000, "reason": reason}))
    assert alerts.push_faults(cfg, NOW) == {
        "push-rolled-back:ams": f"The push at 2023-11-14 21:56:40 UTC failed: {reason}."
    }
    record.write_text(json.dumps({"result": "ok", "at": 1_699_999_900, "reason": ""}))
    assert alerts.push_faults(cfg, NOW) == {}
    record.write_text("{half a file")
    assert alerts.push_faults(cfg, NOW) == {}


def test_a_reboot_waiting_past_its_hours_is_a_fault_naming_the_packages(tmp_path: Path):
    flag = tmp_path / "reboot-required"
    cfg = {**CFG, "reboot": {"file": str(flag), "hours": 30}}
    assert alerts.upgrade_faults(cfg, NOW, 1e6) == {}, "nothing waits"
    _aged(flag, "*** System restart required ***\n", 29 * HOUR)
    assert alerts.upgrade_faults(cfg, NOW, 1e6) == {}, "tonight's reboot is still to come"
    _aged(flag, "*** System restart required ***\n", 31 * HOUR)
    (tmp_path / "reboot-required.pkgs").write_text("linux-image-6.1.0-30-arm64\nlibc6\nlibc6\n")
    assert alerts.upgrade_faults(cfg, NOW, 1e6) == {
        "reboot-required:ams": "Updates (libc6, linux-image-6.1.0-30-arm64) have waited 31 h 0 min for it."
    }


def test_upgrades_fail_when_no_run_succeeded_for_their_hours(tmp_path: Path):
    stamp = tmp_path / "unattended-upgrades-stamp"
    cfg = {**CFG, "upgrades": {"stamp": str(stamp), "hours": 48}}
    assert alerts.upgrade_faults(cfg, NOW, 47 * HOUR) == {}, "no stamp, but booted less than 48 h ago"
    assert alerts.upgrade_faults(cfg, NOW, 50 * HOUR) == {
        "upgrades-failing:ams": "No run has succeeded since the edge booted 50 h 0 min ago."
    }
    _aged(stamp, "", 20 * HOUR)
    assert alerts.upgrade_faults(cfg, NOW, 1e6) == {}
    _aged(stamp, "", 49 * HOUR)
    assert alerts.upgrade_faults(cfg, NOW, 1e6) == {
        "upgrades-failing:ams": "The last run that succeeded was 49 h 0 min ago."
    }


def test_country_lists_not_fetched_for_their_hours_are_a_fault_with_the_last_error(tmp_path: Path):
    status = tmp_path / "status.json"
    cfg = {**CFG, "geo": {"status": str(status), "hours": 48}}
    assert alerts.protection_faults({**CFG, "geo": None}, NOW, 1e6) == {}, "geo off: never looked at"
    assert alerts.protection_faults(cfg, NOW, HOUR) == {}, "just booted: the first refresh is still to come"
    assert alerts.protection_faults(cfg, NOW, 49 * HOUR) == {"geo-stale:ams": "They were never fetched."}
    status.write_text(json.dumps({"ok": True, "fetched": NOW - 21 * HOUR, "error": ""}))
    assert alerts.protection_faults(cfg, NOW, 1e6) == {}
    error = "https://ftp.ripe.net/...: timed out"
    status.write_text(json.dumps({"ok": False, "fetched": NOW - 50 * HOUR, "error": error}))
    assert alerts.protection_faults(cfg, NOW, 1e6) == {
        "geo-stale:ams": f"They were last fetched 50 h 0 min ago. The last attempt: {error}"
    }


def test_crowdsec_down_names_the_units_that_do_not_run():
    units = ["crowdsec.service", "crowdsec-firewall-bouncer.service"]
    cfg = {**CFG, "crowdsec": units}
    running = {"crowdsec.service": True, "crowdsec-firewall-bouncer.service": False}
    assert alerts.protection_faults(cfg, NOW, 1e6, active=running.__getitem__) == {
        "crowdsec-down:ams": "Not running: crowdsec-firewall-bouncer.service."
    }
    assert alerts.protection_faults(cfg, NOW, 1e6, active=lambda u: True) == {}
    assert alerts.protection_faults({**CFG, "crowdsec": None}, NOW, 1e6, active=lambda u: False) == {}

    def broken(unit: str) -> bool:
        raise subprocess.TimeoutExpired("systemctl", 10)

    assert alerts.protection_faults(cfg, NOW, 1e6, active=broken) == {}, "no answer is no fact"


@pytest.mark.parametrize(
    ("kind", "title", "todo", "resolved"),
    [
        (
            "push-rolled-back",
            "A push to edge ams failed and was rolled back",
            "pulumi up",
            "a push to edge ams succeeded",
        ),
        ("reboot-required", "Edge ams waits for a reboot after updates", "sudo reboot", "edge ams rebooted"),
        ("upgrades-failing", "Unattended upgrades fail on edge ams", "unattended-upgrade -d", "succeed again"),
        ("geo-stale", "The country lists on edge ams are not refreshing", "cgnat-edge-geo-sets", "fresh again"),
        ("crowdsec-down", "CrowdSec is not running on edge ams", "systemctl status crowdsec", "runs again"),
    ],
)
def test_each_kind_says_what_which_edge_and_what_to_do(kind: str, title: str, todo: str, resolved: str):
    msg = alerts.message(CFG, ("firing", f"{kind}:ams", NOW, NOW + 60), "The detail.")
    assert msg["title"] == f"[cgnat-edge/test] {title}"
    assert msg["message"].startswith("Since 2023-11-14 22:13:20 UTC (60 s). The detail. ")
    assert todo in msg["message"] and msg["subject"] == "ams" and msg["kind"] == kind
    done = alerts.message(CFG, ("resolved", f"{kind}:ams", NOW, NOW + 600), "")
    assert resolved in done["title"] and "lasted 10 min" in done["message"]


def test_a_rolled_back_push_is_announced_once_and_a_waiting_reboot_is_reminded():
    inc = alerts.Incidents(after=60, reminder=3600, interval=2)
    faults = {"push-rolled-back:ams", "reboot-required:ams"}
    events = [e for t in range(0, 3 * 3600, 60) for e in inc.update(faults, NOW + t)]
    assert [(e[0], e[1]) for e in events if e[1].startswith("push")] == [("firing", "push-rolled-back:ams")]
    assert [e[0] for e in events if e[1].startswith("reboot")] == ["firing", "reminder", "reminder"]


def test_an_edge_sends_its_own_incidents_whether_it_leads_or_not():
    cfg = {**CFG, "edge": "ams", "after": 60, "reminder": 0, "interval": 2}
    fleet, own = alerts.Incidents(60, 0, 2), alerts.Incidents(60, 0, 2)
    mine = {"cert-expiry:cloud.example.org": "It ends soon."}
    for t in (0, 60):
        sent = alerts.decide(cfg, fleet, own, {"tunnel-down:hel"}, mine, "fsn", NOW + t)
    assert [(m["kind"], m["edge"]) for m in sent] == [("cert-expiry", "ams")], "fsn leads: hel's tunnel is fsn's"
    assert "It ends soon." in sent[0]["message"]
    assert set(fleet.open) == {"tunnel-down:hel"}, "kept, to send its resolved message if the lead comes here"


def test_is_active_reads_what_systemctl_says(tmp_path: Path, monkeypatch):
    """A fake systemctl first on PATH: its words decide, and a systemctl that cannot ask
    systemd is no fact (not a CrowdSec that is down)."""
    fake = tmp_path / "systemctl"
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    for said, code, expected in (("active", 0, True), ("failed", 3, False), ("inactive", 3, False)):
        fake.write_text(f"#!/bin/sh\necho {said}\nexit {code}\n")
        fake.chmod(0o755)
        assert alerts.is_active("crowdsec.service") is expected
    fake.write_text("#!/bin/sh\necho 'Failed to connect to bus' >&2\nexit 1\n")
    with pytest.raises(subprocess.SubprocessError):
        alerts.is_active("crowdsec.service")

"""Alerts from the configuration to the edge's files: the channels' secrets refused in
plain text and checked without being repeated, carried only in the push (a root-only
file, never user data, never a plain output), and the daemon's view of the fleet."""

from __future__ import annotations

import json
import os

import pytest

from components import config
from components.config import alerts as alert_config
from components.config.keys import SECRET_SET
from components.model import edge_contract
from components.model.alerts import SmtpSecurity
from components.renderers import alerts, bundle, edge_dns
from components.tools import offline
from tests.support import DEV_STACK, stack_raw


def _raw(**extra) -> dict:
    return {**stack_raw(DEV_STACK), **extra}


def test_no_channel_means_no_alerts():
    assert config.parse(_raw()).alerts is None
    assert config.parse(_raw(alertAfterSeconds=30)).alerts is None


def test_channels_and_thresholds_are_read():
    cfg = config.parse(
        _raw(
            alertNtfyUrl=SECRET_SET,
            alertSmtpServer="smtp.example.org:465",
            alertSmtpSecurity="tls",
            alertSmtpFrom="edges@example.org",
            alertSmtpTo=["me@example.org"],
            alertAfterSeconds="30",
            alertReminderHours=0,
            alertCertDays="7",
        )
    )
    assert cfg.alerts is not None
    assert cfg.alerts.channels == ("ntfy", "smtp")
    assert (cfg.alerts.after_s, cfg.alerts.reminder_s, cfg.alerts.cert_days) == (30, 0, 7)
    smtp = cfg.alerts.smtp
    assert smtp is not None
    assert (smtp.host, smtp.port, smtp.security, smtp.user) == ("smtp.example.org", 465, SmtpSecurity.TLS, None)
    default = config.parse(_raw(alertWebhookUrl=SECRET_SET)).alerts
    assert default is not None and (default.after_s, default.reminder_s, default.cert_days) == (60, 6 * 3600, 14)
    relay = config.parse(
        _raw(alertSmtpServer="192.0.2.25", alertSmtpFrom="edges@example.org", alertSmtpTo=["me@example.org"])
    ).alerts
    assert relay is not None and relay.smtp is not None and (relay.smtp.host, relay.smtp.port) == ("192.0.2.25", 587)


GOOD = {
    "alertNtfyUrl": "https://ntfy.sh/cgnat-edge-7f3a9c2e",
    "alertWebhookUrl": "https://discord.com/api/webhooks/1234/AbC-dEf_9?wait=true",
}


def test_good_channel_urls_pass():
    assert alert_config.secret_url_problems(GOOD) == []
    assert alert_config.secret_url_problems({"alertWebhookUrl": "https://hooks.slack.com/services/T0/B0/xyz"}) == []


@pytest.mark.parametrize(
    ("key", "url", "expected"),
    [
        ("alertNtfyUrl", "http://ntfy.sh/topic-4f9a", "is not an https:// URL (it starts with http)"),
        ("alertNtfyUrl", "https://ntfy.sh/a/b", "is not a topic URL"),
        ("alertNtfyUrl", "https://ntfy.sh/", "is not a topic URL"),
        ("alertNtfyUrl", "https://ntfy.sh/topic-4f9a?auth=x", "is not a topic URL"),
        ("alertWebhookUrl", "https://user:pw@hooks.example.org/x", "carries a user name or password"),
        ("alertWebhookUrl", "https://hooks.example.org/x#zq9", "has a fragment"),
        ("alertWebhookUrl", "https://hooks.example.org/a b", "contains whitespace"),
        ("alertWebhookUrl", "hooks.example.org/abc", "is not an https:// URL (it starts with no scheme)"),
        ("alertWebhookUrl", "https://hooks.example.org:99999/x", "is not a URL"),
    ],
)
def test_a_bad_channel_url_is_refused_without_repeating_it(key, url, expected):
    (problem,) = alert_config.secret_url_problems({key: url})
    assert problem.startswith(f"cgnat-edge:{key}: {expected}")
    assert "; " in problem
    for part in ("topic-4f9a", "pw@", "zq9", "a b", "abc", "99999"):
        if part in url:
            assert part not in problem, problem


def _decoded(run: offline.Run, edge: str) -> dict[str, bundle.NodeFile]:
    pushed = offline.reveal(run.one("command:remote:Command", f"{edge}-config").inputs["stdin"])
    return {f.path: f for f in bundle.decode(pushed)}


def test_the_secrets_reach_the_edges_in_the_push_only():
    """Run as ``pulumi up`` runs it (dnsMode records, where nothing else needs the
    fleet): the push carries the secrets in a root-only file; user data, the plain
    outputs and every other input do not."""
    password = "pw-" + os.urandom(6).hex()
    webhook = "https://hooks.example.org/hook/" + os.urandom(6).hex()
    run = offline.run_program(
        DEV_STACK,
        config_overrides={
            "alertSmtpServer": "smtp.example.org",
            "alertSmtpFrom": "edges@example.org",
            "alertSmtpTo": '["me@example.org"]',
            "alertSmtpUser": "edges@example.org",
        },
        secrets={"alertWebhookUrl": webhook, "alertSmtpPassword": password},
    )
    for edge in ("fsn", "ams"):
        files = _decoded(run, edge)
        channels = files[edge_contract.ALERT_CHANNELS]
        assert (channels.mode, channels.owner) == ("0600", "root:root")
        assert json.loads(channels.content) == {"webhook": webhook, "smtpPassword": password}
        daemon = json.loads(files[edge_contract.ALERTS_CONF].content)
        assert daemon["edge"] == edge and [e["name"] for e in daemon["edges"]] == ["fsn", "ams"]
        me = next(e for e in daemon["edges"] if e["name"] == edge)
        assert me["agent"] == f"http://127.0.0.1:{edge_dns.HEALTH_PORT}"
        assert daemon["smtp"]["user"] == "edges@example.org" and password not in json.dumps(daemon)
        # Only the http service's hostnames: passthrough's certificates are home's, not the edge's.
        assert (daemon["certs"], daemon["certDays"], daemon["certPort"]) == (["blog.example.org"], 14, 443)
        assert daemon["push"] == edge_contract.PUSH_RESULT
        assert daemon["reboot"] == {"file": edge_contract.REBOOT_REQUIRED, "hours": 30}
        assert daemon["upgrades"] == {"stamp": edge_contract.UPGRADES_STAMP, "hours": 48}
        assert daemon["geo"] is None and daemon["crowdsec"] is None, "no protection: nothing to watch refresh"
        health = json.loads(files[edge_contract.HEALTH_CONF].content)
        assert health["checks"][daemon["tunnelCheck"]][0]["kind"] == "tunnel"
        assert set(daemon["services"].values()) <= set(health["checks"])
        unit = files[f"{edge_contract.SYSTEMD_DIR}/{edge_contract.ALERTS_UNIT}"].content
        assert f"LoadCredential=channels:{edge_contract.ALERT_CHANNELS}" in unit
    shared = json.dumps([offline.masked(r.inputs) for r in run.resources]) + json.dumps(offline.masked(run.outputs))
    assert password not in shared and webhook not in shared
    everything = json.dumps([offline.reveal(r.inputs) for r in run.resources])
    servers = [r for r in run.resources if "userData" in r.inputs]
    assert servers and all(password not in offline.reveal(s.inputs["userData"]) for s in servers)
    assert everything.count(password) == 0, "the bundle is base64: the password appears nowhere in clear"


def test_a_bad_secret_url_stops_the_program_before_any_resource():
    from tests.support import run_program

    secret = "https://ntfy.sh/" + "x" * 80
    result, raised = run_program(DEV_STACK, secrets={"alertNtfyUrl": secret})
    assert result.resources == []
    (error,) = raised
    assert error.problems == [  # type: ignore[attr-defined]
        "cgnat-edge:alertNtfyUrl: is not a topic URL: the path must be one topic name of 1-64 letters, digits, _ "
        "or -, with no query; use one like https://ntfy.sh/<a long random topic>"
    ]
    assert "x" * 80 not in str(error)


def test_without_a_channel_nothing_changes_on_the_edges(dev_run):
    files = _decoded(dev_run, "fsn")
    assert edge_contract.ALERTS_CONF not in files and edge_contract.ALERT_CHANNELS not in files
    health = json.loads(files[edge_contract.HEALTH_CONF].content)
    assert edge_dns.TUNNEL_CHECK not in json.dumps(health)
    assert all(spec["kind"] != "tunnel" for specs in health["checks"].values() for spec in specs)


def test_the_daemon_watches_the_country_lists_and_crowdsec_only_when_they_are_on():
    run = offline.run_program(
        DEV_STACK,
        config_overrides={"denyCountries": '["CN"]', "crowdsec": "offline"},
        secrets={"alertNtfyUrl": "https://ntfy.sh/t-" + os.urandom(6).hex()},
    )
    daemon = json.loads(_decoded(run, "ams")[edge_contract.ALERTS_CONF].content)
    assert daemon["geo"] == {"status": edge_contract.GEO_STATUS, "hours": 48}
    assert daemon["crowdsec"] == [edge_contract.CROWDSEC_UNIT, edge_contract.BOUNCER_UNIT]


def test_the_pushed_files_list_every_alert_file_but_the_secret_one():
    """``status`` compares the edge's files with these digests, in a plain output: a
    weak password could be found from its file's digest."""
    run = offline.run_program(DEV_STACK, secrets={"alertNtfyUrl": "https://ntfy.sh/t-" + os.urandom(6).hex()})
    pushed = offline.reveal(run.outputs["edges"])["fsn"]["pushedFiles"]
    assert edge_contract.ALERTS_CONF in pushed and edge_contract.ALERTS_DAEMON in pushed
    assert edge_contract.ALERT_CHANNELS not in pushed
    assert alerts.CHANNEL_FILE == edge_contract.ALERT_CHANNELS

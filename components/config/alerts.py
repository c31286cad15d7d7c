"""Alerts: the channels they go to, and when a fault becomes one.

The ntfy and webhook URLs and the SMTP password are secrets; a stack that holds one
in plain text is refused, as for ``crowdsecEnrollKey``.  Their form is checked where
the value can be read (``secret_url_problems``, from the running program), and no
message repeats them."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping

from components.config.acme import EMAIL_RE
from components.config.keys import SECRET_SET, fix_key
from components.config.parser import Parser
from components.model.alerts import MAX_CERT_DAYS, SECRET_KEYS, AlertsSpec, SmtpSecurity, SmtpSpec

SMTP_PORTS = {SmtpSecurity.STARTTLS: 587, SmtpSecurity.TLS: 465}
MAX_AFTER_S = 3600
MIN_AFTER_S = 5
"""The edges look every 2 s; less than a few looks would page on one lost answer."""
MAX_REMINDER_H = 24 * 7
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""ntfy's topic names."""
_URL_PATH_RE = re.compile(r"(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})*)*")
_QUERY_RE = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*")
_SET_SECRET = "`pulumi config set --secret {key} <value>`"


def parse(p: Parser) -> AlertsSpec | None:
    """None when no channel is set: no alert daemon on the edges."""
    secrets = {key: p.get(key) for key in SECRET_KEYS}
    for key, value in secrets.items():
        if value and value != SECRET_SET:
            p.fail(
                key,
                "is stored in plain text, and it is a credential (whoever has it can post to, or read, your "
                f"channel); remove it and set it with {_SET_SECRET.format(key=fix_key(key))}",
            )
    after = p.get("alertAfterSeconds")
    if not MIN_AFTER_S <= after <= MAX_AFTER_S:
        p.fail("alertAfterSeconds", f"{after} is out of range; use {MIN_AFTER_S} to {MAX_AFTER_S} seconds")
    reminder = p.get("alertReminderHours")
    if not 0 <= reminder <= MAX_REMINDER_H:
        p.fail("alertReminderHours", f"{reminder} is out of range; use 0 (never) to {MAX_REMINDER_H} hours")
    cert_days = p.get("alertCertDays")
    if not 1 <= cert_days <= MAX_CERT_DAYS:
        p.fail("alertCertDays", f"{cert_days} is out of range; use 1 to {MAX_CERT_DAYS} days")
    smtp = _smtp(p, bool(secrets["alertSmtpPassword"]))
    spec = AlertsSpec(
        ntfy=bool(secrets["alertNtfyUrl"]),
        webhook=bool(secrets["alertWebhookUrl"]),
        smtp=smtp,
        after_s=after,
        reminder_s=reminder * 3600,
        cert_days=cert_days,
    )
    return spec if spec.channels else None


def _smtp(p: Parser, password: bool) -> SmtpSpec | None:
    server = p.get("alertSmtpServer")
    sender, recipients, user = p.get("alertSmtpFrom"), p.get("alertSmtpTo") or [], p.get("alertSmtpUser")
    if not server:
        for key, value in (
            ("alertSmtpFrom", sender),
            ("alertSmtpTo", recipients),
            ("alertSmtpUser", user),
            ("alertSmtpPassword", password),
        ):
            if value:
                p.fail(key, f"is set but {fix_key('alertSmtpServer')} is not; name the relay, or remove this key")
        return None
    security = p.get("alertSmtpSecurity")
    if security not in tuple(SmtpSecurity):
        p.fail("alertSmtpSecurity", f"{security!r} is not supported; use starttls (port 587) or tls (port 465)")
        security = SmtpSecurity.STARTTLS
    security = SmtpSecurity(security)
    host, port = _server(p, server, SMTP_PORTS[security])
    known = not p.has_problem("alertSmtpSecurity")
    if known and port == SMTP_PORTS[SmtpSecurity.TLS] and security is SmtpSecurity.STARTTLS:
        p.fail(
            "alertSmtpSecurity",
            f"is starttls, but port {port} speaks TLS from the first byte; set {fix_key('alertSmtpSecurity')} to tls",
        )
    if not sender:
        p.fail("alertSmtpFrom", "is required with alertSmtpServer; give the address the alerts are sent from")
    elif not EMAIL_RE.fullmatch(sender):
        p.fail("alertSmtpFrom", f"{sender!r} is not an e-mail address; write it like edges@example.org")
    if not recipients:
        p.fail("alertSmtpTo", "is required with alertSmtpServer; list the addresses the alerts go to")
    for i, to in enumerate(recipients):
        if not isinstance(to, str) or not EMAIL_RE.fullmatch(to.strip()):
            p.fail(f"alertSmtpTo[{i}]", f"{to!r} is not an e-mail address; write it like me@example.org")
    if password and not user:
        p.fail("alertSmtpPassword", f"is set but {fix_key('alertSmtpUser')} is not; set the login it belongs to")
    if user and not password:
        p.fail(
            "alertSmtpUser",
            f"has no password; set it with {_SET_SECRET.format(key=fix_key('alertSmtpPassword'))}, or remove "
            "the user if the relay takes mail without a login",
        )
    if host is None:
        return None
    return SmtpSpec(host, port, security, sender, tuple(str(t).strip() for t in recipients), user or None)


def _server(p: Parser, text: str, default_port: int) -> tuple[str | None, int]:
    """``host``, ``host:port``, ``[v6]:port`` or an IP address."""
    host, port_text = text, ""
    if "://" in text or "/" in text:
        p.fail("alertSmtpServer", f"{text!r} is not host or host:port; write the relay like smtp.example.org:587")
        return None, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    port = default_port
    if port_text:
        parsed = p.port("alertSmtpServer", port_text)
        if parsed is None:
            return None, default_port
        port = parsed
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    if "." not in host:
        p.fail(
            "alertSmtpServer",
            f"{host!r} is not a fully qualified name or an IP address; write it like smtp.example.org:587",
        )
        return None, port
    name = p.hostname("alertSmtpServer", host, None)
    return name, port


def secret_url_problems(values: Mapping[str, str]) -> list[str]:
    """Problems with the secret channel URLs (``values``: key -> the secret's text),
    each naming the key and never the URL."""
    problems = []
    for key in ("alertNtfyUrl", "alertWebhookUrl"):
        value = (values.get(key) or "").strip()
        if value:
            problem = url_problem(value, ntfy=key == "alertNtfyUrl")
            if problem:
                problems.append(f"{fix_key(key)}: {problem}")
    return problems


def url_problem(url: str, *, ntfy: bool) -> str | None:
    """What is wrong with a channel URL, in words that do not repeat it; None if fine."""
    example = "https://ntfy.sh/<a long random topic>" if ntfy else "https://discord.com/api/webhooks/..."
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        return "contains whitespace, a control or a non-ASCII character; remove it or percent-encode it"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        return f"is not a URL; use one like {example}"
    if parts.scheme != "https":
        return (
            f"is not an https:// URL (it starts with {parts.scheme or 'no scheme'}); the alerts cross the internet, "
            f"and the URL is the credential: use https, like {example}"
        )
    if not parts.hostname:
        return f"names no host; use one like {example}"
    if "@" in parts.netloc:
        return "carries a user name or password before the host; put the credential in the path (the URL is secret)"
    if parts.fragment or "#" in url:
        return "has a fragment (#...), which is never sent to the server; remove it"
    if not _URL_PATH_RE.fullmatch(parts.path) or not _QUERY_RE.fullmatch(parts.query):
        return "has characters a URL path or query cannot hold; percent-encode them"
    if ntfy:
        topic = parts.path.strip("/")
        if parts.query or not _TOPIC_RE.fullmatch(topic):
            return (
                "is not a topic URL: the path must be one topic name of 1-64 letters, digits, _ or -, with no "
                f"query; use one like {example}"
            )
    return None

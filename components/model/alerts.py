"""Alerts as the stack configures them: where they go and when a fault becomes one.

The channels' addresses and the SMTP password are Pulumi secrets (a webhook or ntfy
URL is itself the credential: whoever has it can post, or read); the typed config
only knows which channels are set, and the values travel to the edges inside the
push bundle alone."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DEFAULT_AFTER_S = 60
"""A fault lasts this long before it is an alert.  A home router's forced nightly
reconnect (PPPoE) or a reboot takes 20-50 s, and its keepalive (25 s) then brings the
tunnel back: under a minute is routine, not news."""
DEFAULT_REMINDER_H = 6
"""While an incident lasts it is announced again this often: twice in a working day,
not a pager."""
DEFAULT_CERT_DAYS = 14
"""A certificate of an ``http`` service this close to its end is news: Traefik renews
Let's Encrypt's 90-day certificates 30 days before, so 14 days left means two weeks of
failed renewals, and two weeks to fix them."""
MAX_CERT_DAYS = 60
"""More would alert on every fresh 90-day certificate before its renewal is due."""
REBOOT_WAIT_H = 30
"""Unattended upgrades reboot an edge at its nightly reboot time when an update needs
it: a reboot pending this long has missed a night."""
UPGRADES_STALE_H = 48
"""apt-daily-upgrade runs daily and stamps each run that succeeds: two days without a
stamp is two failed (or missed) runs, not one mirror's bad morning."""
REFRESH_STALE_H = 48
"""The country lists are fetched when a day old and retried hourly: 48 h since the
last fetch is a day of failed retries; the sets loaded before stay in force."""
SECRET_KEYS = ("alertNtfyUrl", "alertWebhookUrl", "alertSmtpPassword")
"""The keys whose values reach the edges only in the push (``edge_contract.ALERT_CHANNELS``)."""


class SmtpSecurity(StrEnum):
    STARTTLS = "starttls"
    """Plain connection upgraded with STARTTLS (submission, port 587)."""
    TLS = "tls"
    """TLS from the first byte (implicit TLS, port 465)."""


@dataclass(frozen=True)
class SmtpSpec:
    host: str
    port: int
    security: SmtpSecurity
    sender: str
    recipients: tuple[str, ...]
    user: str | None = None
    """None: the relay takes mail without a login (one at home, through the tunnel)."""


@dataclass(frozen=True)
class AlertsSpec:
    ntfy: bool = False
    webhook: bool = False
    smtp: SmtpSpec | None = None
    after_s: int = DEFAULT_AFTER_S
    reminder_s: int = DEFAULT_REMINDER_H * 3600
    """0: no reminders, one message when it starts and one when it ends."""
    cert_days: int = DEFAULT_CERT_DAYS

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(
            name for name, on in (("ntfy", self.ntfy), ("webhook", self.webhook), ("smtp", bool(self.smtp))) if on
        )

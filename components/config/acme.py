"""ACME: how the edges get certificates for ``http`` services, and from where."""

from __future__ import annotations

import re
import urllib.parse

from components.config.keys import KEYS
from components.config.parser import Parser
from components.model.fleet import AcmeChallenge, AcmeSpec, Mode, ServiceSpec


def parse(p: Parser) -> AcmeSpec:
    challenge = p.get("acmeChallenge")
    if challenge not in tuple(AcmeChallenge):
        p.fail("acmeChallenge", f"{challenge!r} is not supported; use one of {', '.join(AcmeChallenge)}")
        challenge = AcmeChallenge.TLS
    acme = AcmeSpec(
        email=p.get("acmeEmail") or None, challenge=AcmeChallenge(challenge), ca_server=p.get("acmeCaServer")
    )
    _check_directory(p, acme.ca_server)
    return acme


def check_email(p: Parser, acme: AcmeSpec, services: list[ServiceSpec]) -> None:
    """Let's Encrypt needs a contact only for the certificates the edges get, which
    only ``http`` services have; known once the services are parsed."""
    if any(s.mode is Mode.HTTP for s in services) and not acme.email:
        p.fail(
            "acmeEmail",
            "is required because an http service terminates TLS on the edges; set an address Let's Encrypt may write to",
        )
    if acme.email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", acme.email):
        p.fail(
            "acmeEmail",
            f"{acme.email!r} is not an e-mail address; give one Let's Encrypt can write to, e.g. admin@example.org",
        )


def _check_directory(p: Parser, url: str) -> None:
    """ACME runs over HTTPS only (RFC 8555, section 6.1); an http:// directory would
    fail at the first certificate, long after the edges were built."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme != "https" or not host:
        p.fail(
            "acmeCaServer",
            f"{url!r} is not an https:// URL; ACME directories are served over https only, e.g. "
            f"{KEYS['acmeCaServer'][1]} or https://acme-staging-v02.api.letsencrypt.org/directory to test",
        )

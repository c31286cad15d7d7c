"""ACME: how the edges get certificates for ``http`` services, and from where."""

from __future__ import annotations

import re
import urllib.parse

from components.config.keys import KEYS
from components.config.parser import Parser
from components.model.fleet import AcmeChallenge, AcmeSpec, Mode, ServiceSpec

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
"""What Let's Encrypt takes as a contact (a mailto: URL, RFC 8555 section 7.3), and
nothing that needs quoting in Traefik's YAML."""
DIRECTORY_RE = re.compile(
    r"https://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::(\d{1,5}))?(?:/[A-Za-z0-9._~%/+=:-]*)?"
)


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
    if acme.email and not EMAIL_RE.fullmatch(acme.email):
        p.fail(
            "acmeEmail",
            f"{acme.email!r} is not an e-mail address; give one Let's Encrypt can write to, e.g. admin@example.org "
            "(letters, digits and . _ % + - before the @, a domain name after it)",
        )


def _check_directory(p: Parser, url: str) -> None:
    """ACME runs over HTTPS only (RFC 8555, section 6.1); an http:// directory would
    fail at the first certificate, long after the edges were built.  The URL is written
    into every edge's Traefik config, so it holds no credentials and nothing but a URL."""
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:  # an unclosed [ of an IPv6 host
        netloc = ""
    if "@" in netloc:
        # Never echoed: what sits before the @ is a password as often as not.
        p.fail(
            "acmeCaServer",
            "holds a user name or password before the host; an ACME directory takes none (accounts are keys), "
            "and the URL lands in every edge's Traefik config: remove the part up to the @",
        )
        return
    match = DIRECTORY_RE.fullmatch(url)
    if not match or not 1 <= int(match.group(1) or 443) <= 65535:
        p.fail(
            "acmeCaServer",
            f"{url!r} is not an https:// URL; ACME directories are served over https only, as a host, an "
            f"optional port up to 65535 and a path (no query, fragment or spaces), e.g. {KEYS['acmeCaServer'][1]} "
            "or https://acme-staging-v02.api.letsencrypt.org/directory to test",
        )

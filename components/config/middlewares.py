"""The Traefik middlewares of an ``http`` service: rate limit, address lists, basic
auth and security headers."""

from __future__ import annotations

import re
from typing import Any

from components.config.parser import Parser, whole_number
from components.model.fleet import Middlewares, RateLimit

_HTPASSWD_RE = re.compile(r"[^:\s]+:\$(2[aby]|apr1|5|6)\$\S+")
"""Used with ``fullmatch``: one line, no trailing newline."""
MAX_RATE = 1_000_000
"""Requests per second; beyond it a limit limits nothing, and far beyond it Traefik's int64 overflows."""


def parse(p: Parser, key: str, raw: Any) -> Middlewares:
    if not isinstance(raw, dict):
        p.fail(key, "must be a mapping; write it like {rateLimit: {average: 50, burst: 100}, securityHeaders: true}")
        return Middlewares()
    for k in sorted(set(raw) - {"rateLimit", "ipAllowList", "ipDenyList", "basicAuth", "securityHeaders"}):
        p.fail(
            f"{key}.{k}", "is not a middleware; use rateLimit, ipAllowList, ipDenyList, basicAuth or securityHeaders"
        )
    rate = None
    if raw.get("rateLimit") is not None:
        rl = raw["rateLimit"]
        avg, burst = (
            (whole_number(rl.get("average")), whole_number(rl["average" if rl.get("burst") is None else "burst"]))
            if isinstance(rl, dict)
            else (None, None)
        )
        if avg is None or burst is None or not (0 < avg <= MAX_RATE and 0 < burst <= MAX_RATE):
            p.fail(
                f"{key}.rateLimit",
                f"needs whole numbers from 1 to {MAX_RATE}; write it like {{average: 50, burst: 100}} (requests per "
                "second per client)",
            )
        else:
            rate = RateLimit(avg, burst)
    allow, deny = (
        tuple(
            n
            for j, t in enumerate(p.items(f"{key}.{name}", raw.get(name), "CIDR prefixes"))
            if (n := p.network(f"{key}.{name}[{j}]", t))
        )
        for name in ("ipAllowList", "ipDenyList")
    )
    if allow and deny:
        p.fail(key, "ipAllowList and ipDenyList together are ambiguous; use one of them")
    users = p.items(f"{key}.basicAuth", raw.get("basicAuth"), "htpasswd lines")
    for j, u in enumerate(users):
        if not isinstance(u, str) or not _HTPASSWD_RE.fullmatch(u):
            p.fail(
                f"{key}.basicAuth[{j}]",
                "must be an htpasswd line user:hash with a bcrypt, apr1 or sha-crypt hash; make one with `htpasswd -nB user`",
            )
    headers = p.flag(
        key, raw, "securityHeaders", False, "write true to send HSTS and related security headers, or leave it out"
    )
    return Middlewares(rate, allow, deny, tuple(u for u in users if isinstance(u, str)), headers)

"""The smoke check: every declared service through every edge, plus DNS, as a visitor
sees them; the first rows of every ``cgnat-edge lab`` report."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from components.lab.edge_lab import EdgeLab
from components.lab.report import Check
from components.model.fleet import Mode, ServiceSpec
from components.renderers import geodns


@dataclass
class Result:
    edge: str
    service: str
    check: str
    ok: bool
    detail: str
    ms: float = 0.0


def _expect_tls(el: EdgeLab, s: ServiceSpec, host: str, r: dict) -> tuple[bool, str]:
    if not r["ok"]:
        return False, r["error"]
    body = r["body"] if isinstance(r["body"], dict) else {}
    if s.mode is Mode.PASSTHROUGH:
        if r["cert_sha256"] != el.home_certs[s.name][2]:
            return False, "certificate is not home's: TLS did not pass through"
        if body.get("service") != s.name or body.get("sni") != host:
            return False, f"home answered {body!r}"
        if s.proxy_protocol and body.get("client") != el.client_ip:
            return False, f"home saw client {body.get('client')}, not {el.client_ip}"
        return True, f"home's certificate; home saw client {body.get('client')}"
    # http: TLS ends on the edge, with the lab's stand-in for the ACME certificate.
    m = s.middlewares
    if s.forward_auth is not None and r["status"] in (302, 401):
        return True, f"{r['status']}: sign-in asked by the identity provider ({r.get('location')})"
    if m.basic_auth and r["status"] == 401:
        return True, "401: basic auth asks for credentials (the lab has none)"
    if m.ip_allow_list and not any(ipaddress.ip_address(el.client_ip) in n for n in m.ip_allow_list):
        return r["status"] == 403, f"{r['status']}: client outside ipAllowList"
    if el.http_cert is None or r["cert_sha256"] != el.http_cert[2]:
        return False, "edge did not present the stand-in certificate"
    if r["status"] != 200 or body.get("service") != s.name:
        return False, f"HTTP {r['status']}: {str(r['body'])[:120]}"
    xff = body.get("headers", {}).get("x-forwarded-for")
    if xff != el.client_ip:
        return False, f"X-Forwarded-For {xff!r}, not {el.client_ip}"
    return True, f"edge terminated TLS; X-Forwarded-For {xff}"


def _expect_echo(el: EdgeLab, s: ServiceSpec, token: str, r: dict) -> tuple[bool, str]:
    if not r["ok"]:
        return False, r["error"]
    body = r["body"] if isinstance(r["body"], dict) else {}
    if body.get("service") != s.name or r["echo"] != token:
        return False, f"answer {str(r['body'])[:80]!r} echo {r['echo'][:40]!r}"
    if (s.proxy_protocol or s.mode is Mode.FORWARD) and body.get("client") != el.client_ip:
        return False, f"home saw client {body.get('client')}, not {el.client_ip}"
    return True, f"echoed; home saw {body.get('client')}"


DNS_SETTLE_S = 10
"""How long a name may take to answer with every edge again."""


def smoke(el: EdgeLab, edges: Iterable[str] | None = None, services: Iterable[str] | None = None) -> list[Result]:
    """Every declared service through every (chosen) edge, plus DNS: what a visitor
    would see.  Returns one result per check; nothing is asserted here."""
    cfg = el.cfg
    chosen_edges = sorted(edges if edges is not None else el.edges)
    chosen = [s for s in cfg.services if services is None or s.name in set(services)]
    checks: list[dict] = []
    judges: list[tuple[str, str, str, Any]] = []
    for name in chosen_edges:
        ip = el.edges[name].public_ip
        for s in chosen:
            if s.mode.by_hostname:
                for host in s.hostnames:
                    checks.append({"kind": "tls", "edge": ip, "sni": host, "path": "/lab"})
                    judges.append((name, s.name, f"https {host}", lambda r, s=s, h=host: _expect_tls(el, s, h, r)))
                if s.http_target:
                    path = "/.well-known/acme-challenge/lab-token"
                    checks.append({"kind": "http", "edge": ip, "host": s.hostnames[0], "path": path})
                    judges.append(
                        (
                            name,
                            s.name,
                            "acme http-01",
                            lambda r, s=s, p=path: (
                                (
                                    r["ok"]
                                    and r["status"] == 200
                                    and isinstance(r["body"], dict)
                                    and r["body"].get("path") == p
                                    and r["body"].get("service") == s.name
                                ),
                                r.get("error") or f"HTTP {r['status']} from home",
                            ),
                        )
                    )
            else:
                token = f"lab-{name}-{s.name}"
                checks.append({"kind": s.protocol, "edge": ip, "port": s.port, "payload": token})
                judges.append(
                    (name, s.name, f"{s.protocol} :{s.port}", lambda r, s=s, t=token: _expect_echo(el, s, t, r))
                )
    if edges is None and services is None:
        expected = sorted((e.public_ip for e in el.edges.values()), key=ipaddress.ip_address)
        for host, _ in geodns.hostnames(cfg):
            checks.append({"kind": "resolve", "name": host})
            judges.append(
                (
                    "dns",
                    host,
                    "A records",
                    lambda r, e=expected: (
                        r["ok"] and r["addresses"] == e,
                        r.get("error") or f"{', '.join(r['addresses'])}",
                    ),
                )
            )
    answers = el.probe(checks)
    # The visitors' load of this very smoke can make a health check miss once, and a
    # name then answers without that edge for a second or two; what a visitor sees
    # is the answer once that has passed.
    deadline = time.monotonic() + DNS_SETTLE_S
    while time.monotonic() < deadline:
        again = [i for i, (j, r) in enumerate(zip(judges, answers, strict=True)) if j[0] == "dns" and not j[3](r)[0]]
        if not again:
            break
        time.sleep(0.5)
        for i, r in zip(again, el.probe([checks[i] for i in again]), strict=True):
            answers[i] = r
    results = []
    for (edge, service, what, judge), r in zip(judges, answers, strict=True):
        ok, detail = judge(r)
        results.append(Result(edge, service, what, bool(ok), detail, r["ms"]))
    return results


def table(results: list[Result]) -> str:
    rows = [("EDGE", "SERVICE", "CHECK", "RESULT", "MS", "DETAIL")]
    rows += [(r.edge, r.service, r.check, "ok" if r.ok else "FAIL", f"{r.ms:.1f}", r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5] for row in rows
    )


def rows(results: list[Result]) -> list[Check]:
    """The smoke results as report rows."""
    return [Check(f"smoke:{r.edge}:{r.service}:{r.check}", r.ok, r.ms, "ms", r.detail) for r in results]

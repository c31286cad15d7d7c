#!/usr/bin/python3
"""cgnat-edge health agent: is the path visitor -> this edge -> tunnel -> home up, per service?

Every edge's PowerDNS asks every edge's agent (GET /health/<check>) and answers with the
edges whose agent says 200.  The checks run here, in the background, every
``interval`` seconds, so an answer is a lookup: fast for the askers, and the agent
never probes home more often than once per interval, however many ask.

  tls  TLS to this edge's own Traefik (127.0.0.1:443) with the service's SNI; with a
       ``path``, an HTTP GET under that Host whose status must be below 500 (Traefik
       answers 502/504 when home is unreachable).  The handshake alone, for
       passthrough, already needs home: TLS ends there.
  tcp  A TCP connect to the target, routed through the tunnel.
  udp  A TCP SYN to home's tunnel address (port 9): any answer (a reset from home's
       filter or kernel) proves the tunnel carries packets both ways; then a datagram
       to the target, down only when it says port unreachable.

Config: /etc/cgnat-edge/health.json (rendered by components/renderers/edge_dns.py).
Only the fleet's edges may connect (the edge's nftables); nothing secret is served.
"""

import http.server
import json
import socket
import ssl
import sys
import threading
import time
from typing import Any, cast

CONFIG = sys.argv[1] if len(sys.argv) > 1 else "/etc/cgnat-edge/health.json"
results: dict[str, tuple[bool, str, float]] = {}
lock = threading.Lock()


def check_tls(spec, cfg):
    host, port = cfg["https"].rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # reachability, not identity: home's certificate is home's business
    with (
        socket.create_connection((host, int(port)), timeout=cfg["timeout"]) as raw,
        ctx.wrap_socket(raw, server_hostname=spec["host"]) as tls,
    ):
        if not spec.get("path"):
            return "TLS handshake completed"
        request = f"GET {spec['path']} HTTP/1.1\r\nHost: {spec['host']}\r\nUser-Agent: cgnat-edge-health\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode())
        line = tls.recv(256).split(b"\r\n", 1)[0].decode(errors="replace")
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise OSError(f"no HTTP status line: {line[:60]!r}")
        if int(parts[1]) >= 500:
            raise OSError(f"HTTP {parts[1]}")
        return f"HTTP {parts[1]}"


def check_tcp(spec, cfg):
    with socket.create_connection((spec["host"], spec["port"]), timeout=cfg["timeout"]):
        return f"connected to {spec['host']}:{spec['port']}"


def _udp_answer(address, timeout):
    """'refused' (ICMP port unreachable came back), 'data' or 'silent'.  A send that
    fails (no route: the tunnel interface is gone) raises, as a failed check."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.send(b"")
        try:
            s.recv(2048)
            return "data"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "silent"


def check_udp(spec, cfg):
    # The tunnel: a TCP SYN to home's tunnel address on the discard port.  Home answers
    # it either way (a reset from its filter or kernel, or a connection), through the
    # tunnel, at once; resets are not rate-limited the way ICMP errors are.
    try:
        with socket.create_connection((spec["home"], 9), timeout=min(cfg["timeout"], 2)):
            pass
    except ConnectionRefusedError:
        pass
    except TimeoutError:
        raise OSError(f"no answer from home's tunnel address {spec['home']}: the tunnel is down") from None
    target = _udp_answer((spec["host"], spec["port"]), 1)
    if target == "refused":
        raise OSError(f"{spec['host']}:{spec['port']} answers port unreachable")
    return f"tunnel answers; target {target}"


CHECKS = {"tls": check_tls, "tcp": check_tcp, "udp": check_udp}


def run_checks(name, specs, cfg):
    while True:
        started = time.monotonic()
        ok, details = True, []
        for spec in specs:
            try:
                details.append(CHECKS[spec["kind"]](spec, cfg))
            except Exception as exc:  # any failure is "down", with its reason
                ok = False
                details.append(f"{spec['kind']}: {exc or type(exc).__name__}")
                break
        with lock:
            results[name] = (ok, "; ".join(details), time.monotonic())
        time.sleep(max(0.0, cfg["interval"] - (time.monotonic() - started)))


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "cgnat-edge-health"
    sys_version = ""

    def do_GET(self):
        cfg = cast(Server, self.server).cfg
        stale = 3 * cfg["interval"] + cfg["timeout"]
        now = time.monotonic()
        with lock:
            snapshot = dict(results)
        if self.path in ("/health", "/health/"):
            body = {
                n: {"ok": ok and now - t < stale, "detail": d, "age": round(now - t, 1)}
                for n, (ok, d, t) in snapshot.items()
            }
            return self.reply(200, json.dumps({"edge": cfg["edge"], "checks": body}, sort_keys=True) + "\n")
        name = self.path.removeprefix("/health/")
        if name not in cfg["checks"]:
            return self.reply(404, "no such check\n")
        ok, detail, t = snapshot.get(name, (False, "not checked yet", now))
        fresh = now - t < stale
        return self.reply(
            200 if ok and fresh else 503, f"{'up' if ok and fresh else 'down'}: {detail if fresh else 'stale'}\n"
        )

    def reply(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if not text.startswith("{") else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    cfg: dict[str, Any]

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main():
    with open(CONFIG) as f:
        cfg = json.load(f)
    for name, specs in cfg["checks"].items():
        threading.Thread(target=run_checks, args=(name, specs, cfg), daemon=True).start()
    try:
        server = Server(("::", cfg["port"]), Handler)
    except OSError:  # no IPv6 on this host
        Server.address_family = socket.AF_INET
        server = Server(("0.0.0.0", cfg["port"]), Handler)
    server.cfg = cfg
    print(f"cgnat-edge-health: serving {len(cfg['checks'])} checks on port {cfg['port']}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

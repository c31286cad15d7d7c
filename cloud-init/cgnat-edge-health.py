#!/usr/bin/python3
"""cgnat-edge health agent: is the path visitor -> this edge -> tunnel -> home up, per service?

The DNS health checks ask it (GET /health/<check>): every edge's PowerDNS in dnsMode
edges, the user's PowerDNS or Route 53 in dnsMode records.  The checks run here, in the
background, every ``interval`` seconds, so an answer is a lookup: fast for the askers,
and the agent never probes home more often than once per interval, however many ask.

  tls  TLS to this edge's own Traefik (127.0.0.1:443) with the service's SNI; with a
       ``path``, an HTTP GET under that Host whose status must be below 500 (Traefik
       answers 502/504 when home is unreachable).  The handshake alone, for
       passthrough, already needs home: TLS ends there.
  tcp  A TCP connect to the target, routed through the tunnel.
  udp  A TCP SYN to home's tunnel address (port 9): any answer (a reset from home's
       filter or kernel) proves the tunnel carries packets both ways; then a datagram
       to the target, down only when it says port unreachable.
  tunnel  That SYN alone: the alert daemons' view of the tunnel (cgnat-edge-alerts.py).

Hostile askers: in dnsMode records the port is open to the internet, so the server is
one thread with a selector, whatever the number of connections.  At most
MAX_CONNECTIONS are open (a new one beyond that closes the oldest: a flood of idle
connections cannot lock a checker out, whose request comes with its connection), a
request head over REQUEST_BYTES is refused, and a connection that has not sent its
request within READ_TIMEOUT_S, or not taken the answer within WRITE_TIMEOUT_S, is
closed.  Memory is bounded by those numbers.  With ``public`` (dnsMode records) the
checks' names are opaque ids and the answer is "up" or "down" alone: no target
address, no detail, no overview; state changes go to the journal instead.

Config: /etc/cgnat-edge/health.json (rendered by components/renderers/edge_dns.py).
"""

import json
import selectors
import socket
import ssl
import sys
import threading
import time

CONFIG = sys.argv[1] if len(sys.argv) > 1 else "/etc/cgnat-edge/health.json"
MAX_CONNECTIONS = 256
REQUEST_BYTES = 2048
READ_TIMEOUT_S = 3.0
WRITE_TIMEOUT_S = 3.0
LINGER_S = 1.0
"""After the answer, what the client still sends is read and dropped for this long, so
closing with unread bytes does not reset the connection before the answer arrives."""
CHECK_STACK_BYTES = 512 * 1024
results: dict[str, tuple[bool, str, float, float]] = {}
lock = threading.Lock()


def check_tls(spec, cfg):
    host, port = cfg["https"].rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # reachability, not identity: home's certificate is home's business
    # The socket's timeout bounds every step: connect, handshake, send and receive.
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


def check_tunnel(spec, cfg):
    # A TCP SYN to home's tunnel address on the discard port.  Home answers it either
    # way (a reset from its filter or kernel, or a connection), through the tunnel, at
    # once; resets are not rate-limited the way ICMP errors are.
    try:
        with socket.create_connection((spec["home"], 9), timeout=min(cfg["timeout"], 2)):
            pass
    except ConnectionRefusedError:
        pass
    except TimeoutError:
        raise OSError(f"no answer from home's tunnel address {spec['home']}: the tunnel is down") from None
    return "home answers through the tunnel"


def check_udp(spec, cfg):
    check_tunnel(spec, cfg)
    target = _udp_answer((spec["host"], spec["port"]), 1)
    if target == "refused":
        raise OSError(f"{spec['host']}:{spec['port']} answers port unreachable")
    return f"tunnel answers; target {target}"


CHECKS = {"tls": check_tls, "tcp": check_tcp, "udp": check_udp, "tunnel": check_tunnel}


def run_checks(name, specs, cfg):
    was = None
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
        detail = "; ".join(details)
        with lock:
            results[name] = (ok, detail, time.monotonic(), time.monotonic() - started)
        if ok != was:
            print(f"cgnat-edge-health: {name} {'up' if ok else 'down'}: {detail}", flush=True)
            was = ok
        time.sleep(max(0.0, cfg["interval"] - (time.monotonic() - started)))


# ---------------------------------------------------------------------------
# The server: one thread, a selector, bounded connections
# ---------------------------------------------------------------------------

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def answer(cfg, path):
    """(status, content type, body) of a GET of ``path``."""
    public = cfg.get("public", False)
    stale = 3 * cfg["interval"] + cfg["timeout"]
    now = time.monotonic()
    with lock:
        snapshot = dict(results)
    if path in ("/health", "/health/") and not public:
        body = {
            n: {"ok": ok and now - t < stale, "detail": d, "age": round(now - t, 1), "seconds": round(took, 4)}
            for n, (ok, d, t, took) in snapshot.items()
        }
        return 200, "application/json", json.dumps({"edge": cfg["edge"], "checks": body}, sort_keys=True) + "\n"
    name = path.removeprefix("/health/")
    if not path.startswith("/health/") or name not in cfg["checks"]:
        return 404, "text/plain", "no such check\n"
    ok, detail, t, _ = snapshot.get(name, (False, "not checked yet", now, 0.0))
    up = ok and now - t < stale
    if public:
        return (200 if up else 503), "text/plain", f"{'up' if up else 'down'}\n"
    return (200 if up else 503), "text/plain", f"{'up' if up else 'down'}: {detail if now - t < stale else 'stale'}\n"


def response(status, ctype, body, head_only=False):
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (b"" if head_only else data)


def reply_to(cfg, request):
    """The bytes answering a complete request head."""
    parts = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return response(400, "text/plain", "bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return response(405, "text/plain", "GET only\n")
    status, ctype, body = answer(cfg, target)
    return response(status, ctype, body, head_only=method == "HEAD")


class Conn:
    __slots__ = ("deadline", "draining", "inbuf", "outbuf", "sock")

    def __init__(self, sock, deadline):
        self.sock, self.inbuf, self.outbuf, self.deadline = sock, b"", b"", deadline
        self.draining = False


def listener(port):
    try:
        return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128)
    except OSError:  # no IPv6 on this host
        return socket.create_server(("0.0.0.0", port), backlog=128)


class Server:
    def __init__(self, cfg, sock):
        self.cfg, self.sock = cfg, sock
        self.sel = selectors.DefaultSelector()
        self.conns: dict[socket.socket, Conn] = {}  # oldest first
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, None)

    def serve_forever(self):
        while True:
            now = time.monotonic()
            for conn in [c for c in self.conns.values() if c.deadline <= now]:
                self.close(conn)
            wait = min((c.deadline for c in self.conns.values()), default=now + 1.0) - now
            for key, events in self.sel.select(max(0.0, min(wait, 1.0))):
                conn = key.data
                if conn is None:
                    self.accept()
                elif conn.sock not in self.conns:
                    continue  # closed earlier in this round (evicted)
                elif events & selectors.EVENT_READ:
                    self.receive(conn)
                else:
                    self.send(conn)

    def close(self, conn):
        self.conns.pop(conn.sock, None)
        self.sel.unregister(conn.sock)
        conn.sock.close()

    def close_oldest(self):
        if self.conns:
            self.close(next(iter(self.conns.values())))

    def accept(self):
        for _ in range(64):  # then serve the others: a flood of connects does not starve them
            try:
                new, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors or memory: the oldest go first
                return self.close_oldest()
            if len(self.conns) >= MAX_CONNECTIONS:
                self.close_oldest()
            new.setblocking(False)
            conn = Conn(new, time.monotonic() + READ_TIMEOUT_S)
            self.conns[new] = conn
            self.sel.register(new, selectors.EVENT_READ, conn)

    def receive(self, conn):
        try:
            data = conn.sock.recv(REQUEST_BYTES + 1 - len(conn.inbuf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.close(conn)
        if not data:
            return self.close(conn)
        if conn.draining:
            return
        conn.inbuf += data
        if b"\r\n\r\n" in conn.inbuf or b"\n\n" in conn.inbuf:
            self.reply(conn, reply_to(self.cfg, conn.inbuf))
        elif len(conn.inbuf) > REQUEST_BYTES:
            self.reply(conn, response(431, "text/plain", "request too large\n"))

    def reply(self, conn, data):
        conn.outbuf, conn.inbuf = data, b""
        conn.deadline = time.monotonic() + WRITE_TIMEOUT_S
        self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self.send(conn)

    def send(self, conn):
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.close(conn)
        conn.outbuf = conn.outbuf[sent:]
        if conn.outbuf:
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self.close(conn)
        conn.draining, conn.deadline = True, time.monotonic() + LINGER_S
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)


def main():
    with open(CONFIG) as f:
        cfg = json.load(f)
    threading.stack_size(CHECK_STACK_BYTES)
    for name, specs in cfg["checks"].items():
        threading.Thread(target=run_checks, args=(name, specs, cfg), daemon=True).start()
    server = Server(cfg, listener(cfg["port"]))
    print(f"cgnat-edge-health: serving {len(cfg['checks'])} checks on port {cfg['port']}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

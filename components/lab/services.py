"""The lab's two ends of a connection: home's test services and the visitor's probes.

Runs as a plain script inside a lab namespace (standard library only, so the
namespace needs nothing but a Python), in one of two roles:

``serve SPEC.json``
    Home's services, one listener per declared target: HTTPS with home's own
    certificate behind ``passthrough`` (the edge must not be able to read it), plain
    HTTP behind ``http`` and for ACME challenges, TCP and UDP echoes.  Listeners
    behind a PROXY-protocol hop read the v2 header first, as a real home server must,
    and every answer and log line says which client address home learnt: the proof
    that the visitor's address survived the edge.

``watch CHECKS.json OUT.json STOP``
    The prober of a rolling push: the checks over and over, each result stamped with
    the wall-clock time, until the file STOP exists; then all of them go to OUT.json.

``probe CHECKS.json``
    What a visitor does: resolve a name, open TLS to an edge and note whose
    certificate came back, fetch over HTTP, exchange TCP and UDP echoes.  Results are
    printed as JSON; judging them is the caller's job.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class ProtocolError(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_proxy_v2(sock: socket.socket) -> str | None:
    """The client address from a PROXY v2 header (None for a LOCAL command)."""
    head = _recv_exact(sock, 16)
    if head[:12] != PROXY_V2_SIGNATURE:
        raise ProtocolError("expected a PROXY v2 header")
    ver_cmd, family, length = head[12], head[13], struct.unpack("!H", head[14:16])[0]
    body = _recv_exact(sock, length)
    if ver_cmd & 0xF0 != 0x20:
        raise ProtocolError(f"PROXY version {ver_cmd >> 4}")
    if ver_cmd & 0x0F == 0:
        return None
    if family >> 4 == 1:
        return socket.inet_ntop(socket.AF_INET, body[0:4])
    if family >> 4 == 2:
        return socket.inet_ntop(socket.AF_INET6, body[0:16])
    return None


def _read_http_request(sock) -> tuple[str, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ProtocolError("connection closed inside the request head")
        data += chunk
        if len(data) > 65536:
            raise ProtocolError("request head too large")
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return path, headers


IDP_SESSION = "lab_session=signed-in"
"""The cookie the lab's identity provider stand-in accepts as a signed-in user."""


def _idp_response(headers: dict[str, str]) -> tuple[bytes, str]:
    """A forward-auth endpoint as Authelia or Pocket ID's proxy answers one: 200 with
    the user in Remote-User for a signed-in session, else a redirect to its sign-in page
    (401 for a request that is not a browser's GET, which cannot follow a redirect)."""
    cookies = [c.strip() for c in headers.get("cookie", "").split(";")]
    if IDP_SESSION in cookies:
        return b"HTTP/1.1 200 OK\r\nRemote-User: alice\r\nRemote-Groups: admins\r\nContent-Length: 0\r\n\r\n", "200"
    if headers.get("x-forwarded-method", "GET") != "GET":
        return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", "401"
    back = f"https://{headers.get('x-forwarded-host', '')}{headers.get('x-forwarded-uri', '/')}"
    return (
        f"HTTP/1.1 302 Found\r\nLocation: https://auth.example.org/?rd={back}\r\nContent-Length: 0\r\n\r\n".encode(),
        "302",
    )


def _http_response(body: dict) -> bytes:
    payload = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        len(payload),
        payload,
    )


class _Log:
    def __init__(self, path: str):
        self.lock = threading.Lock()
        self.path = path

    def write(self, entry: dict) -> None:
        with self.lock, open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _tcp_server(spec: dict, log: _Log) -> socketserver.BaseServer:
    kind, proxy = spec["kind"], spec.get("proxy", False)
    context = None
    sni_seen = threading.local()
    if kind == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(spec["cert"], spec["key"])

        def remember_sni(sslobj, name, ctx):
            sni_seen.name = name

        context.sni_callback = remember_sni

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            sock.settimeout(10)
            peer = self.client_address[0]
            try:
                client = read_proxy_v2(sock) if proxy else peer
                entry = {
                    "service": spec["service"],
                    "kind": kind,
                    "listener": f"{spec['address']}:{spec['port']}",
                    "peer": peer,
                    "client": client,
                }
                if kind == "tcp-echo":
                    sock.sendall((json.dumps(entry) + "\n").encode())
                    log.write(entry)
                    while chunk := sock.recv(65536):
                        sock.sendall(chunk)
                    return
                if context is not None:
                    sni_seen.name = None
                    sock = context.wrap_socket(sock, server_side=True)
                    entry["sni"] = sni_seen.name
                path, headers = _read_http_request(sock)
                entry.update(path=path, headers=headers)
                if kind == "idp":
                    answer, entry["answer"] = _idp_response(headers)
                    log.write(entry)
                    sock.sendall(answer)
                    return
                log.write(entry)
                sock.sendall(_http_response(entry))
            except (ProtocolError, OSError, ssl.SSLError) as exc:
                log.write({"service": spec["service"], "kind": kind, "peer": peer, "error": str(exc)})

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket.AF_INET6 if ":" in spec["address"] else socket.AF_INET

    return Server((spec["address"], spec["port"]), Handler)


def _udp_server(spec: dict, log: _Log) -> socketserver.BaseServer:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            entry = {
                "service": spec["service"],
                "kind": "udp-echo",
                "peer": self.client_address[0],
                "client": self.client_address[0],
            }
            log.write(entry)
            sock.sendto((json.dumps(entry) + "\n").encode() + data, self.client_address)

    class Server(socketserver.ThreadingUDPServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket.AF_INET6 if ":" in spec["address"] else socket.AF_INET

    return Server((spec["address"], spec["port"]), Handler)


def serve(spec: dict) -> None:
    log = _Log(spec["log"])
    servers = [(_udp_server if s["kind"] == "udp-echo" else _tcp_server)(s, log) for s in spec["listeners"]]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


# ---------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------


def _http_get(sock, host: str, path: str, headers: dict | None = None) -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 GET on a connected socket: (status, head, body)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return (int(head.split(b" ")[1]) if head else 0), head, body


def _probe_tls(check: dict) -> dict:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Whose certificate comes back is the point; the caller compares fingerprints.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((check["edge"], check.get("port", 443)), timeout=check.get("timeout", 5)) as raw,
        ctx.wrap_socket(raw, server_hostname=check["sni"]) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        if der is None:
            raise ssl.SSLError(f"{check['sni']}: the edge presented no certificate")
        status, head, body = _http_get(tls, check["sni"], check.get("path", "/"), check.get("headers"))
    location = next(
        (h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n") if h.lower().startswith(b"location:")), None
    )
    return {
        "cert_sha256": hashlib.sha256(der).hexdigest(),
        "status": status,
        "location": location,
        "body": _json_or_text(body),
    }


def _probe_http(check: dict) -> dict:
    with socket.create_connection((check["edge"], check.get("port", 80)), timeout=check.get("timeout", 5)) as s:
        status, head, body = _http_get(s, check["host"], check.get("path", "/"))
    location = next(
        (h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n") if h.lower().startswith(b"location:")), None
    )
    return {"status": status, "location": location, "body": _json_or_text(body)}


def _probe_tcp(check: dict) -> dict:
    payload = check.get("payload", "lab").encode()
    with socket.create_connection((check["edge"], check["port"]), timeout=check.get("timeout", 5)) as s:
        s.sendall(payload)
        data = b""
        while b"\n" not in data or len(data.split(b"\n", 1)[1]) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, echo = data.partition(b"\n")
    return {"body": _json_or_text(head), "echo": echo.decode(errors="replace")}


def _probe_udp(check: dict) -> dict:
    payload = check.get("payload", "lab").encode()
    family = socket.AF_INET6 if ":" in check["edge"] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(check.get("timeout", 2))
        s.connect((check["edge"], check["port"]))
        for _ in range(3):  # UDP may lose the first datagram while ARP settles
            s.send(payload)
            try:
                data = s.recv(65536)
                break
            except TimeoutError:
                continue
        else:
            raise TimeoutError("no UDP answer")
    head, _, echo = data.partition(b"\n")
    return {"body": _json_or_text(head), "echo": echo.decode(errors="replace")}


def _probe_resolve(check: dict) -> dict:
    infos = socket.getaddrinfo(check["name"], None, socket.AF_INET, socket.SOCK_STREAM)
    return {"addresses": sorted({i[4][0] for i in infos}, key=ipaddress.ip_address)}


def _probe_dns(check: dict) -> dict:
    """One A question to one nameserver (``server``), as a resolver asks it: the answer's
    addresses in the order given, and the response code.  Plain UDP, no library, so
    the lab needs nothing beyond the standard library on its nodes."""
    qid = int.from_bytes(hashlib.sha256(f"{time.monotonic_ns()}".encode()).digest()[:2], "big")
    qname = b"".join(bytes([len(label)]) + label.encode() for label in check["name"].rstrip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(check.get("timeout", 1.0))
        s.sendto(query, (check["server"], 53))
        data = s.recv(4096)
    rid, flags, qd, an = struct.unpack("!HHHH", data[:8])
    if rid != qid:
        raise ValueError("answer to another question")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    addresses = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _cls, _ttl, size = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and size == 4:
            addresses.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += size
    return {"rcode": flags & 0xF, "addresses": addresses}


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        size = data[pos]
        if size == 0:
            return pos + 1
        if size & 0xC0:
            return pos + 2
        pos += size + 1


def _json_or_text(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


PROBES = {
    "tls": _probe_tls,
    "http": _probe_http,
    "tcp": _probe_tcp,
    "udp": _probe_udp,
    "resolve": _probe_resolve,
    "dns": _probe_dns,
}


def probe(checks: list[dict]) -> list[dict]:
    results = []
    for check in checks:
        start = time.monotonic()
        try:
            result = {"ok": True, **PROBES[check["kind"]](check)}
        except Exception as exc:  # every failure is a result to report, not a crash
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result["ms"] = round((time.monotonic() - start) * 1000, 2)
        results.append(result)
    return results


def watch(checks: list[dict], out: str, stop: str) -> None:
    records = []
    open(os.path.splitext(out)[0] + ".started", "w").close()
    while not os.path.exists(stop):
        for i, check in enumerate(checks):
            t = time.time()
            (r,) = probe([check])
            records.append({"t": t, "i": i, "r": {k: r.get(k) for k in ("ok", "status", "echo", "error", "ms")}})
    with open(out, "w") as f:
        json.dump(records, f)


def main(argv: list[str]) -> int:
    role, path = argv[1], argv[2]
    with open(path) as f:
        data = json.load(f)
    if role == "serve":
        serve(data)
    elif role == "probe":
        json.dump(probe(data), sys.stdout)
    elif role == "watch":
        watch(data, argv[3], argv[4])
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

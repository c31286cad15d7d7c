"""The lab's way to the Debian archive: an HTTP proxy that forwards GET and HEAD, and
tunnels HTTPS (CONNECT to port 443), to the mirror hosts this machine's apt uses, and
refuses everything else.

A VM edge installs its packages at first boot as on a VPS, but its network is the
lab's (documentation addresses, no route out).  The proxy listens inside a lab
namespace (its socket is made there, ``Node.call``) while its requests leave from
this machine's own network, so the guest reaches the archive and nothing else.
"""

from __future__ import annotations

import http.client
import re
import selectors
import socket
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

PORT = 3142
FORWARDED = ("Range", "If-Modified-Since", "If-Range", "If-None-Match", "Cache-Control", "User-Agent")
RETURNED = ("Content-Type", "Content-Length", "Content-Range", "Last-Modified", "ETag", "Accept-Ranges")
CHUNK = 1 << 16


def mirror_hosts(
    sources: Iterable[Path] = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d")),
) -> set[str]:
    """The hosts of every http:// archive in this machine's apt sources (one-line and deb822 forms)."""
    hosts = {"deb.debian.org"}
    for source in sources:
        files = sorted(source.glob("*.list")) + sorted(source.glob("*.sources")) if source.is_dir() else [source]
        for f in files:
            if f.is_file():
                hosts.update(re.findall(r"http://([A-Za-z0-9.-]+)", f.read_text()))
    return hosts


class MirrorProxy:
    """Serves until ``close``; ``refused`` keeps every request it turned away, for the report."""

    def __init__(self, listener: socket.socket, hosts: set[str]):
        self.hosts = hosts
        self.refused: list[str] = []
        self.served = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                url = urlsplit(self.path)
                if url.scheme != "http" or url.hostname not in outer.hosts:
                    outer.refused.append(f"{self.command} {self.path}")
                    self.send_error(403, "the lab reaches only the Debian archive")
                    return
                path = url.path + (f"?{url.query}" if url.query else "")
                headers = {h: v for h in FORWARDED if (v := self.headers.get(h))}
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
                try:
                    conn.request(self.command, path, headers=headers)
                    answer = conn.getresponse()
                    self.send_response(answer.status, answer.reason)
                    for h in RETURNED:
                        if (v := answer.getheader(h)) is not None:
                            self.send_header(h, v)
                    self.end_headers()
                    while self.command == "GET" and (block := answer.read(CHUNK)):
                        self.wfile.write(block)
                    outer.served += 1
                except OSError as exc:
                    self.send_error(502, f"the mirror did not answer: {exc}")
                finally:
                    conn.close()

            do_GET = do_HEAD = _forward

            def do_CONNECT(self) -> None:
                """HTTPS to the archive (cloud-init's Debian mirrors are https://): a tunnel to port 443."""
                host, _, port = self.path.rpartition(":")
                if host not in outer.hosts or port != "443":
                    outer.refused.append(f"CONNECT {self.path}")
                    self.send_error(403, "the lab reaches only the Debian archive")
                    return
                try:
                    upstream = socket.create_connection((host, 443), timeout=60)
                except OSError as exc:
                    self.send_error(502, f"the mirror did not answer: {exc}")
                    return
                self.send_response(200, "Connection Established")
                self.end_headers()
                outer.served += 1
                with upstream:
                    _pump(self.connection, upstream)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(listener.getsockname()[:2], Handler, bind_and_activate=False)
        self.httpd.socket.close()
        self.httpd.socket = listener
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Bytes both ways until either side closes."""
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        while events := sel.select(timeout=120):
            for key, _ in events:
                block = key.fileobj.recv(CHUNK)  # type: ignore[union-attr]
                if not block:
                    return
                key.data.sendall(block)


def listener(address: str, port: int = PORT) -> socket.socket:
    """A listening TCP socket; made through ``Node.call`` it lives in that node's namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(64)
    return sock

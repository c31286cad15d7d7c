"""A folder served over HTTPS, standing in for a registry's statistics server.

``python3 -m http.server`` has no TLS; this is its handler behind an ssl-wrapped
socket, run on a thread of the lab's own process.  The TLS handshake happens on the
request's thread, so a client that stalls cannot hold the accepting loop.  Setting
``trickle`` makes it a stalled server: every answer, status line and headers too, goes
out one byte per ``trickle`` seconds, which a fetch with only a per-read timeout would
wait on for ever."""

from __future__ import annotations

import functools
import io
import socketserver
import ssl
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from components.lab.certs import SelfSigned


class _Trickle:
    """The connection's writer, one byte per ``server.trickle`` seconds."""

    def __init__(self, out: io.BufferedIOBase, server: FileServer):
        self.out, self.server = out, server

    def write(self, data: bytes) -> int:
        for i in range(len(data)):
            if self.server.stopping.wait(self.server.trickle):
                break
            self.out.write(data[i : i + 1])
            self.out.flush()
        return len(data)

    def flush(self) -> None:
        self.out.flush()


class _Handler(SimpleHTTPRequestHandler):
    timeout = 10  # a client that stops talking frees its thread
    server: FileServer

    def setup(self) -> None:
        super().setup()
        if self.server.trickle:
            self.wfile = _Trickle(self.wfile, self.server)  # type: ignore[assignment]

    def log_message(self, format: str, *args) -> None:
        pass


class FileServer(ThreadingHTTPServer):
    daemon_threads = True
    trickle = 0.0
    """Seconds between the bytes of every answer; 0 sends them at once."""

    def __init__(self, address: tuple[str, int], directory: Path, cert: SelfSigned):
        super().__init__(address, functools.partial(_Handler, directory=str(directory)))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert, cert.key)
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.stopping = threading.Event()

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would ask DNS for the address's name
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError | TimeoutError):
            super().handle_error(request, client_address)  # clients that refuse the certificate or go away are expected

    def start(self) -> FileServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()

"""Floods from one source against the first edge's per-source limits (``--attacks``),
one row each; the flood comes from a second address of the visitor's node, inside
``sshAllowedCidrs`` so sshd is reachable from it too, while the visitor's own address
(and for SSH the operator) measures what everyone else still gets:

* ``attack:meter-fill``  ``SPOOFED`` udp/53 packets from as many spoofed sources in
  100.64.0.0/10 fill the DNS anti-reflection meter (dnsMode edges), then a source the
  set has never seen sends ``PROBES`` queries.  Value: the answers it got; ok when some
  came and no more than the rate lets through (burst + rate x time taken).  A meter
  that lets a source through once it is full, as the unbounded meter did, gives all.
* ``attack:slow-clients``  ``SLOW`` idle connections each to :443 and to a tcp
  service; the visitor's https and tcp requests succeed >= 99 % with p50 <= 2 x the
  p50 measured before the flood.  Value: success %; ok also needs the attacker to hold
  no more than the per-source count: Traefik shrugs off idle connections on this
  machine, so without the count the latency test alone would pass.
* ``attack:dns-tcp``  ``DNS_HOLD`` connections to PowerDNS over TCP held open (each
  one PowerDNS closes is opened again); the visitor's queries over TCP and over UDP
  succeed >= 99 %.  Value: success %.
* ``attack:ssh``  ``SSH_HOLD`` unauthenticated connections to sshd held open; the
  operator's push (the real push script over SSH) succeeds meanwhile.  Without
  ``PerSourceMaxStartups`` sshd's default MaxStartups (10:30:100) refuses most new
  connections once one source holds 64, so the push would fail.  Value: push seconds.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import ssl
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from components.lab import topology
from components.lab.edge_lab import EdgeLab
from components.lab.report import Check
from components.model import edge_contract
from components.model.fleet import Mode
from components.renderers import nft_limits, nftables

SPOOFED = 70_000
SPOOF_NET = 0x64400000
"""100.64.0.0: the CGNAT range, routed in the lab to its CGNAT, which drops the answers."""
SPOOF_CHUNK = 250
SPOOF_PAUSE_S = 0.005
PROBES = 300
PROBE_SPACING_S = 0.003
SLOW = 1000
REQUESTS = 100
"""Per kind (https, tcp) under the flood; a quarter of it before, for the baseline."""
DNS_HOLD = 200
SSH_HOLD = 300
SUCCESS_PCT = 99.0


@contextlib.contextmanager
def attacker(el: EdgeLab) -> Iterator[str]:
    """A second address on the visitor's node (inside ``sshAllowedCidrs``), routed by
    the lab's internet: one more source, as a second machine would be."""
    taken = {e.public_ip for e in el.edges.values()} | {el.client_ip, el.dns_ip, el.cgnat_ip, el.operator_ip}
    ip = topology.operator_address(el.cfg, taken)
    inet = el.nodes["inet"]
    el.client.run("ip", "addr", "add", f"{ip}/32", "dev", "eth0")
    inet.route(f"{ip}/32", "dev", "i-client")
    try:
        yield ip
    finally:
        inet.run("ip", "route", "del", f"{ip}/32", check=False)
        el.client.run("ip", "addr", "del", f"{ip}/32", "dev", "eth0", check=False)


def _first_edge(el: EdgeLab):
    return el.edges[min(el.cfg.edges, key=lambda e: e.index).name]


def _dns_query(qid: int, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def _answered(reply: bytes, qid: int) -> bool:
    """The answer to ``qid``, without error (QR set, RCODE 0)."""
    return (
        len(reply) >= 4 and struct.unpack("!H", reply[:2])[0] == qid and bool(reply[2] & 0x80) and reply[3] & 0x0F == 0
    )


def _p50(seconds: list[float]) -> float:
    return statistics.median(seconds) if seconds else 0.0


# -- attack:meter-fill ---------------------------------------------------------------


def _spoof(dst: str, first: int, count: int) -> float:
    """``count`` empty udp/53 datagrams, each from its own address of 100.64.0.0/10
    (a raw socket: the kernel fills in the IP checksum; UDP's may be zero in IPv4).
    Empty, so PowerDNS drops them at once and stays free for the real queries."""
    started = time.monotonic()
    daddr = socket.inet_aton(dst)
    udp = struct.pack("!HHHH", 40000, 53, 8, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for i in range(first, first + count):
            if i % SPOOF_CHUNK == 0:
                time.sleep(SPOOF_PAUSE_S)  # the veth queues hold 1,000 packets; beyond that they drop
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, socket.IPPROTO_UDP, 0, struct.pack("!I", SPOOF_NET + i), daddr
            )
            s.sendto(ip + udp, (dst, 0))
    return time.monotonic() - started


def _query_burst(source: str, dst: str, name: str) -> tuple[int, float]:
    """``PROBES`` queries paced ``PROBE_SPACING_S`` apart: (answered, seconds sending)."""
    got: set[int] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setblocking(False)
        started = time.monotonic()
        for qid in range(1, PROBES + 1):
            s.sendto(_dns_query(qid, name), (dst, 53))
            time.sleep(PROBE_SPACING_S)
            with contextlib.suppress(BlockingIOError):
                while True:
                    reply = s.recv(4096)
                    got.add(struct.unpack("!H", reply[:2])[0])
        sending = time.monotonic() - started
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            if select.select([s], [], [], 0.1)[0]:
                reply = s.recv(4096)
                got.add(struct.unpack("!H", reply[:2])[0])
    return len(got), sending


def _rate(spec: str) -> tuple[int, int]:
    """(per second, burst) of an nftables rate like ``50/second burst 100 packets``."""
    found = re.fullmatch(r"(\d+)/second burst (\d+) packets", spec)
    assert found, spec
    return int(found[1]), int(found[2])


def element_count(node, name: str) -> int:
    listing = json.loads(node.run("nft", "-j", "list", "set", "inet", edge_contract.NFT_TABLE, name).stdout)
    sets = [x["set"] for x in listing["nftables"] if "set" in x]
    return len(sets[0].get("elem", [])) if sets else 0


def meter_fill(el: EdgeLab) -> Check:
    name = "attack:meter-fill"
    if not el.cfg.dns.edge_served:
        return Check(name, False, None, "", "needs dnsMode edges: the row fills the udp/53 meter")
    edge = _first_edge(el)
    query = f"ns1.{el.cfg.dns.zone}"
    per_s, burst = _rate(nftables.DNS_RATE)
    with attacker(el) as new_source:
        started = time.monotonic()
        spoofing = el.client.call(lambda: _spoof(edge.public_ip, 1, SPOOFED))
        got, sending = el.client.call(lambda: _query_burst(new_source, edge.public_ip, query))
        # Asked before the spoofed entries time out: a set with room would hold the new source.
        found = edge.node.run(
            "nft", "get", "element", "inet", edge_contract.NFT_TABLE, "dns_v4", f"{{ {new_source} }}", check=False
        )  # fmt: skip
        held = element_count(edge.node, "dns_v4")
        took = time.monotonic() - started
    bound = burst + per_s * sending + 5
    full = found.returncode != 0
    ok = 0 < got <= bound and full
    detail = (
        f"{SPOOFED:,} spoofed sources sent in {spoofing:.1f} s; "
        f"{'the set was full: the new source was not added' if full else 'the set took the new source: not full'} "
        f"({held:,} of {nft_limits.METER_SIZE:,} elements left when counted); "
        f"the new source got {got} of {PROBES} queries answered in {sending:.1f} s (the rate allows {bound:.0f}); "
        f"{took:.1f} s in all"
    )
    return Check(name, ok, got, f"of {PROBES}", detail)


# -- holding connections -------------------------------------------------------------


class Holder:
    """One source's connections, opened without blocking and held until ``stop``; each
    one the server closes is opened again (at most ``reopen_per_s``)."""

    def __init__(self, source: str, targets: list[tuple[str, int]], count: int, reopen_per_s: float = 50):
        self.source, self.targets, self.count = source, targets, count
        self.reopen_per_s = reopen_per_s
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.established: dict[tuple[str, int], int] = {}
        self.closed = 0

    def _open(self, target: tuple[str, int]) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((self.source, 0))
        s.setblocking(False)
        s.connect_ex(target)
        return s

    def run(self, settle_s: float = 2.0) -> None:
        """Open them all, count what got established within ``settle_s``, then hold.
        ``poll``, not ``select``: thousands of descriptors."""
        pending = {}
        for target in self.targets:
            for _ in range(self.count):
                s = self._open(target)
                pending[s.fileno()] = (s, target)
        up: dict[int, tuple[socket.socket, tuple[str, int]]] = {}
        waiting = select.poll()
        for fd in pending:
            waiting.register(fd, select.POLLOUT)
        end = time.monotonic() + settle_s
        while pending and time.monotonic() < end:
            for fd, _event in waiting.poll(100):
                waiting.unregister(fd)
                s, target = pending.pop(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    up[fd] = (s, target)
                else:
                    s.close()
        for target in self.targets:
            self.established[target] = sum(1 for _, t in up.values() if t == target)
        self.ready.set()
        try:
            self._hold(up)
        finally:
            for s, _ in [*up.values(), *pending.values()]:
                s.close()

    def _hold(self, up: dict[int, tuple[socket.socket, tuple[str, int]]]) -> None:
        held = select.poll()
        for fd in up:
            held.register(fd, select.POLLIN)
        budget, last = 0.0, time.monotonic()
        while not self.stop.is_set():
            events = held.poll(100)
            now = time.monotonic()
            budget = min(self.reopen_per_s, budget + (now - last) * self.reopen_per_s)
            last = now
            for fd, _event in events:
                s, target = up[fd]
                try:
                    if s.recv(4096, socket.MSG_DONTWAIT):
                        continue  # a banner or a greeting: read, and still held
                except BlockingIOError:
                    continue
                except OSError:
                    pass  # reset: closed too
                held.unregister(fd)
                del up[fd]
                s.close()
                self.closed += 1
                if budget >= 1:
                    budget -= 1
                    again = self._open(target)
                    up[again.fileno()] = (again, target)
                    held.register(again.fileno(), select.POLLIN)


@contextlib.contextmanager
def holding(el: EdgeLab, holder: Holder) -> Iterator[Holder]:
    thread = threading.Thread(target=lambda: el.client.call(holder.run))
    thread.start()
    try:
        holder.ready.wait(30)
        yield holder
    finally:
        holder.stop.set()
        thread.join()


# -- attack:slow-clients -------------------------------------------------------------


def _https(ip: str, host: str, cafile: str) -> float | None:
    started = time.monotonic()
    try:
        ctx = ssl.create_default_context(cafile=cafile)
        with socket.create_connection((ip, 443), timeout=3) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    return time.monotonic() - started if data.startswith(b"HTTP/1.1 200") else None


def _tcp_echo(ip: str, port: int) -> float | None:
    """A request to the lab's tcp echo service: its greeting line, then our token back."""
    started = time.monotonic()
    token = f"token-{time.monotonic_ns()}\n".encode()
    try:
        with socket.create_connection((ip, port), timeout=3) as s:
            f = s.makefile("rb")
            if not f.readline():
                return None
            s.sendall(token)
            echoed = f.readline()
    except OSError:
        return None
    return time.monotonic() - started if echoed == token else None


def _measure(requests: list[Callable[[], float | None]], rounds: int) -> list[list[float | None]]:
    """``rounds`` of each request, interleaved; the seconds of each, None when it failed."""
    out: list[list[float | None]] = [[] for _ in requests]
    for _ in range(rounds):
        for i, request in enumerate(requests):
            out[i].append(request())
    return out


def _summary(results: list[float | None]) -> tuple[int, float]:
    good = [r for r in results if r is not None]
    return len(good), _p50(good)


def slow_clients(el: EdgeLab) -> Check:
    name = "attack:slow-clients"
    edge = _first_edge(el)
    http = next((s for s in el.cfg.services if s.mode is Mode.HTTP), None)
    tcp = next((s for s in el.cfg.services if s.mode is Mode.TCP and not s.proxy_protocol), None)
    if http is None or tcp is None or el.http_cert is None:
        return Check(name, False, None, "", "needs an http service and a tcp service without proxyProtocol")
    cafile, host, port = str(el.http_cert[0]), http.hostnames[0], tcp.port
    assert port is not None
    requests = [lambda: _https(edge.public_ip, host, cafile), lambda: _tcp_echo(edge.public_ip, port)]
    before = el.client.call(lambda: _measure(requests, REQUESTS // 4))
    with attacker(el) as source:
        holder = Holder(source, [(edge.public_ip, 443), (edge.public_ip, port)], SLOW, reopen_per_s=0)
        with holding(el, holder):
            during = el.client.call(lambda: _measure(requests, REQUESTS))
    kinds = ("https", f"tcp:{port}")
    base = [_summary(r) for r in before]
    flood = [_summary(r) for r in during]
    total = sum(len(r) for r in during)
    success = 100.0 * sum(n for n, _ in flood) / total
    established = sum(holder.established.values())
    ok = (
        all(n == len(r) for (n, _), r in zip(base, before, strict=True))
        and success >= SUCCESS_PCT
        and all(f <= 2 * b for (_, b), (_, f) in zip(base, flood, strict=True))
        and established <= nft_limits.CONNECTIONS_PER_SOURCE
    )
    p50s = "; ".join(
        f"{k} p50 {b * 1000:.1f} ms before, {f * 1000:.1f} ms during"
        for k, (_, b), (_, f) in zip(kinds, base, flood, strict=True)
    )
    detail = (
        f"{established} of {2 * SLOW} idle connections established (:443 {holder.established[(edge.public_ip, 443)]}, "
        f"tcp:{port} {holder.established[(edge.public_ip, port)]}; per-source count {nft_limits.CONNECTIONS_PER_SOURCE}); "
        f"{p50s}; {sum(n for n, _ in flood)}/{total} requests succeeded"
    )
    return Check(name, ok, round(success, 1), "%", detail)


# -- attack:dns-tcp ------------------------------------------------------------------


def _dns_udp(source: str, ip: str, name: str, qid: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(2)
        try:
            s.sendto(_dns_query(qid, name), (ip, 53))
            return _answered(s.recv(4096), qid)
        except OSError:
            return False


def _dns_tcp(source: str, ip: str, name: str, qid: int) -> bool:
    try:
        with socket.create_connection((ip, 53), timeout=2, source_address=(source, 0)) as s:
            q = _dns_query(qid, name)
            s.sendall(struct.pack("!H", len(q)) + q)
            f = s.makefile("rb")
            head = f.read(2)
            return len(head) == 2 and _answered(f.read(struct.unpack("!H", head)[0]), qid)
    except OSError:
        return False


def _ask_dns(source: str, ip: str, name: str) -> tuple[list[bool], list[bool]]:
    """``REQUESTS`` questions over TCP and over UDP, alternating, spaced below the
    udp/53 rate."""
    over_tcp, over_udp = [], []
    for qid in range(1, REQUESTS + 1):
        over_tcp.append(_dns_tcp(source, ip, name, qid))
        over_udp.append(_dns_udp(source, ip, name, qid))
        time.sleep(0.02)
    return over_tcp, over_udp


def dns_tcp(el: EdgeLab) -> Check:
    name = "attack:dns-tcp"
    if not el.cfg.dns.edge_served:
        return Check(name, False, None, "", "needs dnsMode edges: the row floods the edge's PowerDNS")
    edge = _first_edge(el)
    query = el.cfg.services[0].hostnames[0]
    with attacker(el) as source:
        holder = Holder(source, [(edge.public_ip, 53)], DNS_HOLD)
        with holding(el, holder):
            over_tcp, over_udp = el.client.call(lambda: _ask_dns(el.client_ip, edge.public_ip, query))
    answered = sum(over_tcp) + sum(over_udp)
    success = 100.0 * answered / (len(over_tcp) + len(over_udp))
    established = holder.established[(edge.public_ip, 53)]
    ok = success >= SUCCESS_PCT and established <= nft_limits.CONNECTIONS_PER_SOURCE
    detail = (
        f"one source got {established} of {DNS_HOLD} connections to PowerDNS over TCP established "
        f"(PowerDNS closed {holder.closed}, each opened again); another source's queries: "
        f"{sum(over_tcp)}/{len(over_tcp)} over TCP, {sum(over_udp)}/{len(over_udp)} over UDP answered"
    )
    return Check(name, ok, round(success, 1), "%", detail)


# -- attack:ssh ----------------------------------------------------------------------


def ssh_flood(el: EdgeLab) -> Check:
    name = "attack:ssh"
    edge = _first_edge(el)
    started = time.monotonic()
    baseline = edge.ssh("true", timeout=30)
    login_before = time.monotonic() - started
    box: dict[str, Any] = {}
    with attacker(el) as source:
        holder = Holder(source, [(edge.public_ip, 22)], SSH_HOLD)
        with holding(el, holder):
            started = time.monotonic()
            login = edge.ssh("true", timeout=30)
            box["login"] = time.monotonic() - started
            started = time.monotonic()
            pushed = edge.push(el.rendered.bundle(edge.name))
            box["push"] = time.monotonic() - started
            reopened = holder.closed
    established = holder.established[(edge.public_ip, 22)]
    ok = baseline.returncode == 0 and login.returncode == 0 and pushed.ok
    detail = (
        f"one source got {established} of {SSH_HOLD} connections to sshd established, sending nothing "
        f"(sshd closed {reopened}, each opened again); the operator's ssh login + command took "
        f"{login_before:.2f} s before, {box['login']:.2f} s during (exit {login.returncode}); "
        f"the push {'succeeded' if pushed.ok else 'failed: ' + pushed.output[-300:]}"
    )
    return Check(name, ok, round(box["push"], 1), "s push", detail)


def run_floods(el: EdgeLab) -> list[Check]:
    return [meter_fill(el), slow_clients(el), dns_tcp(el), ssh_flood(el)]

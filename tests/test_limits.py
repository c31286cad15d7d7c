"""The edge's per-source limits, checked in what each daemon really loads.

nftables' meters and connection counts (nft itself, then a namespace with a flood of
spoofed sources), Traefik's timeouts, sshd's start-up limits (``sshd -T`` prints the
values it would run with) and PowerDNS's TCP limits (``pdns_server --config=diff``
prints the settings it knows that differ from its defaults: a misspelt one is not
among them).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from components import config as config_module
from components.config import stack
from components.lab.netns import wait_for
from components.model import edge_contract
from components.renderers import bootstrap, edge_dns, nft_limits, nftables, templates, traefik
from tests.support import LAB_STACK, PROJECT, namespaces, require_tool

FLEET = (["203.0.113.10"], ["2001:db8::10"])
EDGE = "203.0.113.1"
VISITOR = "203.0.113.7"
NEIGHBOUR = "203.0.113.8"


def _lab_cfg():
    """The lab stack: forward services (tcp and udp), a udp service, dnsMode edges."""
    return config_module.parse(stack.load(LAB_STACK, project_file=PROJECT).raw(), stack="lab")


def _rulesets(raw_config) -> dict[str, str]:
    records = config_module.parse({**raw_config, "dnsMode": "records", "dnsEdgeZone": None}, stack="dev")
    edges = config_module.parse({**raw_config, "dnsMode": "edges"}, stack="dev")
    lab = _lab_cfg()
    return {
        "records-first-boot": nftables.ruleset(records),
        "records": nftables.ruleset(records, FLEET),
        "edges-first-boot": nftables.ruleset(edges),
        "edges": nftables.ruleset(edges, FLEET),
        "lab-first-boot": nftables.ruleset(lab),
        "lab": nftables.ruleset(lab, FLEET),
    }


def _sets(text: str) -> dict[str, str]:
    return dict(re.findall(r"^    set (\w+) \{ (.*) \}$", text, re.M))


def test_every_per_source_set_is_bounded_and_rate_meters_expire(raw_config):
    for name, text in _rulesets(raw_config).items():
        assert " meter " not in text, name  # an anonymous meter has no timeout
        sets = _sets(text)
        used = set(re.findall(r"(?:update|add|!=) @(\w+)", text))
        # Connections are counted from the first boot on (its ruleset is in the user data).
        assert used and "ct count" in text, name
        for set_name in used:
            spec = sets[set_name]
            assert f"size {nft_limits.METER_SIZE};" in spec, (name, spec)
            if "limit rate" in text.split(f"@{set_name} {{", 1)[1].split("}", 1)[0]:
                assert "flags dynamic,timeout; timeout 10s;" in spec, (name, spec)


def test_the_verifier_ignores_whom_the_sets_have_counted(raw_config):
    """cgnat-edge-verify compares the running ruleset with the file; the elements the
    kernel adds to the per-source sets are traffic, not configuration."""
    cfg = _lab_cfg()
    ignored = set(bootstrap.desired_state(cfg, cfg.edges[0], None)["nftFilledSets"])
    for name, text in _rulesets(raw_config).items():
        dynamic = re.findall(r"^    set (\w+) \{ [^}]*flags dynamic", text, re.M)
        assert dynamic or name in ("edges-first-boot", "lab-first-boot"), name
        assert {f"inet cgnat_edge {s}" for s in dynamic} <= ignored, name


def test_ipv6_sources_are_keyed_per_64(raw_config):
    text = _rulesets(raw_config)["edges"]
    v6 = [line.strip() for line in text.splitlines() if "_v6" in line and "@" in line]
    assert len(v6) >= 3
    for line in v6:
        assert "ip6 saddr & ffff:ffff:ffff:ffff::" in line, line
    assert (
        "udp dport 53 update @dns_v6 { ip6 saddr & ffff:ffff:ffff:ffff:: limit rate over 50/second burst 100 packets } drop"
        in text
    )
    # A source the full set cannot take shares one source's budget with the others.
    assert "udp dport 53 ip saddr != @dns_v4 limit rate over 50/second burst 100 packets drop" in text
    # Before conntrack's shortcut: a reflection flood repeats one flow, established after one answer.
    assert text.index("udp dport 53 update @dns_v4") < text.index("ct state established,related accept")


def test_connections_are_counted_per_source_on_every_stateful_public_port():
    cfg = _lab_cfg()
    text = nftables.ruleset(cfg, FLEET)
    tcp = ", ".join(str(p) for p in sorted({22, *cfg.public_ports("tcp")} - {2525}))  # 2525: forward (DNAT)
    assert f"tcp dport {{ {tcp} }} ct state new add @conn_v4 {{ ip saddr ct count over 64 }} drop" in text
    assert "53" in tcp.split(", ") and "443" in tcp.split(", ")
    assert "udp dport { 2456 } ct" not in text and "l4proto udp ct state new add" not in text  # UDP: no count
    forward = text.split("chain forward {", 1)[1].split("\n    }\n", 1)[0]
    assert "ct status dnat meta l4proto tcp ct state new add @conn_v4 { ip saddr ct count over 64 } drop" in forward
    # Counted before anything accepts them.
    assert forward.index("ct count") < forward.index("dnat oifname")
    assert text.index("@conn_v4") < text.index("tcp dport 22 accept")


def test_new_udp_flows_are_rate_limited_per_source_on_udp_and_forward_services():
    """UDP is limited by the rate of new flows, one budget per source for every udp and
    forward service; udp/53 keeps its own meter."""
    text = nftables.ruleset(_lab_cfg(), FLEET)
    assert "set udp_v6 { type ipv6_addr; size 65535; flags dynamic,timeout; timeout 10s; }" in text
    rate = "limit rate over 20/second burst 100 packets"
    assert f"udp dport {{ 2456, 51820 }} ct state new update @udp_v4 {{ ip saddr {rate} }} drop" in text
    assert f"udp dport {{ 2456, 51820 }} ct state new ip saddr != @udp_v4 {rate} drop" in text
    forward = text.split("chain forward {", 1)[1].split("\n    }\n", 1)[0]
    meter = f"ct status dnat meta l4proto udp ct state new update @udp_v6 {{ ip6 saddr & ffff:ffff:ffff:ffff:: {rate} }} drop"
    assert meter in forward
    assert forward.index("@udp_v4") < forward.index("udp dport 27015-27017 accept")
    # From the first boot on: the user data's ruleset has the same meter.
    first_boot = nftables.ruleset(_lab_cfg())
    assert f"udp dport {{ 2456, 51820 }} ct state new update @udp_v4 {{ ip saddr {rate} }} drop" in first_boot
    assert "set udp_v4 { type ipv4_addr; size 65535; flags dynamic,timeout; timeout 10s; }" in first_boot


@pytest.mark.netns
@pytest.mark.lab
def test_rulesets_pass_nft_check(raw_config, tmp_path):
    require_tool("nft")
    for name, text in _rulesets(raw_config).items():
        path = tmp_path / f"{name}.nft"
        path.write_text(text)
        done = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stderr)


def test_traefik_bounds_what_a_silent_client_holds(fleet_config):
    eps = traefik.static_config(fleet_config)["entryPoints"]
    assert eps["websecure"]["transport"]["respondingTimeouts"] == {"readTimeout": "120s", "idleTimeout": "60s"}
    assert eps["web"]["transport"]["respondingTimeouts"] == {"readTimeout": "30s", "idleTimeout": "60s"}
    udp = [ep for ep in eps.values() if "udp" in ep]
    assert udp and all(ep["udp"] == {"timeout": traefik.UDP_SESSION_TIMEOUT} for ep in udp)


def test_sshd_runs_with_the_start_up_limits(fleet_config, tmp_path):
    require_tool("sshd", "ssh-keygen")
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    conf = tmp_path / "sshd_config"
    conf.write_text(
        templates.render(
            "sshd-hardening.conf.j2",
            permit_root_login="no",
            host_key=str(key),
            install_key=str(tmp_path / "install_key"),
            authorized_keys=edge_contract.AUTHORIZED_KEYS_DIR,
            metrics="10.254.0.5:9100",
        )
    )
    done = subprocess.run(
        ["sshd", "-T", "-f", str(conf), "-C", "user=admin,host=h,addr=203.0.113.7"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    effective = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    # One source holds at most 4 of the 10 unauthenticated connections sshd takes
    # before it starts refusing: a flood from one source leaves room for a push.
    assert effective["maxstartups"] == "10:30:100"
    assert effective["persourcemaxstartups"] == "4"
    assert effective["persourcenetblocksize"] == "32:64"
    assert effective["logingracetime"] == "20"
    # The operator's one forward, to the metrics endpoint (docs/metrics.md).
    assert (effective["allowtcpforwarding"], effective["permitopen"]) == ("local", "10.254.0.5:9100")
    assert effective["permitlisten"] == "none"


def test_powerdns_knows_the_tcp_limits(tmp_path):
    require_tool("pdns_server")
    cfg = _lab_cfg()
    wanted = {
        "max-tcp-connections": "50",
        "max-tcp-connections-per-client": str(edge_dns.PDNS_TCP_PER_CLIENT),
        "max-tcp-connection-duration": "10",
        "max-tcp-transactions-per-conn": "100",
    }
    limits = [line for line in edge_dns.pdns_conf(cfg).splitlines() if line.split("=", 1)[0] in wanted]
    assert len(limits) == len(wanted)
    (tmp_path / "pdns.conf").write_text("launch=\n" + "\n".join(limits) + "\n")
    done = subprocess.run(
        ["pdns_server", f"--config-dir={tmp_path}", "--config=diff"], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    known = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line and not line.startswith("#"))
    assert {k: known.get(k) for k in wanted} == wanted


# ---------------------------------------------------------------------------
# In a namespace: a flood of spoofed sources, one source holding connections
# ---------------------------------------------------------------------------

SPOOF = r"""
import random, socket, struct, sys
target, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def checksum(data):
    data += b"\0" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton(target)
for i in range(count):  # 100.64.0.0/10: shared address space, never routed here
    src = struct.pack("!I", (100 << 24) | (64 << 16) | (i + 1))
    udp = struct.pack("!HHHH", 40000, port, 8 + 4, 0) + b"fill"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    raw.sendto(ip + udp, (target, 0))
"""

COUNT_UDP = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.5)
print("ready", flush=True)
got = 0
end = None
while True:
    try:
        data, peer = s.recvfrom(100)
    except socket.timeout:
        if end and time.monotonic() > end:
            break
        continue
    if data == b"stop":
        end = time.monotonic() + 1
    elif peer[0] == sys.argv[3]:
        got += 1
print(got, flush=True)
"""

SEND_UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for _ in range(int(sys.argv[4])):
    s.sendto(b"query", (sys.argv[2], int(sys.argv[3])))
"""

SMALL_METER = 1000
"""The meters' size in the namespace test, so that a few thousand spoofed sources fill
them in well under their timeout (the mechanism is the same at 65,535)."""


@pytest.fixture
def pair():
    with namespaces("nft", "socat", "ss") as lab:
        edge, net = lab.node("edge"), lab.node("net")
        lab.link(edge, "e0", [f"{EDGE}/24"], net, "n0", [f"{VISITOR}/24", f"{NEIGHBOUR}/24"])
        edge.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.e0.rp_filter=0")
        yield edge, net


@pytest.mark.netns
@pytest.mark.lab
def test_a_full_dns_meter_still_limits_a_new_source(raw_config, pair, tmp_path):
    edge, net = pair
    cfg = config_module.parse({**raw_config, "dnsMode": "edges"}, stack="dev")
    text = nftables.ruleset(cfg, FLEET).replace(f"size {nft_limits.METER_SIZE};", f"size {SMALL_METER};")
    path = tmp_path / "nftables.conf"
    path.write_text(text)
    loaded = edge.run("nft", "-f", str(path), check=False)
    assert loaded.returncode == 0, loaded.stderr
    counter = edge.spawn(sys.executable, "-c", COUNT_UDP, EDGE, "53", VISITOR, stdout=subprocess.PIPE, text=True)
    assert counter.stdout.readline().strip() == "ready"

    net.run(sys.executable, "-c", SPOOF, EDGE, "53", str(3 * SMALL_METER), timeout=30)
    held = edge.run("nft", "list", "set", "inet", "cgnat_edge", "dns_v4").stdout
    assert held.count("100.64.") >= SMALL_METER * 0.95, "the flood did not fill the meter"
    # The new source's 300 queries leave at once; the meter has no room for it.
    net.run(sys.executable, "-c", SEND_UDP, VISITOR, EDGE, "53", "300", timeout=20)
    time.sleep(0.2)
    edge.run(sys.executable, "-c", f"import socket; socket.socket(2, 2).sendto(b'stop', ('{EDGE}', 53))")
    out, _ = counter.communicate(timeout=15)
    got = int(out.strip())
    assert got <= 150, f"{got} of 300 queries from a new source passed a full meter"


BURST_HOLD = r"""
import select, socket, sys, time
source, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind((source, 0))
    s.connect_ex((host, port))
    socks.append(s)
    time.sleep(0.005)
time.sleep(0.8)
_, writable, _ = select.select([], socks, [], 0)
print(sum(1 for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0), flush=True)
sys.stdin.read()  # hold them until told
"""


@pytest.mark.netns
@pytest.mark.lab
def test_one_source_holds_at_most_its_share_of_connections(raw_config, pair, tmp_path):
    edge, net = pair
    cfg = config_module.parse(raw_config, stack="dev")
    path = tmp_path / "nftables.conf"
    path.write_text(nftables.ruleset(cfg, FLEET))
    loaded = edge.run("nft", "-f", str(path), check=False)
    assert loaded.returncode == 0, loaded.stderr
    edge.spawn("socat", f"TCP-LISTEN:443,bind={EDGE},reuseaddr,fork,backlog=512", "EXEC:cat")
    wait_for(lambda: f"{EDGE}:443" in edge.run("ss", "-Hlnt", check=False).stdout, message="socat on 443")

    hog = net.spawn(
        sys.executable,
        "-c",
        BURST_HOLD,
        VISITOR,
        EDGE,
        "443",
        "100",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    held = int(hog.stdout.readline())
    assert held == nft_limits.CONNECTIONS_PER_SOURCE, held
    other = net.spawn(
        sys.executable,
        "-c",
        BURST_HOLD,
        NEIGHBOUR,
        EDGE,
        "443",
        "10",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert int(other.stdout.readline()) == 10  # another visitor is not starved
    hog.stdin.close()
    other.stdin.close()


SEND_FLOWS = r"""
import socket, sys, time
started = time.monotonic()
for _ in range(int(sys.argv[4])):  # each from a new source port: a new flow
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((sys.argv[1], 0))
        s.sendto(b"hello", (sys.argv[2], int(sys.argv[3])))
print(time.monotonic() - started, flush=True)
"""


@pytest.mark.netns
@pytest.mark.lab
def test_new_udp_flows_of_one_source_are_rate_limited(pair, tmp_path):
    edge, net = pair
    path = tmp_path / "nftables.conf"
    path.write_text(nftables.ruleset(_lab_cfg(), FLEET))
    loaded = edge.run("nft", "-f", str(path), check=False)
    assert loaded.returncode == 0, loaded.stderr
    counter = edge.spawn(sys.executable, "-c", COUNT_UDP, EDGE, "2456", VISITOR, stdout=subprocess.PIPE, text=True)
    assert counter.stdout.readline().strip() == "ready"
    took = float(net.run(sys.executable, "-c", SEND_FLOWS, VISITOR, EDGE, "2456", "300", timeout=20).stdout)
    time.sleep(0.2)
    edge.run(sys.executable, "-c", f"import socket; socket.socket(2, 2).sendto(b'stop', ('{EDGE}', 2456))")
    out, _ = counter.communicate(timeout=15)
    got = int(out.strip())
    # The burst (100) passes, then 20 new flows a second.
    assert 100 <= got <= 100 + 20 * took + 5, f"{got} of 300 new flows in {took:.2f} s"

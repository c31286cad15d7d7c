"""Protection at the edge: what the configuration means and what the edge's country
loader does with a registry's file (its checks, its merge, the sets it loads).

The packets (every mode dropped and let back, CrowdSec bans, sign-in) are proven in
the lab: tests/test_protection_lab.py."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from components import config as config_module
from components.config import ConfigError
from components.lab.certs import self_signed
from components.lab.file_server import FileServer
from components.lab.netns import Lab, wait_for
from components.lab.protection import rir_file
from components.model import edge_contract
from components.renderers import home_configs, nftables, protection, templates, traefik
from tests.support import LAB_STACK, PROJECT, require_root, require_tool


def _loader():
    spec = importlib.util.spec_from_file_location("geo_sets", templates.DIRECTORY / "geo-sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def raw(raw_config):
    return copy.deepcopy(raw_config)


def _service(raw: dict, name: str) -> dict:
    return next(s for s in raw["services"] if s["name"] == name)


def test_fleet_default_covers_every_port_and_a_service_may_override(raw):
    raw["denyCountries"] = ["cn", "RU", "CN"]
    _service(raw, "valheim")["allowCountries"] = ["DE", "AT"]
    cfg = config_module.parse(raw)
    assert cfg.protection.geo.deny == ("CN", "RU")
    rules = {(proto, ports): policy for proto, ports, policy in protection.geo_rules(cfg)}
    assert rules[("tcp", (80, 443, 2222, 25565))].deny == ("CN", "RU")
    assert rules[("udp", (2456,))].allow == ("AT", "DE")
    assert protection.countries(cfg) == ["AT", "CN", "DE", "RU"]
    text = nftables.ruleset(cfg)
    assert "tcp dport { 80, 443, 2222, 25565 } jump geo_0" in text
    assert (
        "ip saddr @geo4_at return" in text and text.count("        counter name geo_drop_unlisted drop\n") == 1
    )  # the allow chain's end
    assert 'include "/var/lib/cgnat-edge/geo/ru.nft*"' in text
    # No country filters: no sets, no chain, nothing included.
    raw["denyCountries"] = []
    del _service(raw, "valheim")["allowCountries"]
    plain = nftables.ruleset(config_module.parse(raw))
    assert "chain geo" not in plain and "include" not in plain


def test_ssh_and_wireguard_are_never_filtered_by_country(raw):
    raw["allowCountries"] = ["DE"]
    text = nftables.ruleset(config_module.parse(raw))
    jumps = [line for line in text.splitlines() if "jump geo_" in line]
    ports = {int(p) for j in jumps for p in re.findall(r"\d+", j.split("jump")[0])}
    assert ports == {80, 443, 2222, 25565, 2456}  # never 22 (SSH) nor 51820 (WireGuard)


@pytest.mark.netns
def test_ruleset_with_country_sets_loads_with_cached_lists(raw, tmp_path):
    """nft itself, with and without the cached country files the ruleset includes."""
    require_tool("nft")
    require_root()
    raw["denyCountries"] = ["AQ"]
    text = nftables.ruleset(config_module.parse(raw))
    text = text.replace(edge_contract.GEO_STATE_DIR, str(tmp_path))
    conf = tmp_path / "nftables.conf"
    conf.write_text(text)
    check = ["unshare", "--net", "sh", "-c", 'nft -f "$1" && nft list set inet cgnat_edge geo4_aq', "sh", str(conf)]
    before = subprocess.run(check, capture_output=True, text=True)
    assert before.returncode == 0, before.stderr
    assert "elements" not in before.stdout
    (tmp_path / "aq.nft").write_text("add element inet cgnat_edge geo4_aq { 203.0.113.0/28 }\n")
    after = subprocess.run(check, capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    assert "203.0.113.0/28" in after.stdout


def test_forward_auth_renders_the_middleware_and_opens_home_to_the_provider(raw):
    _service(raw, "blog")["forwardAuth"] = {"address": "http://192.168.1.5:9091/api/authz/forward-auth"}
    cfg = config_module.parse(raw)
    dynamic = traefik.dynamic_config(cfg)
    mw = dynamic["http"]["middlewares"]["blog-signin"]["forwardAuth"]
    assert mw == {
        "address": "http://192.168.1.5:9091/api/authz/forward-auth",
        "trustForwardHeader": True,
        "authResponseHeaders": ["Remote-User", "Remote-Groups", "Remote-Email", "Remote-Name"],
    }
    assert dynamic["http"]["routers"]["blog"]["middlewares"][0] == "blog-signin"  # asked before anything else
    allow = home_configs._forward_allow(cfg)
    assert {"service": "blog", "address": "192.168.1.5", "port": 9091, "protocol": "tcp"} in allow


def test_forward_auth_on_the_edge_is_not_a_home_target(raw):
    _service(raw, "blog")["forwardAuth"] = "http://127.0.0.1:9091/api/verify"
    cfg = config_module.parse(raw)
    assert not any(a["port"] == 9091 for a in home_configs._forward_allow(cfg))


def test_crowdsec_adds_the_access_log_and_the_setup_step(raw):
    assert "accessLog" not in traefik.static_config(config_module.parse(raw))
    raw["crowdsec"] = "offline"
    cfg = config_module.parse(raw)
    assert traefik.static_config(cfg)["accessLog"]["filePath"] == protection.ACCESS_LOG
    assert [protection.CROWDSEC_SETUP_PATH, "offline", protection.BOUNCER_SETTINGS_PATH] in protection.runcmd(cfg)
    paths = {p for p, _, _ in protection.node_files(cfg)}
    assert {protection.CROWDSEC_ACQUIS_PATH, protection.BOUNCER_SETTINGS_PATH} <= paths


def test_the_bouncer_fills_sets_the_ruleset_declares_and_drops_before_the_dnat(raw):
    """Set-only: the bouncer's settings name the tables and sets the ruleset declares,
    whose prerouting chains run before the forward services' DNAT (priority dstnat)."""
    assert "crowdsec" not in nftables.ruleset(config_module.parse(raw))
    raw["crowdsec"] = "offline"
    cfg = config_module.parse(raw)
    text = nftables.ruleset(cfg)
    settings = yaml.safe_load(protection.bouncer_settings())
    for family, version in (("ip", "ipv4"), ("ip6", "ipv6")):
        nft = settings["nftables"][version]
        assert nft["enabled"] is True and nft["set-only"] is True
        name = settings[f"blacklists_{version}"]
        block = text.split(f"table {family} {nft['table']} {{\n", 1)[1].split("\n}\n", 1)[0]
        assert f"set {name} {{ type {version}_addr; flags timeout; }}" in block  # the bouncer adds with timeouts
        assert f"chain {nft['chain']} {{" in block
        assert "type filter hook prerouting priority dstnat - 20; policy accept;" in block
        assert f"{family} saddr @{name} counter drop" in block
    assert protection.crowdsec_sets(cfg) == [
        "ip cgnat_edge_crowdsec crowdsec-blacklists",
        "ip6 cgnat_edge_crowdsec6 crowdsec6-blacklists",
    ]


def test_setup_merges_the_settings_into_the_bouncers_local_file(tmp_path):
    """The part of crowdsec-setup.sh that writes the .local file, twice: the API key
    Debian's postinst wrote stays, the settings appear once."""
    script = templates.text("crowdsec-setup.sh")
    start = script.index("overrides=")
    part = script[start : script.index("systemctl enable crowdsec-firewall-bouncer", start)]
    local = tmp_path / "bouncer.yaml.local"
    local.write_text("mode: nftables\napi_key: k3y\n")
    settings = tmp_path / "settings.yaml"
    settings.write_text(protection.bouncer_settings())
    part = part.replace("/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml.local", str(local))
    for _ in range(2):
        subprocess.run(["bash", "-euc", part], env={"settings": str(settings), "PATH": "/usr/bin:/bin"}, check=True)
    doc = yaml.safe_load(local.read_text())
    assert doc["api_key"] == "k3y" and doc["nftables"]["ipv4"]["set-only"] is True
    assert local.read_text().count("# cgnat-edge begin") == 1


def test_every_problem_is_reported_at_once(raw):
    raw["allowCountries"] = ["DE", "XX"]
    raw["denyCountries"] = ["FR"]
    _service(raw, "cloud")["forwardAuth"] = {"address": "http://192.168.1.5:9091/"}
    with pytest.raises(ConfigError) as err:
        config_module.parse(raw)
    text = str(err.value)
    assert "cgnat-edge:allowCountries[1]: 'XX'" in text
    assert "cgnat-edge:services[0].forwardAuth: cannot work on a passthrough service" in text


# -- the loader ----------------------------------------------------------------------


def test_loader_checks_digest_header_and_record_count():
    geo = _loader()
    text = rir_file({"AQ": ["203.0.113.0/28"], "NZ": ["198.51.100.0/24", "2001:db8::/32"]})
    data = text.encode()
    geo.check("u", data, f"MD5 (x) = {hashlib.md5(data).hexdigest()}\n".encode())
    with pytest.raises(geo.SourceError, match="MD5"):
        geo.check("u", data + b"lab|AQ|ipv4|192.0.2.0|1|20260101|allocated|x\n", hashlib.md5(data).hexdigest().encode())
    cut = b"\n".join(data.splitlines()[:-1]) + b"\n"
    with pytest.raises(geo.SourceError, match="declares 3 records, file holds 2"):
        geo.check("u", cut, hashlib.md5(cut).hexdigest().encode())
    with pytest.raises(geo.SourceError, match="no MD5"):
        geo.check("u", data, b"<html>not found</html>")


def test_loader_merges_ranges_and_keeps_only_delegated_space():
    geo = _loader()
    text = (
        "2|lab|20261126|5|19700101|20261126|+0000\n"
        "lab|NZ|ipv4|198.51.100.0|64|20260101|allocated|x\n"
        "lab|NZ|ipv4|198.51.100.64|64|20260101|assigned|x\n"
        "lab|NZ|ipv4|198.51.100.200|24|20260101|allocated|x\n"  # not a power-of-two block
        "lab|NZ|ipv4|203.0.113.0|256|20260101|available|x\n"
        "lab|NZ|ipv6|2001:db8::|32|20260101|reserved|x\n"
    )
    sets = geo.parse(text.encode(), {"NZ"})
    merged = geo.merge(sets[("NZ", 4)])
    assert [geo.element(lo, hi, 4) for lo, hi in merged] == ["198.51.100.0/25", "198.51.100.200-198.51.100.223"]
    assert ("NZ", 6) not in sets
    content, counts = geo.country_file(["inet", "cgnat_edge"], "NZ", sets)
    assert counts == {"v4": 2, "v6": 0} and "geo4_nz" in content and "geo6_nz" not in content


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registry's server on 127.0.0.1, over HTTPS with a fresh certificate the
    loader trusts (through SSL_CERT_FILE, as OpenSSL reads it)."""
    cert = self_signed(["127.0.0.1"], tmp_path)
    folder = tmp_path / "www"
    folder.mkdir()
    server = FileServer(("127.0.0.1", 0), folder, cert).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert.cert))
    yield server, folder, f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_reads_over_https_and_refuses_what_is_not(registry, monkeypatch):
    geo = _loader()
    server, folder, base = registry
    (folder / "stats").write_bytes(b"2|lab|x\n")
    assert geo.fetch(f"{base}/stats", time.monotonic() + 10) == b"2|lab|x\n"
    for url in (f"http://127.0.0.1:{server.server_address[1]}/stats", f"file://{folder}/stats"):
        with pytest.raises(geo.SourceError, match=r"not an https:// URL; country lists are fetched over HTTPS only"):
            geo.fetch(url, time.monotonic() + 10)
    monkeypatch.setenv("SSL_CERT_FILE", "/dev/null")  # a certificate nobody vouches for
    with pytest.raises(geo.SourceError, match="CERTIFICATE_VERIFY_FAILED"):
        geo.fetch(f"{base}/stats", time.monotonic() + 10)


def test_fetch_of_a_trickling_server_ends_at_its_deadline(registry):
    """One byte every 0.2 s, status line and headers included: each read succeeds, so
    only a deadline over the whole download can end it."""
    geo = _loader()
    server, folder, base = registry
    (folder / "stats").write_bytes(b"x" * 4096)
    server.trickle = 0.2
    t0 = time.monotonic()
    with pytest.raises(geo.SourceError, match=r"timed out: not whole within its deadline \(1\.5 s\)"):
        geo.fetch(f"{base}/stats", time.monotonic() + 1.5)
    took = time.monotonic() - t0
    assert 1.4 < took < 2.5, took


def test_fetch_refuses_a_body_over_the_size_bound(registry):
    geo = _loader()
    _, folder, base = registry
    with open(folder / "huge", "wb") as f:
        f.truncate(geo.MAX_BYTES + 1)  # sparse: no disk
    (folder / "largest").write_bytes(b"x" * (geo.MAX_BYTES))
    with pytest.raises(geo.SourceError, match="over 64 MiB, far larger than a statistics file"):
        geo.fetch(f"{base}/huge", time.monotonic() + 60)
    assert len(geo.fetch(f"{base}/largest", time.monotonic() + 60)) == geo.MAX_BYTES


def _refresh(registry, tmp_path, deadline: str) -> subprocess.Popen:
    """The script as the timer runs it, against a stalled server (it fails before it
    loads, so it needs no nft)."""
    server, folder, base = registry
    for name in ("a", "b"):
        (folder / name).write_text(rir_file({"AQ": ["203.0.113.0/28"]}))
    server.trickle = 0.2
    cfg = {"sources": [f"{base}/a", f"{base}/b"], "countries": ["AQ"], "table": ["inet", "x"]}
    (tmp_path / "geo.json").write_text(json.dumps(cfg | {"state": str(tmp_path / "state")}))
    env = {
        "CGNAT_EDGE_GEO_CONFIG": str(tmp_path / "geo.json"),
        "CGNAT_EDGE_GEO_DEADLINE": deadline,
        "SSL_CERT_FILE": str(tmp_path / "test.crt"),
        "PATH": "/nonexistent",  # no nft: a load would fail loudly
    }
    script = str(templates.DIRECTORY / "geo-sets.py")
    return subprocess.Popen([sys.executable, script], env=env, stderr=subprocess.PIPE, text=True)


def test_a_stalled_refresh_fails_within_the_run_deadline_and_says_so(registry, tmp_path):
    t0 = time.monotonic()
    run = _refresh(registry, tmp_path, "2")
    _, stderr = run.communicate(timeout=30)
    took = time.monotonic() - t0
    assert run.returncode == 1, stderr
    assert took < 2 + 1.5, took
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["ok"] is False
    assert status["error"].startswith(f"{registry[2]}/a: timed out: not whole within its deadline"), status
    assert "keeping the last good sets" in stderr
    assert not list((tmp_path / "state").glob("*.nft")) and not (tmp_path / "state" / "raw" / "0").exists()


def test_a_refresh_stopped_by_systemd_says_so(registry, tmp_path):
    """The unit's TimeoutStartSec ends the run with SIGTERM: status.json must say why."""
    run = _refresh(registry, tmp_path, "60")
    time.sleep(1.5)
    run.terminate()
    _, stderr = run.communicate(timeout=10)
    assert run.returncode == 1, stderr
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["ok"] is False and status["error"].startswith("stopped by SIGTERM (the unit's TimeoutStartSec"), (
        status
    )


@pytest.mark.netns
def test_loader_keeps_the_last_good_sets_on_a_bad_source(tmp_path):
    """End to end in a scratch network namespace: a good file loads over HTTPS, a bad
    one is refused with the sets and cached files untouched and the status saying why."""
    require_tool("nft", "ip", "nsenter")
    require_root()
    good = rir_file({"AQ": ["203.0.113.0/28", "2001:db8:a0::/48"]})
    src = tmp_path / "src"
    src.mkdir()
    (src / "stats").write_text(good)
    (src / "stats.md5").write_text(hashlib.md5(good.encode()).hexdigest())
    state = tmp_path / "state"
    cfg = {
        "sources": ["https://127.0.0.1/stats"],
        "countries": ["AQ"],
        "table": ["inet", "cgnat_edge"],
        "state": str(state),
    }
    (tmp_path / "geo.json").write_text(json.dumps(cfg))
    (tmp_path / "rules.nft").write_text(
        "table inet cgnat_edge {\n set geo4_aq { type ipv4_addr; flags interval; }\n"
        " set geo6_aq { type ipv6_addr; flags interval; }\n}\n"
    )
    cert = self_signed(["127.0.0.1"], tmp_path)
    env = {
        "CGNAT_EDGE_GEO_CONFIG": str(tmp_path / "geo.json"),
        "SSL_CERT_FILE": str(cert.cert),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    script = str(templates.DIRECTORY / "geo-sets.py")
    with Lab() as lab:
        node = lab.node("geo")
        server = node.call(lambda: FileServer(("127.0.0.1", 443), src, cert)).start()
        try:
            node.run("nft", "-f", str(tmp_path / "rules.nft"))
            first = node.run(sys.executable, script, env=env, check=False)
            assert first.returncode == 0, first.stderr
            (src / "stats").write_text(good + "lab|AQ|ipv4|192.0.2.0|1|20260101|allocated|x\n")
            second = node.run(sys.executable, script, "--force", env=env, check=False)
            sets = node.run("nft", "list", "set", "inet", "cgnat_edge", "geo4_aq").stdout
            sets += node.run("nft", "list", "set", "inet", "cgnat_edge", "geo6_aq").stdout
        finally:
            server.shutdown()
            server.server_close()
    assert second.returncode == 1, second.stderr
    assert "203.0.113.0/28" in sets and "2001:db8:a0::/48" in sets
    assert "192.0.2.0" not in sets
    status = json.loads((state / "status.json").read_text())
    assert status["ok"] is False and "MD5" in status["error"] and status["counts"] == {"AQ": {"v4": 1, "v6": 1}}
    assert "203.0.113.0/28" in (state / "aq.nft").read_text()


@pytest.mark.netns
def test_protected_user_data_passes_cloud_init_schema(tmp_path):
    """The lab stack (country filters, CrowdSec offline, forward-auth) as each provider
    gets it: the CrowdSec setup runs from runcmd, its script travels compressed."""
    require_tool("cloud-init")
    from components.tools import offline

    run = offline.run_program(LAB_STACK, project_file=PROJECT)
    servers = run.by_type("hcloud:index/server:Server") + run.by_type("digitalocean:index/droplet:Droplet")
    assert servers
    for server in servers:
        path = tmp_path / f"{server.name}.yaml"
        text = offline.reveal(server.inputs["userData"])
        path.write_text(text)
        doc = yaml.safe_load(text)
        assert [protection.CROWDSEC_SETUP_PATH, "offline", protection.BOUNCER_SETTINGS_PATH] in doc["runcmd"]
        assert not any(f["path"] in protection.PUSHED_ONLY for f in doc["write_files"])
        res = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
        assert res.returncode == 0 and "Valid cloud-config" in res.stdout, res.stdout + res.stderr


def test_verifier_ignores_the_elements_of_the_bouncers_sets_only():
    spec = importlib.util.spec_from_file_location("verify", templates.DIRECTORY / "verify.py")
    verify = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verify)
    table = (
        "table ip cgnat_edge_crowdsec {{\n\tset crowdsec-blacklists {{\n\t\ttype ipv4_addr\n\t\tflags timeout\n"
        "{}\t}}\n\n\tset other {{\n\t\ttype ipv4_addr\n\t\telements = {{ 192.0.2.1 }}\n\t}}\n}}\n"
    )
    elements = (
        "\t\telements = { 203.0.113.1 timeout 1h expires 59m59s980ms, 203.0.113.2 timeout 1h expires 59m59s9ms,\n"
        "\t\t\t     203.0.113.3 timeout 1h expires 59m59s984ms }\n"
    )
    running = "table inet cgnat_edge {\n\tchain input {\n\t}\n}\n" + table.format(elements)
    kept = verify.without_elements(running, ["ip cgnat_edge_crowdsec crowdsec-blacklists"])
    assert kept == "table inet cgnat_edge {\n\tchain input {\n\t}\n}\n" + table.format("")
    assert verify.without_elements(running, []) == running


KEY = "cl0ud-enr0l-key-4b1d"


def test_the_enrolment_command_hands_the_key_to_no_process_argument(tmp_path):
    """Run as the push runs it (bash, the key on stdin), with python3, cscli and
    systemctl standing in to record their arguments and what reached their stdin: the
    key is read from stdin by the enrolment script alone."""
    for tool in ("python3", "cscli", "systemctl"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/{tool}.argv\ncat > {tmp_path}/{tool}.stdin\n')
        stub.chmod(0o755)
    command = protection.enroll_command("fsn-1")
    done = subprocess.run(
        ["bash", "-c", command], input=KEY, capture_output=True, text=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = {tool: (tmp_path / f"{tool}.argv").read_text() for tool in ("python3", "systemctl")}
    assert argv["python3"].startswith("-c ") and argv["python3"].endswith(" fsn-1 cgnat-edge\n")
    assert argv["systemctl"] == "reload-or-restart crowdsec.service\n"
    assert not (tmp_path / "cscli.argv").exists()  # cscli console enroll would want the key as an argument
    assert (tmp_path / "python3.stdin").read_text() == KEY
    assert KEY not in command and KEY not in "".join(argv.values())
    assert not re.search(r"set -[a-z]*x|xtrace", command)  # no trace could print it either


FAKE_CAPI = r"""
import http.server, json, sys, time
log = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(log, "a") as f:
            f.write(json.dumps([self.path, self.headers.get("Authorization"), body]) + "\n")
        time.sleep(0.5)  # long enough for /proc to be looked at while the enrolment runs
        answer = json.dumps({"code": 200, "token": "jwt-1"}).encode() if self.path.endswith("/login") else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 8080), Handler)
print("ready", flush=True)
server.serve_forever()
"""


@pytest.mark.netns
def test_the_enrolment_key_is_in_no_command_line_while_it_runs(tmp_path):
    """The real command against a fake Central API inside a namespace: while it runs,
    every process's command line in /proc is read again and again; the enrolment
    script's own shows up, the key never does, and the API gets it in the enrol body."""
    require_root()
    with Lab() as lab:
        node = lab.node("edge")
        node.overlay("/etc")
        node.run("mkdir", "-p", "/etc/crowdsec")
        node.write(
            "/etc/crowdsec/online_api_credentials.yaml",
            "url: http://127.0.0.1:8080/\nlogin: machine-1\npassword: secret-pw\n",
        )
        log = tmp_path / "capi.log"
        out = tmp_path / "capi.out"
        node.spawn(sys.executable, "-c", FAKE_CAPI, str(log), log=out)
        wait_for(lambda: out.exists() and "ready" in out.read_text(), timeout=15, message="fake Central API")
        for tool, answer in (("cscli", '{"scenarios": [{"name": "crowdsecurity/ssh-bf"}]}'), ("systemctl", "")):
            stub = tmp_path / tool
            stub.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {tmp_path}/{tool}.argv\nprintf '%s' '{answer}'\n")
            stub.chmod(0o755)
        seen = {"script": 0, "key": []}
        stop = []

        def watch() -> None:
            while not stop:
                for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                    try:
                        text = cmdline.read_bytes().decode(errors="replace")
                    except OSError:
                        continue
                    if KEY in text:
                        seen["key"].append(text[:200])
                    if "watchers/enroll" in text:
                        seen["script"] += 1

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            done = node.run(
                "bash", "-c", protection.enroll_command("fsn-1"), input=KEY, check=False,
                env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
            )  # fmt: skip
        finally:
            stop.append(True)
            watcher.join()
        assert done.returncode == 0, done.stdout + done.stderr
        assert seen["script"] > 0  # the watcher saw the enrolment's command line ...
        assert seen["key"] == []  # ... and never the key in any
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert [c[0] for c in calls] == ["/v3/watchers/login", "/v3/watchers/enroll"]
        assert calls[0][2] == {
            "machine_id": "machine-1",
            "password": "secret-pw",
            "scenarios": ["crowdsecurity/ssh-bf"],
        }
        assert calls[1][1:] == [
            "Bearer jwt-1",
            {"attachment_key": KEY, "name": "fsn-1", "tags": ["cgnat-edge"], "overwrite": True},
        ]
        assert KEY not in (tmp_path / "cscli.argv").read_text() + (tmp_path / "systemctl.argv").read_text()


def _enroller():
    spec = importlib.util.spec_from_file_location("crowdsec_enroll", templates.DIRECTORY / "crowdsec-enroll.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_enrolment_script_sends_the_key_only_in_the_enrol_request(tmp_path, monkeypatch, capsys):
    """The two Central API calls cscli makes, with the registration's credentials and
    the installed scenarios; the key goes in the body of the second and nowhere else."""
    enroller = _enroller()
    creds = tmp_path / "online_api_credentials.yaml"
    creds.write_text("url: https://api.example.net/\nlogin: machine-1\npassword: 'pw:with colon'\n")
    monkeypatch.setattr(enroller, "CREDENTIALS", str(creds))
    requests, commands = [], []

    class Answer:
        def __init__(self, body: bytes):
            self.body = body

        def read(self) -> bytes:
            return self.body

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    def urlopen(request, timeout):
        requests.append((request.full_url, dict(request.header_items()), json.loads(request.data)))
        return Answer(b'{"code": 200, "token": "jwt-1"}' if request.full_url.endswith("/login") else b"")

    def run(argv, **kwargs):
        commands.append(argv)
        listed = json.dumps({"scenarios": [{"name": "crowdsecurity/ssh-bf"}, {"name": "crowdsecurity/http-probing"}]})
        return subprocess.CompletedProcess(argv, 0, listed if "scenarios" in argv else "", "")

    monkeypatch.setattr(enroller.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(enroller.subprocess, "run", run)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(KEY + "\n"))
    assert enroller.main(["fsn-1", "cgnat-edge"]) == 0
    (login_url, login_headers, login), (enrol_url, enrol_headers, enrol) = requests
    assert login_url == "https://api.example.net/v3/watchers/login"
    assert login == {
        "machine_id": "machine-1",
        "password": "pw:with colon",
        "scenarios": ["crowdsecurity/http-probing", "crowdsecurity/ssh-bf"],
    }
    assert enrol_url == "https://api.example.net/v3/watchers/enroll"
    assert enrol_headers["Authorization"] == "Bearer jwt-1"
    assert enrol == {"attachment_key": KEY, "name": "fsn-1", "tags": ["cgnat-edge"], "overwrite": True}
    assert KEY not in json.dumps([login_url, login_headers, login, enrol_url, enrol_headers])
    assert commands == [
        ["cscli", "scenarios", "list", "-o", "json"],
        ["cscli", "console", "enable", "manual", "tainted"],
    ]
    assert KEY not in capsys.readouterr().out

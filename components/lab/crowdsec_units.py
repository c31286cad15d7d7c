"""CrowdSec's two units as the lab's stand-in for systemd runs them in an edge: the
machine's Debian packages, with the packaged configuration the edge's setup left, but
for what a namespace needs (logs in the edge's lab folder, no daemonizing, and only
Traefik's access log read: Debian's acquisition would read the machine's logs)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from components.lab.netns import Node, wait_for

CONFIG = "/etc/crowdsec/config.yaml"
BOUNCER_CONFIG = "/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml"
READY_S = 30


def _answers(node: Node) -> bool:
    return node.run("cscli", "decisions", "list", check=False).returncode == 0


def agent(node: Node, work: Path) -> subprocess.Popen:
    """The agent with its Local API, once it answers (systemd's Type=notify waits as long)."""
    work.mkdir(exist_ok=True)
    node.sh(f"sed -i -e 's/daemonize: true/daemonize: false/' -e 's#log_dir: /var/log/#log_dir: {work}/#' {CONFIG}")
    node.write("/etc/crowdsec/acquis.yaml", "# the lab: see acquis.d/cgnat-edge.yaml\n", 0o644)
    proc = node.spawn("crowdsec", "-c", CONFIG, log=work / "crowdsec.out")
    wait_for(functools.partial(_answers, node), READY_S, message=f"CrowdSec's Local API (see {work})")
    return proc


def bouncer_config(node: Node, work: Path, local: str) -> Path:
    """The packaged bouncer configuration with its placeholders filled as Debian's
    postinst does, logging to ``work``; ``local`` becomes its ``.local`` file."""
    work.mkdir(exist_ok=True)
    key = node.sh(f"awk '/api_key/ {{print $2}}' {BOUNCER_CONFIG}.local").stdout.split()
    base = node.run("cat", BOUNCER_CONFIG).stdout
    config = (
        base.replace("${BACKEND}", "nftables")
        .replace("${API_KEY}", key[0] if key else "")
        .replace("log_dir: /var/log/", f"log_dir: {work}/")
        .replace("update_frequency: 10s", "update_frequency: 1s")
    )
    path = work / "bouncer.yaml"
    path.write_text(config)
    (work / "bouncer.yaml.local").write_text(local)
    return path


def bouncer(node: Node, work: Path) -> subprocess.Popen:
    """The firewall bouncer with the ``.local`` file the edge's setup wrote (its API key
    and the edge's set-only settings)."""
    config = bouncer_config(node, work, node.run("cat", f"{BOUNCER_CONFIG}.local").stdout)
    return node.spawn("crowdsec-firewall-bouncer", "-c", str(config), log=work / "bouncer.out")

#!/bin/bash
# cgnat-edge: CrowdSec on a running edge as the stack says (cgnat-edge:crowdsec); every push
# runs this after loading the ruleset, whose sets the bouncer fills.
#   cgnat-edge-crowdsec-reconcile
# on: an edge that has never run it (CrowdSec turned on after the edge was made) gets the
# same setup its first boot would have run (cgnat-edge-crowdsec: Debian's packages, the
# Traefik parser, the bouncer's set-only settings); then both daemons must run and the
# bouncer must have pulled its decisions from the Local API since it started, or the push
# fails and rolls back.  Console enrolment is its own step (crowdsecEnrollKey).
# off: both daemons stopped and disabled; the packages stay.
set -euo pipefail
# shellcheck source=contract.sh
source /usr/local/lib/cgnat-edge/contract.sh

log() { echo "cgnat-edge crowdsec: $*"; }

mode=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("crowdsec", "off"))' "$desired")

if [[ $mode == off ]]; then
  if systemctl is-enabled -q "$bouncer_unit" 2>/dev/null || systemctl is-active -q "$crowdsec_unit" 2>/dev/null; then
    systemctl disable --now -q "$bouncer_unit" "$crowdsec_unit"
    log "stopped and disabled (crowdsec is off)"
  fi
  exit 0
fi

started=$(date -u +%s)
if ! systemctl is-enabled -q "$bouncer_unit" 2>/dev/null; then
  log "installing and starting CrowdSec ($mode), as a first boot would"
  "$crowdsec_setup" "$mode" "$bouncer_settings" >&2
else
  # Set up before: what is not running is started again (a push is the repair).
  restarted=false
  for unit in "$crowdsec_unit" "$bouncer_unit"; do
    systemctl is-active -q "$unit" && continue
    systemctl restart "$unit" || true
    restarted=true
  done
  $restarted || exit 0
fi

# Running, and the bouncer connected: a bouncer whose last pull is after the start.
python3 - "$started" "$crowdsec_unit" "$bouncer_unit" <<'EOF'
import datetime, json, subprocess, sys, time

started, units = int(sys.argv[1]), sys.argv[2:]
deadline = time.monotonic() + 60
while True:
    down = [u for u in units if subprocess.run(["systemctl", "is-active", "-q", u]).returncode != 0]
    pulls = []
    done = subprocess.run(["cscli", "bouncers", "list", "-o", "json"], capture_output=True, text=True)
    if done.returncode == 0:
        for b in json.loads(done.stdout or "[]") or []:
            stamp = (b.get("last_pull") or "")[:19]
            if stamp:
                pulls.append(datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.UTC).timestamp())
    pulled = any(p >= started - 1 for p in pulls)
    if not down and pulled:
        print("cgnat-edge crowdsec: running, and its bouncer pulls the decisions")
        sys.exit(0)
    if time.monotonic() > deadline:
        why = f"{', '.join(down)} not running" if down else "the bouncer has not pulled any decision since it started"
        print(f"cgnat-edge crowdsec: CrowdSec should run and does not: {why}", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
EOF

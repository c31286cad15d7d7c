#!/bin/bash
# cgnat-edge: install CrowdSec and its nftables bouncer from Debian (cgnat-edge:crowdsec).
#   cgnat-edge-crowdsec offline|online SETTINGS
# offline: no registration with CrowdSec's Central API; bans come from this edge's own
# logs and from `cscli decisions add`.  online: registers, receives the community
# blocklist, and can be enrolled in the console (crowdsecEnrollKey, crowdsec-enroll.py).
set -euo pipefail
mode=${1:?offline or online}
settings=${2:?the bouncer settings file}
capi=/etc/crowdsec/online_api_credentials.yaml
if [[ $mode == offline && ! -s $capi ]]; then
  # Debian's postinst registers with the Central API unless this file is non-empty.
  install -d -m 0755 /etc/crowdsec
  echo "# cgnat-edge: offline, no Central API registration" >"$capi"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q crowdsec crowdsec-firewall-bouncer
# Traefik's access log (http routers); sshd comes through Debian's journald acquisition.
# Enabled as Debian's postinst enables items, by links into its offline hub: `cscli
# collections install` asks the online hub first, which an offline edge cannot reach.
hub=/var/lib/crowdsec/hub
for item in parsers/s01-parse/crowdsecurity/traefik-logs.yaml collections/crowdsecurity/traefik.yaml; do
  link=/etc/crowdsec/$(dirname "$(dirname "$item")")/$(basename "$item")
  mkdir -p "$(dirname "$link")"
  [[ -e $link ]] || ln -s "$hub/$item" "$link"
done
# Enabled again after a push turned CrowdSec off (Debian's postinst enables it once).
systemctl enable crowdsec.service
systemctl restart crowdsec.service
# The bouncer fills the sets the edge's ruleset declares (set-only) instead of making
# its own input chains, which forward services' packets never pass.  Its .local file
# holds the API key Debian's postinst registered; the settings go in between markers.
overrides=/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml.local
sed -i '/^# cgnat-edge begin$/,/^# cgnat-edge end$/d' "$overrides"
{ echo "# cgnat-edge begin"; cat "$settings"; echo "# cgnat-edge end"; } >>"$overrides"
systemctl enable crowdsec-firewall-bouncer.service
systemctl restart crowdsec-firewall-bouncer.service

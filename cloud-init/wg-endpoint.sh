#!/bin/bash
# Remember where home's tunnel last came from, and dial it back after a reboot.
#
# Home sits behind CGNAT and cannot be dialled in general, but its keepalives hold its
# last mapping open towards this edge.  A rebooted edge has forgotten that address and
# drops home's keepalives (their session died with it); home only starts a new
# handshake when its session turns two minutes old.  Restoring the saved endpoint and
# switching on a keepalive makes the edge send the first packet itself, through the
# mapping home keeps open, and the tunnel is back within a keepalive interval.
#
#   cgnat-edge-wg-endpoint save IFACE              (timer, and before wg-quick down)
#   cgnat-edge-wg-endpoint restore IFACE SECONDS   (wg-quick PostUp)
set -euo pipefail

action=${1:-} iface=${2:-}
state=${CGNAT_EDGE_STATE:-/var/lib/cgnat-edge}/$iface.endpoints

case $action in
  save)
    # shellcheck disable=SC2174 # only the state directory itself is new; its parent exists
    mkdir -p -m 0700 "$(dirname "$state")"
    tmp=$(mktemp "$state.XXXXXX")
    wg show "$iface" endpoints | awk '$2 != "(none)"' >"$tmp"
    # Never replace a known endpoint with nothing (e.g. saved while home was away).
    if [[ -s $tmp ]]; then mv -f "$tmp" "$state"; else rm -f "$tmp"; fi
    ;;
  restore)
    keepalive=${3:?keepalive seconds}
    [[ -s $state ]] || exit 0
    peers=$(wg show "$iface" peers)
    while read -r peer endpoint; do
      # `wg set` would add an unknown peer: restore only peers the config still has.
      grep -qxF -- "$peer" <<<"$peers" || continue
      wg set "$iface" peer "$peer" endpoint "$endpoint" persistent-keepalive "$keepalive"
    done <"$state"
    ;;
  *)
    echo "usage: $0 save IFACE | restore IFACE KEEPALIVE_SECONDS" >&2
    exit 2
    ;;
esac

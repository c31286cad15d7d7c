#!/bin/bash
# Apply a cgnat-edge config bundle to a running edge, without rebuilding it.
# stdin: base64 of a tar.gz holding MANIFEST (mode<TAB>owner:group<TAB>path per line)
# and files/<path>.  Everything is checked before anything is replaced; files are
# swapped in by rename, so a reader sees the old or the new file, never half of one.
# Only what changed is reloaded: nftables and WireGuard peers in place (no tunnel
# restart), Traefik only when its static configuration or unit changed (its dynamic
# file is watched by Traefik itself).  Nothing secret is printed.
set -euo pipefail

root=${CGNAT_EDGE_ROOT:-}     # empty on an edge; a directory when tried elsewhere
nft_conf=/etc/nftables.conf
wg_interface=wg0
wg_conf=/etc/wireguard/$wg_interface.conf
traefik_restart_on=(/etc/traefik/traefik.yaml /etc/systemd/system/traefik.service)
sshd_dropin=/etc/ssh/sshd_config.d/50-cgnat-edge.conf

log() { echo "cgnat-edge push: $*"; }
die() { echo "cgnat-edge push: $*" >&2; exit 1; }

umask 077
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
base64 -d | tar -xzf - -C "$stage" --no-same-owner --no-same-permissions ||
  die "stdin is not a bundle (base64 of a tar.gz)"
[[ -f $stage/MANIFEST ]] || die "the bundle has no MANIFEST"

declare -a modes owners paths
while IFS=$'\t' read -r mode owner path; do
  [[ $mode =~ ^0[0-7]{3}$ ]] || die "bad mode '$mode' for $path"
  [[ $owner =~ ^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$ ]] || die "bad owner '$owner' for $path"
  [[ $path == /* && $path != *..* ]] || die "refusing path '$path'"
  [[ -f $stage/files$path ]] || die "$path is in MANIFEST but not in the bundle"
  modes+=("$mode"); owners+=("$owner"); paths+=("$path")
done <"$stage/MANIFEST"

# Check what can be checked before replacing anything.
staged() { echo "$stage/files$1"; }
for path in "${paths[@]}"; do
  case $path in
    "$nft_conf") nft -c -f "$(staged "$path")" || die "the new nftables ruleset does not load; nothing was changed" ;;
    "$wg_conf") wg-quick strip "$(staged "$path")" >/dev/null || die "the new WireGuard config does not parse; nothing was changed" ;;
  esac
done

changed=()
for i in "${!paths[@]}"; do
  path=${paths[$i]} mode=${modes[$i]} owner=${owners[$i]}
  dst=$root$path
  if [[ -f $dst ]] && cmp -s "$(staged "$path")" "$dst" &&
    [[ $(stat -c '%a %U:%G' "$dst") == "${mode#0} $owner" ]]; then
    continue
  fi
  dir=$(dirname "$dst")
  [[ -d $dir ]] || install -d -m 0755 "$dir"
  install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$(staged "$path")" "$dst.cgnat-edge-new"
  mv -f "$dst.cgnat-edge-new" "$dst"
  changed+=("$path")
  log "updated $path"
done
((${#changed[@]})) || log "all ${#paths[@]} files already up to date"

was_changed() {
  local p
  for p in "${changed[@]}"; do [[ $p == "$1" ]] && return 0; done
  return 1
}

if was_changed "$nft_conf" || ! nft list table inet cgnat_edge >/dev/null 2>&1; then
  nft -f "$root$nft_conf"
  log "nftables ruleset loaded"
fi

if ip link show dev "$wg_interface" >/dev/null 2>&1; then
  wg syncconf "$wg_interface" <(wg-quick strip "$root$wg_conf")
  log "WireGuard peers of $wg_interface synced"
else
  systemctl start "wg-quick@$wg_interface"
  log "started wg-quick@$wg_interface"
fi

units_changed=false
for path in "${changed[@]}"; do
  [[ $path == /etc/systemd/system/* ]] && units_changed=true
done
if $units_changed; then
  systemctl daemon-reload
fi

restart=false
for path in "${traefik_restart_on[@]}"; do
  was_changed "$path" && restart=true
done
if $restart; then
  systemctl restart traefik.service
  log "Traefik restarted (static configuration changed)"
fi

if was_changed "$sshd_dropin"; then
  sshd -t && systemctl reload ssh.service
  log "sshd reloaded"
fi

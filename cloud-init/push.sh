#!/bin/bash
# Apply a cgnat-edge config bundle to a running edge, without rebuilding it.
# stdin: base64 of a tar.gz holding MANIFEST (mode<TAB>owner:group<TAB>path per line)
# and files/<path>.
#
# 1. Check everything before replacing anything: the ruleset (nft -c), the tunnel
#    config, the host key, sshd with the NEW drop-in (sshd -t), and Traefik with the new
#    static and dynamic files in a scratch network namespace (every router must load).
# 2. Keep what is on disk now under /var/lib/cgnat-edge/previous, then swap the files
#    in by rename (a reader sees the old or the new file, never half of one); files the
#    previous push installed and this bundle lacks are removed.
# 3. Reconcile each part with the least disruption: nftables reloaded; wg0's peers
#    synced (wg syncconf) and its addresses, MTU and routes changed in place, the
#    interface and its tunnels stay; sshd reloaded; Traefik handed over to its other
#    slot only when its static config or unit changed (its dynamic file is watched).
# 4. Verify that the edge RUNS the new state (cgnat-edge-verify); on any failure put
#    the previous files back, reconcile again, and exit 1 saying what failed.
# Nothing secret is printed.
set -euo pipefail

state=/var/lib/cgnat-edge
nft_conf=/etc/nftables.conf
wg_if=wg0
wg_conf=/etc/wireguard/$wg_if.conf
traefik_static=/etc/traefik/traefik.yaml
traefik_dynamic_dir=/etc/traefik/dynamic
traefik_unit=/etc/systemd/system/traefik@.service
traefik_bin=/usr/local/bin/traefik
traefik_api=http://127.0.0.1:8082/api
legacy_traefik=traefik.service # one unit, before the two slots
sshd_dropin=/etc/ssh/sshd_config.d/50-cgnat-edge.conf
host_key=/etc/ssh/ssh_host_ed25519_key
desired=/etc/cgnat-edge/desired.json
verify=/usr/local/sbin/cgnat-edge-verify
timer=cgnat-edge-wg-endpoint.timer
pdns_zone=/etc/powerdns/cgnat-edge/zone.db
health_agent=/usr/local/sbin/cgnat-edge-health
health_conf=/etc/cgnat-edge/health.json
health_unit=cgnat-edge-health.service
forward_sysctl=/etc/sysctl.d/60-cgnat-edge-forward.conf # only with forward services

log() { echo "cgnat-edge push: $*"; }
warn() { echo "cgnat-edge push: $*" >&2; }
die() {
  warn "$*"
  exit 1
}

umask 077
stage=$(mktemp -d)
cleanup() {
  release_connections
  rm -rf "$stage"
}
trap cleanup EXIT

# -- the bundle ----------------------------------------------------------------

declare -a modes owners paths
read_bundle() {
  base64 -d | tar -xzf - -C "$stage" --no-same-owner --no-same-permissions ||
    die "stdin is not a bundle (base64 of a tar.gz)"
  [[ -f $stage/MANIFEST ]] || die "the bundle has no MANIFEST"
  local mode owner path
  while IFS=$'\t' read -r mode owner path; do
    [[ $mode =~ ^0[0-7]{3}$ ]] || die "bad mode '$mode' for $path"
    [[ $owner =~ ^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$ ]] || die "bad owner '$owner' for $path"
    [[ $path == /* && $path != *..* ]] || die "refusing path '$path'"
    [[ -f $stage/files$path ]] || die "$path is in MANIFEST but not in the bundle"
    modes+=("$mode")
    owners+=("$owner")
    paths+=("$path")
  done <"$stage/MANIFEST"
}

staged() { echo "$stage/files$1"; }
in_bundle() {
  local p
  for p in "${paths[@]}"; do [[ $p == "$1" ]] && return 0; done
  return 1
}

# -- 1. checks before anything changes ------------------------------------------

check_sshd() {
  # The whole effective sshd config with the NEW drop-in in place of the current one.
  local dir=$stage/sshd_config.d f
  mkdir "$dir"
  for f in /etc/ssh/sshd_config.d/*.conf; do
    [[ -f $f && $f != "$sshd_dropin" ]] && cp "$f" "$dir/"
  done
  cp "$(staged "$sshd_dropin")" "$dir/$(basename "$sshd_dropin")"
  {
    echo "Include $dir/*.conf"
    grep -v '^[[:space:]]*Include[[:space:]]\+/etc/ssh/sshd_config\.d/' /etc/ssh/sshd_config
  } >"$stage/sshd_config"
  sshd -t -f "$stage/sshd_config" 2>"$stage/sshd-t.err" ||
    die "the new sshd drop-in fails sshd -t; nothing was changed: $(head -c 500 "$stage/sshd-t.err")"
}

check_traefik() {
  # A Traefik of its own in a scratch network namespace, on the staged files (only the
  # on-disk locations point into the stage): every declared router must load.
  local dir=$stage/files/etc/traefik
  mkdir -p "$stage/traefik-state"
  sed -e "s#directory: $traefik_dynamic_dir\$#directory: $dir/dynamic#" \
    -e "s#storage: /var/lib/traefik/#storage: $stage/traefik-state/#" \
    "$dir/traefik.yaml" >"$stage/traefik-check.yaml"
  if ! CGNAT_EDGE_DESIRED=$(staged "$desired") unshare --net bash -c '
    ip link set lo up
    "$1" --configFile="$2" >"$3" 2>&1 &
    pid=$!
    python3 "$4" traefik 20
    rc=$?
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    exit $rc' _ "$traefik_bin" "$stage/traefik-check.yaml" "$stage/traefik-check.log" "$(staged "$verify")" \
    2>"$stage/traefik-check.err"; then
    die "the new Traefik configuration does not load; nothing was changed: $(head -c 800 "$stage/traefik-check.err")"
  fi
}

validate() {
  local path
  for path in "${paths[@]}"; do
    case $path in
      "$nft_conf") nft -c -f "$(staged "$path")" || die "the new nftables ruleset does not load; nothing was changed" ;;
      "$wg_conf") wg-quick strip "$(staged "$path")" >/dev/null || die "the new WireGuard config does not parse; nothing was changed" ;;
      "$host_key")
        [[ $(ssh-keygen -y -f "$(staged "$path")" | cut -d' ' -f1-2) == "$(cut -d' ' -f1-2 "$(staged "$path.pub")")" ]] ||
          die "the new host key does not match its .pub; nothing was changed"
        ;;
      /etc/ssh/cgnat-edge-authorized-keys/*)
        ssh-keygen -l -f "$(staged "$path")" >/dev/null 2>&1 || die "$path holds a line that is not a public key; nothing was changed"
        ;;
    esac
  done
  in_bundle "$sshd_dropin" && check_sshd
  if { in_bundle "$traefik_static" && ! same "$traefik_static"; } ||
    { in_bundle "$traefik_dynamic_dir/cgnat-edge.yaml" && ! same "$traefik_dynamic_dir/cgnat-edge.yaml"; }; then
    check_traefik
    log "checked: the new Traefik configuration loads every router"
  fi
  log "checked: ruleset, tunnel, host key, sshd"
}

# -- 2. the swap -------------------------------------------------------------------

same() {
  # $1 on disk already is the staged file, with the declared mode and owner.
  local i
  for i in "${!paths[@]}"; do
    [[ ${paths[$i]} == "$1" ]] || continue
    [[ -f $1 ]] && cmp -s "$(staged "$1")" "$1" &&
      [[ $(stat -c '%a %U:%G' "$1") == "${modes[$i]#0} ${owners[$i]}" ]]
    return
  done
  return 1
}

previous_paths() {
  if [[ -f $state/MANIFEST ]]; then
    cut -f3 "$state/MANIFEST"
  fi
}

snapshot() {
  # What is on disk now, for every path this push may touch: the rollback target.
  local dir=$state/previous.new p
  rm -rf "$dir"
  mkdir -p "$dir/files"
  : >"$dir/MANIFEST"
  : >"$dir/ABSENT"
  for p in $( (printf '%s\n' "${paths[@]}" && previous_paths) | sort -u); do
    if [[ -f $p ]]; then
      mkdir -p "$dir/files$(dirname "$p")"
      cp -p "$p" "$dir/files$p"
      printf '0%s\t%s\t%s\n' "$(stat -c %a "$p")" "$(stat -c %U:%G "$p")" "$p" >>"$dir/MANIFEST"
    else
      echo "$p" >>"$dir/ABSENT"
    fi
  done
}

changed=()
was_changed() {
  local p
  for p in "${changed[@]}"; do [[ $p == "$1" || $p == $1 ]] && return 0; done
  return 1
}

install_file() { # src mode owner dst
  local dir
  dir=$(dirname "$4")
  [[ -d $dir ]] || install -d -m 0755 "$dir"
  install -m "$2" -o "${3%%:*}" -g "${3##*:}" "$1" "$4.cgnat-edge-new"
  mv -f "$4.cgnat-edge-new" "$4"
}

swap_in() {
  local i p
  for i in "${!paths[@]}"; do
    p=${paths[$i]}
    same "$p" && continue
    install_file "$(staged "$p")" "${modes[$i]}" "${owners[$i]}" "$p"
    changed+=("$p")
    log "updated $p"
  done
  for p in $(previous_paths); do
    in_bundle "$p" && continue
    rm -f "$p"
    changed+=("$p")
    log "removed $p (no longer in the bundle)"
  done
  ((${#changed[@]})) || log "all ${#paths[@]} files already up to date"
}

# -- 3. reconcile the running edge with the files ------------------------------------

conf_list() { # key file: the comma-separated values of every "key = ..." line
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$2" | tr ',' '\n' | tr -d ' \t' | sed '/^$/d'
}
family() { [[ $1 == *:* ]] && echo -6 || echo -4; }

reconcile_wireguard() {
  if ! ip link show dev "$wg_if" >/dev/null 2>&1; then
    systemctl start "wg-quick@$wg_if"
    log "started wg-quick@$wg_if"
    return
  fi
  # Keys, listen port, peers and allowed IPs: in place, sessions kept.
  wg syncconf "$wg_if" <(wg-quick strip "$wg_conf")
  local mtu addr have route fam
  mtu=$(conf_list MTU "$wg_conf" | head -1)
  if [[ -n $mtu && $(cat "/sys/class/net/$wg_if/mtu") != "$mtu" ]]; then
    ip link set dev "$wg_if" mtu "$mtu"
    log "$wg_if MTU set to $mtu"
  fi
  # New addresses first, then the old ones go: the interface always has one.
  mapfile -t want < <(conf_list Address "$wg_conf")
  have=$(ip -o addr show dev "$wg_if" scope global | awk '{print $4}')
  for addr in "${want[@]}"; do
    grep -qxF -- "$addr" <<<"$have" || {
      ip addr add "$addr" dev "$wg_if"
      log "$wg_if address $addr added"
    }
  done
  for have in $have; do
    printf '%s\n' "${want[@]}" | grep -qxF -- "$have" || {
      ip addr del "$have" dev "$wg_if"
      log "$wg_if address $have removed"
    }
  done
  # Routes: what wg-quick would add for the allowed IPs, and nothing stale.
  mapfile -t allowed < <(wg show "$wg_if" allowed-ips | cut -f2- | tr ' \t' '\n\n' | grep /)
  for fam in -4 -6; do
    for route in $(ip "$fam" route show dev "$wg_if" | grep -v 'proto kernel' | awk '{print $1}'); do
      [[ $route == */* ]] || route=$route/$([[ $fam == -4 ]] && echo 32 || echo 128)
      printf '%s\n' "${allowed[@]}" | grep -qxF -- "$route" || {
        ip "$fam" route del "$route" dev "$wg_if"
        log "route to $route removed from $wg_if"
      }
    done
  done
  for route in "${allowed[@]}"; do
    fam=$(family "$route")
    [[ -n $(ip "$fam" route show dev "$wg_if" match "$route" 2>/dev/null) ]] || {
      ip "$fam" route add "$route" dev "$wg_if"
      log "route to $route added on $wg_if"
    }
  done
  log "WireGuard peers of $wg_if synced"
}

hold=cgnat_edge_handover
hold_new_connections() {
  # New TCP connections wait (their SYN is dropped, the client resends it after 1 s)
  # while one Traefik closes its listeners and the next loads its routers: without
  # this, a connection reaching the new process before its routers would hang.
  nft -f - <<EOF
table inet $hold {
  chain input {
    type filter hook input priority filter - 10; policy accept;
    iifname != "lo" tcp dport != 22 tcp flags & (syn | ack) == syn drop
  }
}
EOF
}
release_connections() { nft delete table inet "$hold" 2>/dev/null || true; }

enabled_traefik() {
  local unit
  for unit in traefik@a.service traefik@b.service "$legacy_traefik"; do
    systemctl is-enabled --quiet "$unit" 2>/dev/null && { echo "$unit"; return; }
  done
  return 0
}

wait_sockets_closed() { # pid ss-flags: until that process has no such socket
  local i
  for i in $(seq 100); do
    ss "-H$2p" 2>/dev/null | grep -q "pid=$1," || return 0
    sleep 0.05
  done
  warn "Traefik $1 still has sockets (ss -$2) after 5 s"
}

start_slot() { # unit: started, and serving every declared router and service
  systemctl start "$1" && python3 "$verify" traefik 15
}

traefik_handover() {
  local old new pid
  old=$(enabled_traefik)
  [[ $old == traefik@a.service ]] && new=traefik@b.service || new=traefik@a.service
  # That slot may still drain connections from the handover before the last one.
  if systemctl is-active --quiet "$new"; then
    systemctl kill --signal=SIGKILL "$new" || true
    systemctl stop "$new" || true
  fi
  hold_new_connections
  if [[ -n $old ]] && systemctl is-active --quiet "$old"; then
    pid=$(systemctl show -p MainPID --value "$old")
    # SIGTERM: Traefik closes its listeners at once and keeps serving its established
    # connections up to the entrypoints' graceTimeOut, then exits.
    systemctl kill --signal=SIGTERM "$old"
    [[ -n $pid && $pid != 0 ]] && wait_sockets_closed "$pid" ltn
  fi
  if ! start_slot "$new"; then
    systemctl stop "$new" || true
    if [[ $old != traefik@?.service ]]; then
      release_connections
      warn "Traefik $new does not serve the configuration"
      return 1
    fi
    # The slot itself may be at fault: the old one, restarted in place (its drained
    # connections are cut), with the same files.
    warn "Traefik $new does not serve the configuration; trying $old in its place"
    systemctl kill --signal=SIGKILL "$old" || true
    systemctl stop "$old" || true
    if ! start_slot "$old"; then
      release_connections
      warn "Traefik $old does not serve the configuration either"
      return 1
    fi
    new=$old
  fi
  release_connections
  # The old UDP sockets share their ports with the new ones until they close (1 s).
  [[ -n ${pid:-} && $pid != 0 && $old != "$new" ]] && wait_sockets_closed "$pid" lun
  systemctl enable --quiet "$new"
  [[ -n $old && $old != "$new" ]] && systemctl disable --quiet "$old"
  if [[ $old == "$legacy_traefik" ]]; then
    rm -f "/etc/systemd/system/$legacy_traefik"
    systemctl daemon-reload
  fi
  log "Traefik handed over from ${old:-nothing} to $new (static configuration changed)"
}

# dnsMode edges: PowerDNS serves the zone the bundle brings and the health agent
# checks the paths; a bundle without them (dnsMode records) stops both.
reconcile_edge_dns() {
  if [[ -f $pdns_zone ]]; then
    if was_changed "/etc/powerdns/*" || ! systemctl is-active --quiet pdns.service; then
      systemctl enable --quiet pdns.service
      systemctl restart pdns.service
      log "PowerDNS restarted with the edge zone"
    fi
    if was_changed "$health_agent" || was_changed "$health_conf" || was_changed "/etc/systemd/system/$health_unit" ||
      ! systemctl is-active --quiet "$health_unit"; then
      systemctl enable --quiet "$health_unit"
      systemctl restart "$health_unit"
      log "health agent restarted"
    fi
  elif was_changed "$pdns_zone"; then
    systemctl disable --now --quiet pdns.service "$health_unit" 2>/dev/null || true
    log "edge DNS stopped (dnsMode is no longer edges)"
  fi
}

reconcile() {
  local p units=false
  if was_changed "$sshd_dropin" || was_changed "$host_key" || was_changed "/etc/ssh/cgnat-edge-authorized-keys/*"; then
    rm -f /etc/ssh/ssh_host_{rsa,ecdsa,dsa}_key{,.pub}
    sshd -t
    systemctl reload ssh.service
    log "sshd reloaded"
  fi
  if was_changed "$nft_conf" || ! nft list table inet cgnat_edge >/dev/null 2>&1; then
    nft -f "$nft_conf"
    log "nftables ruleset loaded"
    # The reload (flush ruleset) emptied CrowdSec's ban sets; on start the bouncer fills
    # them with every current ban.  restart, not try-restart: a bouncer that had failed
    # comes back too.
    if systemctl is-enabled -q crowdsec-firewall-bouncer.service 2>/dev/null; then
      systemctl restart crowdsec-firewall-bouncer.service || log "crowdsec-firewall-bouncer did not restart: bans are not enforced"
    fi
  fi
  if [[ -f $forward_sysctl ]] && [[ $(sysctl -n net.ipv4.ip_forward) != 1 ]]; then
    sysctl -q -p "$forward_sysctl"
    log "IPv4 forwarding on (forward services)"
  fi
  for p in "${changed[@]}"; do
    [[ $p == /etc/systemd/system/* ]] && units=true
  done
  if $units; then
    systemctl daemon-reload
    systemctl enable --now --quiet "$timer"
    if [[ -f /etc/systemd/system/cgnat-edge-geo-sets.timer ]]; then
      systemctl enable --now --quiet cgnat-edge-geo-sets.timer
    fi
  fi
  reconcile_wireguard
  reconcile_edge_dns
  local running
  running=$(enabled_traefik)
  if was_changed "$traefik_static" || was_changed "$traefik_unit" || [[ -z $running || $running == "$legacy_traefik" ]] ||
    ! systemctl is-active --quiet "$running"; then
    traefik_handover
  fi
}

# -- 4. verify, or roll back ---------------------------------------------------------

rollback() {
  local dir=$state/previous.new mode owner p
  warn "rolling back to the files this edge had before the push"
  while IFS=$'\t' read -r mode owner p; do
    install_file "$dir/files$p" "$mode" "$owner" "$p"
  done <"$dir/MANIFEST"
  while read -r p; do rm -f "$p"; done <"$dir/ABSENT"
  # Reconcile everything the failed push touched, with the old files.
  (reconcile) >&2 &
  wait $! || warn "the rollback did not apply cleanly either; see the lines above"
  python3 "$verify" >&2 || warn "after the rollback the edge still differs from its files"
}

main() {
  read_bundle
  validate
  mkdir -p -m 0700 "$state"
  snapshot
  swap_in
  # A separate process, so that `set -e` holds inside (it does not in a `||` list).
  (reconcile) &
  if ! wait $!; then
    rollback
    die "FAILED: the edge could not apply the new configuration; it runs the previous one again"
  fi
  if ! python3 "$verify"; then
    rollback
    die "FAILED: the edge does not run the new configuration (see DIFFERS above); it runs the previous one again"
  fi
  cp "$stage/MANIFEST" "$state/MANIFEST"
  rm -rf "$state/previous"
  mv "$state/previous.new" "$state/previous"
  log "done: the edge runs the new configuration (the one before is kept in $state/previous)"
}

main

#!/bin/bash
# Apply a cgnat-edge config bundle to a running edge, without rebuilding it.
# stdin: base64 of a tar.gz holding MANIFEST (mode<TAB>owner:group<TAB>path per line)
# and files/<path>.
#
# 0. The bundle goes to a new push folder ($pushes/<id>) and the apply runs there in a
#    session of its own, so a closed SSH channel neither stops nor halves it; the SSH
#    side only waits for the folder's verdict (`push.sh wait <id>` waits again from a
#    new connection).  One apply at a time: a second one waits for the lock up to
#    $lock_wait_s seconds, then applies on top of the first's result, or is refused.
# 1. Check everything before replacing anything: the ruleset (nft -c), the tunnel
#    config, the host key, sshd with the NEW drop-in (sshd -t), and Traefik with the new
#    static and dynamic files in a scratch network namespace (every router must load).
# 2. Copy what is on disk now into the push folder's journal and fsync it, then swap the
#    files in by rename (a reader sees the old or the new file, never half of one); files
#    the previous push installed and this bundle lacks are removed.
# 3. Reconcile each part with the least disruption: nftables reloaded; wg0's peers
#    synced (wg syncconf) and its addresses, MTU and routes changed in place, the
#    interface and its tunnels stay; sshd reloaded; Traefik handed over to its other
#    slot only when its static config or unit changed (its dynamic file is watched) or a
#    new pinned Traefik release came (downloaded and checked in step 1, swapped in with
#    the files and rolled back with them); CrowdSec set up or stopped as the stack says.
# 4. Verify that the edge RUNS the new state (cgnat-edge-verify); on any failure put
#    the previous files back, reconcile again, and exit 1 saying what failed.  An apply
#    cut off between 2 and 4 (the machine restarted) leaves its journal: at boot,
#    $recover_unit puts the files before back the same way (`push.sh recover`).
# Nothing secret is printed.
#
# Every path and unit name comes from the edge contract (components/model/edge_contract.py)
# that the bundle itself brings: the one the program that rendered it uses.
set -euo pipefail

# Needed before the bundle (and its contract) is unpacked: edge_contract.PUSH_DIR and
# edge_contract.PUSH_RECOVER_UNIT.
pushes=/var/lib/cgnat-edge/pushes
recover_unit=cgnat-edge-push-recover.service
lock_wait_s=600

log() { echo "cgnat-edge push: $*"; }
warn() { echo "cgnat-edge push: $*" >&2; }
die() {
  warn "$*"
  exit 1
}

umask 077
stage=""
dir=""
id=""

# -- the bundle ----------------------------------------------------------------

declare -a modes owners paths
read_bundle() {
  base64 -d <"$dir/bundle" | tar -xzf - -C "$stage" --no-same-owner --no-same-permissions ||
    die "the input is not a bundle (base64 of a tar.gz)"
  local contract=$stage/files/usr/local/lib/cgnat-edge/contract.sh
  [[ -f $contract ]] || die "the bundle has no edge contract"
  # shellcheck source=contract.sh
  source "$contract"
  [[ -f $stage/$bundle_manifest ]] || die "the bundle has no $bundle_manifest"
  local mode owner path
  while IFS=$'\t' read -r mode owner path; do
    [[ $mode =~ ^0[0-7]{3}$ ]] || die "bad mode '$mode' for $path"
    [[ $owner =~ ^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$ ]] || die "bad owner '$owner' for $path"
    [[ $path == /* && $path != *..* ]] || die "refusing path '$path'"
    [[ -f $(staged "$path") ]] || die "$path is in $bundle_manifest but not in the bundle"
    modes+=("$mode")
    owners+=("$owner")
    paths+=("$path")
  done <"$stage/$bundle_manifest"
}

staged() { echo "$stage/$bundle_files$1"; }
in_bundle() {
  local p
  for p in "${paths[@]}"; do [[ $p == "$1" ]] && return 0; done
  return 1
}

# -- 1. checks before anything changes ------------------------------------------

check_sshd() {
  # The whole effective sshd config with the NEW drop-in in place of the current one.
  local drop=$stage/sshd_config.d f
  mkdir "$drop"
  for f in /etc/ssh/sshd_config.d/*.conf; do
    [[ -f $f && $f != "$sshd_dropin" ]] && cp "$f" "$drop/"
  done
  cp "$(staged "$sshd_dropin")" "$drop/$(basename "$sshd_dropin")"
  {
    echo "Include $drop/*.conf"
    grep -v '^[[:space:]]*Include[[:space:]]\+/etc/ssh/sshd_config\.d/' /etc/ssh/sshd_config
  } >"$stage/sshd_config"
  sshd -t -f "$stage/sshd_config" 2>"$stage/sshd-t.err" ||
    die "the new sshd drop-in fails sshd -t; nothing was changed: $(head -c 500 "$stage/sshd-t.err")"
}

check_traefik() {
  # A Traefik of its own in a scratch network namespace, on the staged files (only the
  # on-disk locations point into the stage): every declared router must load.
  mkdir -p "$stage/traefik-state"
  sed -e "s#directory: $traefik_dynamic_dir\$#directory: $(staged "$traefik_dynamic_dir")#" \
    -e "s#storage: $traefik_state_dir/#storage: $stage/traefik-state/#" \
    "$(staged "$traefik_static")" >"$stage/traefik-check.yaml"
  # shellcheck disable=SC2016 # the inner script expands its own arguments
  if ! CGNAT_EDGE_DESIRED=$(staged "$desired") CGNAT_EDGE_CONTRACT=$(staged "$contract_json") unshare --net bash -c '
    ip link set lo up
    "$1" --configFile="$2" >"$3" 2>&1 &
    pid=$!
    python3 "$4" traefik 20
    rc=$?
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    exit $rc' _ "$(traefik_to_run)" "$stage/traefik-check.yaml" "$stage/traefik-check.log" "$(staged "$verify")" \
    2>"$stage/traefik-check.err"; then
    die "the new Traefik configuration does not load; nothing was changed: $(head -c 800 "$stage/traefik-check.err")"
  fi
}

traefik_to_run() { if [[ -f $(staged "$traefik_binary") ]]; then staged "$traefik_binary"; else echo "$traefik_binary"; fi; }

stage_traefik() {
  # The pinned release, when the executable on the edge is not it: fetched and checked by
  # the installer the first boot ran, into the stage; from here on it is one more file.
  [[ -f $(staged "$traefik_release") ]] || return 0
  local sha url
  read -r sha url <"$(staged "$traefik_release")"
  echo "$sha  $traefik_binary" | sha256sum --check --status 2>/dev/null && return 0
  mkdir -p "$(dirname "$(staged "$traefik_binary")")"
  bash "$(staged "$install_traefik")" "$sha" "$url" "$(staged "$traefik_binary")" >&2 ||
    die "the pinned Traefik release could not be installed; nothing was changed"
  modes+=(0755) owners+=(root:root) paths+=("$traefik_binary")
}

validate() {
  local path
  stage_traefik
  for path in "${paths[@]}"; do
    case $path in
      "$nft_conf") nft -c -f "$(staged "$path")" || die "the new nftables ruleset does not load; nothing was changed" ;;
      "$wg_conf") wg-quick strip "$(staged "$path")" >/dev/null || die "the new WireGuard config does not parse; nothing was changed" ;;
      "$host_key")
        [[ $(ssh-keygen -y -f "$(staged "$path")" | cut -d' ' -f1-2) == "$(cut -d' ' -f1-2 "$(staged "$path.pub")")" ]] ||
          die "the new host key does not match its .pub; nothing was changed"
        ;;
      "$authorized_keys_dir"/*)
        ssh-keygen -l -f "$(staged "$path")" >/dev/null 2>&1 || die "$path holds a line that is not a public key; nothing was changed"
        ;;
    esac
  done
  in_bundle "$sshd_dropin" && check_sshd
  if { in_bundle "$traefik_static" && ! same "$traefik_static"; } ||
    { in_bundle "$traefik_dynamic" && ! same "$traefik_dynamic"; } || in_bundle "$traefik_binary"; then
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
  if [[ -f $state_dir/$bundle_manifest ]]; then
    cut -f3 "$state_dir/$bundle_manifest"
  fi
}

snapshot() {
  # What is on disk now, for every path this push may touch, and the last push's
  # MANIFEST: the rollback target, on disk before the first file changes.
  local before=$dir/before p
  mkdir -p "$before/$bundle_files"
  : >"$before/$bundle_manifest"
  : >"$before/ABSENT"
  for p in $( (printf '%s\n' "${paths[@]}" && previous_paths) | sort -u); do
    if [[ -f $p ]]; then
      mkdir -p "$before/$bundle_files$(dirname "$p")"
      cp -p "$p" "$before/$bundle_files$p"
      printf '0%s\t%s\t%s\n' "$(stat -c %a "$p")" "$(stat -c %U:%G "$p")" "$p" >>"$before/$bundle_manifest"
    else
      echo "$p" >>"$before/ABSENT"
    fi
  done
  if [[ -f $state_dir/$bundle_manifest ]]; then cp -p "$state_dir/$bundle_manifest" "$before/PUSHED"; fi
  sync -f "$before"
  # The journal: files may be changing from here on; an apply that ends without a
  # verdict is undone from before/.
  echo "$id" >"$dir/journal.new"
  sync -f "$dir/journal.new"
  mv "$dir/journal.new" "$dir/journal"
  sync -f "$dir"
  pause_point journaled
}

changed=()
was_changed() {
  local p
  # shellcheck disable=SC2053 # $1 may be a glob ("$pdns_dir/*"), matched on purpose
  for p in "${changed[@]}"; do [[ $p == "$1" || $p == $1 ]] && return 0; done
  return 1
}

install_file() { # src mode owner dst
  local parent
  parent=$(dirname "$4")
  [[ -d $parent ]] || install -d -m 0755 "$parent"
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
    ((${#changed[@]} > 1)) || pause_point swapping
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
  if ! ip link show dev "$wg_interface" >/dev/null 2>&1; then
    systemctl start "wg-quick@$wg_interface"
    log "started wg-quick@$wg_interface"
    return
  fi
  # Keys, listen port, peers and allowed IPs: in place, sessions kept.
  wg syncconf "$wg_interface" <(wg-quick strip "$wg_conf")
  local mtu addr have route fam
  mtu=$(conf_list MTU "$wg_conf" | head -1)
  if [[ -n $mtu && $(cat "/sys/class/net/$wg_interface/mtu") != "$mtu" ]]; then
    ip link set dev "$wg_interface" mtu "$mtu"
    log "$wg_interface MTU set to $mtu"
  fi
  # New addresses first, then the old ones go: the interface always has one.
  mapfile -t want < <(conf_list Address "$wg_conf")
  have=$(ip -o addr show dev "$wg_interface" scope global | awk '{print $4}')
  for addr in "${want[@]}"; do
    grep -qxF -- "$addr" <<<"$have" || {
      ip addr add "$addr" dev "$wg_interface"
      log "$wg_interface address $addr added"
    }
  done
  for have in $have; do
    printf '%s\n' "${want[@]}" | grep -qxF -- "$have" || {
      ip addr del "$have" dev "$wg_interface"
      log "$wg_interface address $have removed"
    }
  done
  # Routes: what wg-quick would add for the allowed IPs, and nothing stale.
  # shellcheck disable=SC2020 # blanks and tabs both become newlines
  mapfile -t allowed < <(wg show "$wg_interface" allowed-ips | cut -f2- | tr ' \t' '\n\n' | grep /)
  for fam in -4 -6; do
    for route in $(ip "$fam" route show dev "$wg_interface" | grep -v 'proto kernel' | awk '{print $1}'); do
      [[ $route == */* ]] || route=$route/$([[ $fam == -4 ]] && echo 32 || echo 128)
      printf '%s\n' "${allowed[@]}" | grep -qxF -- "$route" || {
        ip "$fam" route del "$route" dev "$wg_interface"
        log "route to $route removed from $wg_interface"
      }
    done
  done
  for route in "${allowed[@]}"; do
    fam=$(family "$route")
    [[ -n $(ip "$fam" route show dev "$wg_interface" match "$route" 2>/dev/null) ]] || {
      ip "$fam" route add "$route" dev "$wg_interface"
      log "route to $route added on $wg_interface"
    }
  done
  log "WireGuard peers of $wg_interface synced"
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
  for unit in "${traefik_slots[@]}" "$legacy_traefik"; do
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
  if [[ $old == "${traefik_slots[0]}" ]]; then new=${traefik_slots[1]}; else new=${traefik_slots[0]}; fi
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
    if [[ $old != "${traefik_slots[0]}" && $old != "${traefik_slots[1]}" ]]; then
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
    rm -f "$systemd_dir/$legacy_traefik"
    systemctl daemon-reload
  fi
  log "Traefik handed over from ${old:-nothing} to $new (its static configuration, unit or executable changed)"
}

# dnsMode edges: PowerDNS serves the zone the bundle brings; a bundle without it
# (dnsMode records) stops it.  The health agent runs in every mode (the records
# renderings' checks ask it too), whenever the bundle brings its config.
reconcile_edge_dns() {
  if [[ -f $pdns_zone ]]; then
    if was_changed "$pdns_dir/*" || ! systemctl is-active --quiet "$pdns_unit"; then
      systemctl enable --quiet "$pdns_unit"
      systemctl restart "$pdns_unit"
      log "PowerDNS restarted with the edge zone"
    fi
  elif was_changed "$pdns_zone"; then
    systemctl disable --now --quiet "$pdns_unit" 2>/dev/null || true
    log "edge DNS stopped (dnsMode is no longer edges)"
  fi
  reconcile_daemon "$health_unit" "$health_conf" "health agent" "" "$health_agent"
}

# A daemon that runs whenever the bundle brings its config: (re)started when its
# config, its unit or one of its other files changed, or when it is not running;
# stopped when its config went away.  unit config name why-stopped [other files...]
reconcile_daemon() {
  local unit=$1 conf=$2 name=$3 why=$4 f restart=false
  shift 4
  if [[ -f $conf ]]; then
    for f in "$conf" "$systemd_dir/$unit" "$@"; do
      if was_changed "$f"; then restart=true; fi
    done
    if $restart || ! systemctl is-active --quiet "$unit"; then
      systemctl enable --quiet "$unit"
      systemctl restart "$unit"
      log "$name restarted"
    fi
  elif was_changed "$conf"; then
    systemctl disable --now --quiet "$unit" 2>/dev/null || true
    log "$name stopped$why"
  fi
}

# The alert daemon runs whenever the bundle brings its config (a channel is set).
reconcile_alerts() {
  reconcile_daemon "$alerts_unit" "$alerts_conf" "alert daemon" " (no alert channel is set)" \
    "$alerts_daemon" "$alert_channels"
}

# Metrics: Debian's node exporter with the edge's arguments, and the timer that writes
# the edge's own series.  An edge made before metrics has no node exporter: it is said,
# and the push goes on (apt-get install prometheus-node-exporter, or a rebuild, adds it).
reconcile_metrics() {
  [[ -f $metrics_conf ]] || return 0
  if [[ ! -x $node_exporter ]]; then
    warn "metrics: $node_exporter is not installed (an edge made before metrics); no metrics here"
    return 0
  fi
  systemctl enable --now --quiet "$metrics_timer"
  if was_changed "$node_exporter_args" || was_changed "$node_exporter_dropin" ||
    ! systemctl is-active --quiet "$node_exporter_unit"; then
    systemctl enable --quiet "$node_exporter_unit"
    systemctl restart "$node_exporter_unit"
    log "node exporter restarted on the tunnel address"
  fi
}

reconcile() {
  local p units=false
  if was_changed "$sshd_dropin" || was_changed "$host_key" || was_changed "$authorized_keys_dir/*"; then
    rm -f /etc/ssh/ssh_host_{rsa,ecdsa,dsa}_key{,.pub}
    sshd -t
    systemctl reload "$ssh_unit"
    log "sshd reloaded"
  fi
  if was_changed "$nft_conf" || ! nft list table inet "$nft_table" >/dev/null 2>&1; then
    nft -f "$nft_conf"
    log "nftables ruleset loaded"
    # The reload (flush ruleset) emptied CrowdSec's ban sets; on start the bouncer fills
    # them with every current ban.  restart, not try-restart: a bouncer that had failed
    # comes back too.
    if systemctl is-enabled -q "$bouncer_unit" 2>/dev/null; then
      systemctl restart "$bouncer_unit" || log "${bouncer_unit%.service} did not restart: bans are not enforced"
    fi
  fi
  if [[ -f $forward_sysctl ]] && [[ $(sysctl -n net.ipv4.ip_forward) != 1 ]]; then
    sysctl -q -p "$forward_sysctl"
    log "IPv4 forwarding on (forward services)"
  fi
  for p in "${changed[@]}"; do
    [[ $p == "$systemd_dir"/* ]] && units=true
  done
  if $units; then
    systemctl daemon-reload
    systemctl enable --now --quiet "$wg_endpoint_timer"
    if [[ -f $systemd_dir/$geo_timer ]]; then
      systemctl enable --now --quiet "$geo_timer"
    fi
  fi
  reconcile_wireguard
  reconcile_edge_dns
  reconcile_alerts
  reconcile_metrics
  local running
  running=$(enabled_traefik)
  if was_changed "$traefik_static" || was_changed "$traefik_unit" || was_changed "$traefik_binary" ||
    [[ -z $running || $running == "$legacy_traefik" ]] || ! systemctl is-active --quiet "$running"; then
    traefik_handover
  fi
  [[ ! -x $crowdsec_reconcile ]] || "$crowdsec_reconcile"
}

# -- 4. verify, or roll back ---------------------------------------------------------

rollback() {
  local before=$dir/before mode owner p
  warn "rolling back to the files this edge had before the push"
  while IFS=$'\t' read -r mode owner p; do
    install_file "$before/$bundle_files$p" "$mode" "$owner" "$p"
  done <"$before/$bundle_manifest"
  while read -r p; do rm -f "$p"; done <"$before/ABSENT"
  if [[ -f $before/PUSHED ]]; then cp -p "$before/PUSHED" "$state_dir/$bundle_manifest"; fi
  # Reconcile everything the failed push touched, with the old files.
  (reconcile) >&2 &
  wait $! || warn "the rollback did not apply cleanly either; see the lines above"
  # Units the failed push brought and the rollback removed are gone, not failed.
  while read -r p; do
    if [[ $p == "$systemd_dir"/*.service || $p == "$systemd_dir"/*.timer ]]; then
      systemctl reset-failed "${p##*/}" 2>/dev/null || true
    fi
  done <"$before/ABSENT"
  python3 "$verify" >&2 || warn "after the rollback the edge still differs from its files"
  rm -f "$dir/journal"
  sync -f "$dir"
}

commit() {
  cp "$stage/$bundle_manifest" "$state_dir/$bundle_manifest"
  rm -rf "$state_dir/previous"
  cp -a "$dir/before" "$state_dir/previous"
  echo "$id" >"$pushes/current"
  sync -f "$state_dir"
  rm "$dir/journal"
  sync -f "$dir"
}

record() {
  # How this push ended, for the alert daemon (a dynamic user: the file is 0644 in a
  # folder it may pass through but not list): rolled-back is an alert until a push is ok.
  python3 -c 'import json, sys, time
print(json.dumps({"result": sys.argv[1], "at": int(time.time()), "reason": sys.argv[2]}))' "$1" "$2" >"$push_result.new"
  chmod 0644 "$push_result.new"
  mv -f "$push_result.new" "$push_result"
}

main() {
  read_bundle
  validate
  # shellcheck disable=SC2174 # only the state directory itself is new; its parent exists
  mkdir -p -m 0711 "$state_dir"
  # Passable, not listable: previous/ and pushes/ (0700) keep old files and bundles,
  # secrets among them.
  chmod 0711 "$state_dir"
  install_recovery
  snapshot
  swap_in
  local failed=""
  # A separate process, so that `set -e` holds inside (it does not in a `||` list).
  (reconcile) &
  if ! wait $!; then
    failed="the edge could not apply the new configuration"
  elif ! python3 "$verify"; then
    failed="the edge does not run the new configuration (see DIFFERS above)"
  fi
  if [[ -n $failed ]]; then
    rollback
    record rolled-back "$failed"
    die "FAILED: $failed; it runs the previous one again"
  fi
  commit
  record ok ""
  log "done: the edge runs the new configuration (the one before is kept in $state_dir/previous)"
}

# -- 0. detached, exclusive, journaled -------------------------------------------------

pause_point() {
  # For the lab's fault rows only: with $pushes/pause naming this point, the apply
  # stops here (once) until $dir/paused is removed.
  [[ -f $pushes/pause && $(cat "$pushes/pause") == "$1" ]] || return 0
  mv "$pushes/pause" "$dir/paused"
  log "held at $1 by $pushes/pause"
  while [[ -e $dir/paused ]]; do sleep 0.2; done
}

take_lock() {
  # Held by the apply (fd 9) until it exits: applies never interleave, and each one's
  # journal holds the result of the one before.
  exec 9>>"$pushes/lock"
  if ! flock -n 9; then
    log "waits for push $(cat "$pushes/holder" 2>/dev/null || echo '?') to finish (up to ${lock_wait_s}s)"
    flock -w "$lock_wait_s" 9 ||
      die "REFUSED: push $(cat "$pushes/holder" 2>/dev/null || echo '?') has held the edge for over ${lock_wait_s}s; nothing was changed; run pulumi up again once it has finished"
  fi
  echo "$id" >"$pushes/holder"
}

install_recovery() {
  # The unit that undoes an apply a reset cut off; installed before the first
  # journal, so the first push is covered too.
  install -m 0700 "$dir/push.sh" "$pushes/push.sh"
  local unit=$systemd_dir/$recover_unit
  printf '%s\n' \
    "[Unit]" \
    "Description=cgnat-edge: put back the files of a push a restart cut off, and verify" \
    "After=network-online.target $ssh_unit wg-quick@$wg_interface.service ${traefik_slots[*]}" \
    "Wants=network-online.target" \
    "" \
    "[Service]" \
    "Type=oneshot" \
    "ExecStart=/bin/bash $pushes/push.sh recover" \
    "" \
    "[Install]" \
    "WantedBy=multi-user.target" >"$stage/recover.service"
  if ! cmp -s "$stage/recover.service" "$unit"; then
    install -m 0644 "$stage/recover.service" "$unit"
    systemctl daemon-reload
  fi
  systemctl is-enabled --quiet "$recover_unit" 2>/dev/null || systemctl enable --quiet "$recover_unit"
}

finish() { # exit status: the verdict, written once the edge is on the old or the new files
  local rc=$1
  trap - EXIT
  set +e
  if [[ -f $dir/journal ]]; then
    # Ended between the swap and a verdict (a command that failed under set -e).
    rollback
    warn "FAILED: the push stopped half-way; the edge runs the previous configuration again"
    rc=1
  fi
  # The connection hold exists only once the contract is loaded.
  [[ -z ${nft_table:-} ]] || release_connections
  [[ -z $stage ]] || rm -rf "$stage"
  # What holds secrets goes; the files before a verified push stay in $state_dir/previous.
  rm -rf "$dir/bundle" "$dir/before"
  echo "$rc" >"$dir/result.new"
  sync -f "$dir/result.new"
  mv "$dir/result.new" "$dir/result"
  # The last ten pushes' logs and verdicts stay.
  find "$pushes" -mindepth 2 -maxdepth 2 -name result -printf '%h\n' | sort | head -n -10 | xargs -r rm -rf
  exit "$rc"
}

apply() {
  dir=$1
  id=$(basename "$dir")
  echo $$ >"$dir/pid"
  stage=$(mktemp -d)
  trap 'finish $?' EXIT
  take_lock
  main
}

recover() {
  # At boot: every push without a verdict.  One with a journal was cut off mid-change:
  # its files before go back (the same rollback), and the edge is verified.
  local d
  if [[ -z ${1:-} ]]; then
    for d in "$pushes"/*/; do
      if [[ -f $d/push.sh && ! -f $d/result ]]; then bash "$d/push.sh" recover "${d%/}" || true; fi
    done
    return 0
  fi
  dir=$1
  id=$(basename "$dir")
  exec >>"$dir/log" 2>&1
  stage=$(mktemp -d)
  trap 'finish $?' EXIT
  take_lock
  if [[ -f $dir/journal ]]; then
    read_bundle
    warn "push $id was cut off mid-change (the edge restarted): putting back the files it had before"
    mapfile -t changed < <(cut -f3 "$dir/before/$bundle_manifest" && cat "$dir/before/ABSENT")
    rollback
    record rolled-back "the edge restarted during push $id"
    die "FAILED: the edge restarted during the push; it runs the previous configuration again"
  elif [[ $(cat "$pushes/current" 2>/dev/null) == "$id" ]]; then
    log "push $id had finished before the edge restarted"
  else
    die "FAILED: the edge restarted before the push changed anything; nothing was changed"
  fi
}

wait_result() {
  # The apply's log and verdict, once it has one.
  [[ -d $1 ]] || die "no push $(basename "$1") on this edge"
  until [[ -f $1/result ]]; do sleep 0.5; done
  cat "$1/log"
  exit "$(cat "$1/result")"
}

start() {
  # shellcheck disable=SC2174 # only pushes/ is private; main makes its parent passable
  mkdir -p -m 0700 "$pushes"
  id=$(date -u +%Y%m%dT%H%M%S)-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
  dir=$pushes/$id
  mkdir -m 0700 "$dir"
  cat >"$dir/bundle"
  if [[ -n ${BASH_EXECUTION_STRING:-} ]]; then
    printf '%s\n' "$BASH_EXECUTION_STRING" >"$dir/push.sh"
  else
    cp "$0" "$dir/push.sh"
  fi
  log "push id $id"
  # A session of its own: the SSH channel's hangup and broken pipe do not reach it.
  setsid bash "$dir/push.sh" apply "$dir" </dev/null >"$dir/log" 2>&1 &
  wait_result "$dir"
}

case ${1:-start} in
  start) start ;;
  wait)
    [[ ${2:-} =~ ^[0-9A-Za-z-]+$ ]] || die "wait needs a push id"
    wait_result "$pushes/$2"
    ;;
  apply) apply "$2" ;;
  recover) recover "${2:-}" ;;
  *) die "unknown mode '$1' (start, wait ID, apply DIR, recover [DIR])" ;;
esac

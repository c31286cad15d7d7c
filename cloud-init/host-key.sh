#!/bin/bash
# Install the edge's pinned SSH host key (a new edge has none: the boot step retired
# the bootstrap key; a rotated one replaces the last).  The program runs this over a
# connection pinned to the install key the edge made; the next step (the push)
# already pins the new key.  stdin: the ed25519 private key (OpenSSH).
# The key is checked, sshd -t must pass with it, and the old key comes back if not.
set -euo pipefail

key=/etc/ssh/ssh_host_ed25519_key
die() {
  echo "cgnat-edge host key: $*" >&2
  exit 1
}

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/key"
ssh-keygen -y -f "$work/key" >"$work/key.pub" 2>/dev/null || die "stdin is not an OpenSSH private key; nothing was changed"
[[ $(cut -d' ' -f1 "$work/key.pub") == ssh-ed25519 ]] || die "the new host key is not ed25519; nothing was changed"
if cmp -s "$work/key" "$key"; then
  echo "cgnat-edge host key: already installed"
  exit 0
fi
if [[ -f $key ]]; then cp -p "$key" "$work/old" && cp -p "$key.pub" "$work/old.pub"; fi
install -m 0600 -o root -g root "$work/key" "$key.cgnat-edge-new" && mv -f "$key.cgnat-edge-new" "$key"
install -m 0644 -o root -g root "$work/key.pub" "$key.pub.cgnat-edge-new" && mv -f "$key.pub.cgnat-edge-new" "$key.pub"
if ! sshd -t; then
  if [[ -f $work/old ]]; then mv -f "$work/old" "$key" && mv -f "$work/old.pub" "$key.pub"; else rm -f "$key" "$key.pub"; fi
  die "sshd -t fails with the new host key; the old one is back"
fi
systemctl reload ssh.service
echo "cgnat-edge host key: new key installed, sshd reloaded ($(ssh-keygen -l -f "$key.pub" | cut -d' ' -f2))"
